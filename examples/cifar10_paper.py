"""The paper's CIFAR-10 protocol (Yoo & Kweon 2019, Section 4.1), for a GPU with internet access.

- Target model: ResNet-18 for CIFAR (3x3 stem, 4 stages of 2 basic blocks, 64-512 channels), with the
  loss-prediction module tapping the four stage outputs (GAP -> Dense(128) -> ReLU each, concatenated,
  Dense(1)); margin xi = 1, lambda = 1.
- Training per cycle: SGD, learning rate 0.1, momentum 0.9, weight decay 5e-4, batch 128, 200 epochs,
  learning rate 0.01 from epoch 160; from epoch 120 the loss-prediction gradient no longer reaches the
  backbone. Augmentation: random horizontal flip and a 32x32 crop of the image padded by 4 pixels.
- Active learning: 1,000 random initial labels; 10 cycles, each labeling the K = 1,000 images with the
  highest predicted loss among a random subset of M = 10,000 unlabeled images (1k -> 10k labels).
  Models are warm-started across cycles, as in the authors' code. 5 trials (seeds).
- Baselines (`--strategies learning_loss,random,entropy,coreset`) train the same ResNet-18 without the
  loss-prediction module.

Expect about 8 GPU-hours per strategy and trial on a V100-class GPU. The paper reports (Figure 4) a
final mean accuracy of 0.910 for learning loss vs 0.877 for random, 0.906 for entropy and 0.901 for
core-set. Keras' SGD applies weight decay decoupled from the momentum buffer (PyTorch adds it to the
gradient); at this learning rate the difference is small, but it is one.

    python examples/cifar10_paper.py --out runs/cifar10_paper
    python examples/cifar10_paper.py --smoke --out /tmp/cifar_smoke   # seconds, on tfds mock data

Interrupted runs resume when the same command is run again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_lossal import data, experiment, results  # noqa: E402
from keras_lossal.loop import LoopConfig  # noqa: E402

# The paper's protocol; --smoke swaps in the tiny values below, leaving the structure unchanged.
PAPER = dict(
    width=64,
    epochs=200,
    lr_drop_epoch=160,
    detach_after_epoch=120,
    batch_size=128,
    initial_size=1000,
    query_size=1000,
    subset_size=10000,
    cycles=10,
    trials=5,
)
SMOKE = dict(
    width=4,
    epochs=2,
    lr_drop_epoch=1,
    detach_after_epoch=1,
    batch_size=16,
    initial_size=20,
    query_size=10,
    subset_size=40,
    cycles=2,
    trials=1,
)
SMOKE_EXAMPLES = 64


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="The paper's CIFAR-10 active-learning protocol.")
    parser.add_argument("--out", default="runs/cifar10_paper")
    parser.add_argument("--strategies", default="learning_loss,random")
    parser.add_argument("--trials", type=int, default=None, help="seeds 0..N-1 (default: 5, smoke: 1)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--smoke", action="store_true", help="tiny run on tfds.testing.mock_data (no download)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    protocol = dict(SMOKE if args.smoke else PAPER)
    if args.trials:
        protocol["trials"] = args.trials

    if args.smoke:
        import tensorflow_datasets as tfds

        # Random images with CIFAR-10's shapes and label space, generated from the dataset's metadata.
        source = tfds.testing.mock_data(num_examples=SMOKE_EXAMPLES)
    else:
        source = contextlib.nullcontext()
    with source:
        dataset = data.load("cifar10", data_dir=args.data_dir)
    if not args.quiet:
        print(dataset.summary(), flush=True)

    spec = experiment.ModelSpec(
        backbone="resnet18_cifar",
        width=protocol["width"],
        optimizer="sgd",
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        # PyTorch's BatchNorm default (momentum 0.1 there = 0.9 in Keras), as in the reference code.
        batch_norm_momentum=0.9,
        # The paper's head recipe by name: joint training on the B/2 disjoint pairs, detached at epoch 120.
        recipe="paper",
        loss_weight=1.0,
        margin=1.0,
        detach_after_epoch=protocol["detach_after_epoch"],
    )
    experiment.run_experiment(
        dataset,
        args.strategies.split(","),
        list(range(protocol["trials"])),
        args.out,
        spec,
        LoopConfig(
            initial_size=protocol["initial_size"],
            query_size=protocol["query_size"],
            subset_size=protocol["subset_size"],
            cycles=protocol["cycles"],
            epochs=protocol["epochs"],
            batch_size=protocol["batch_size"],
            augment=True,
            warm_start=True,
            verbose=0 if args.quiet else 1,
        ),
        lr_schedule={protocol["lr_drop_epoch"]: 0.01},
    )
    summary = results.summarise(results.load_experiment(args.out))
    results.write_report(summary, args.out)
    results.plot_summary(summary, os.path.join(args.out, "learning_curves.png"), title="CIFAR-10, paper protocol")
    if not args.quiet:
        print(results.format_table(summary))
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
