"""The recommended selection vs random labeling on Fashion-MNIST, on a CPU, in a few minutes.

`make demo` runs this file. It is the paper's protocol in miniature, with the library's recommended
strategy (`budget_switch`, benchmarks/RESULTS.md "Recommendation check 3"):

1. Label 500 random training images.
2. Train a narrow CIFAR ResNet-18 with a loss-prediction head on them (the recommended recipe:
   the head learns from the backbone's detached features, so the backbone trains exactly as it
   would alone and the head can only help choose images, never cost accuracy; its predicted loss
   is what the exported model serves to triage and the Label Studio ML backend).
3. From a random subset of 5,000 unlabeled images, label 500 chosen by `budget_switch`: TypiClust's
   typical items while fewer than 10 labels per class are labeled, BADGE's k-means++ on gradient
   embeddings from there. With 500 initial labels (50 per class) that is BADGE from the first round.
4. Repeat, warm-starting from the previous cycle's weights, and measure test accuracy each cycle.

The same is done with random labeling from the same initial 500 images, so the two learning curves
differ only in which images were labeled. One seed and few epochs keep it short: read the result as
a smoke test of the whole pipeline, not as a benchmark (that is `benchmarks/label_efficiency.py`).

Then, when `examples/production_demo.py` is present, the trained model is exported for TF Serving and
used to triage held-out images into a labeling queue (triage's default selection is the same
`budget_switch`, counting the labels from the export's training record).

Run: `python examples/demo.py [--out demo_out] [--seeds 0] [--fresh]`. Re-running resumes
(finished runs are read back, not retrained); `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras_lossal as kl  # noqa: E402
from keras_lossal import data, experiment, results  # noqa: E402
from keras_lossal.loop import ActiveLearningLoop  # noqa: E402

# The recommended strategy (benchmarks/RESULTS.md, "Recommendation check 3"), and random.
RECOMMENDED = kl.contracts.RECOMMENDED_STRATEGY
STRATEGIES = (RECOMMENDED, "random")


def run_protocol(args) -> dict:
    """Runs both strategies; returns `{strategy: [LoopResult per seed]}`."""
    # Fashion-MNIST comes from local IDX files (Debian package dataset-fashion-mnist); the
    # dataset carries the ImagePreprocessing (scale, mean, std) that training and serving share.
    dataset = data.load("fashion_mnist", data_dir=args.data_dir)
    print(dataset.summary(), flush=True)

    # The paper's optimiser (SGD, momentum 0.9, weight decay 5e-4), at a learning rate suited to
    # a few epochs on a few hundred images, and the library's default head recipe ("recommended"):
    # the paper's joint training cost the backbone 4-7 points on such short runs, the recommended
    # recipe costs nothing (benchmarks/head_ablation.py). Random labeling trains the bare backbone.
    spec = experiment.ModelSpec(width=args.width, learning_rate=0.05)
    runs: dict[str, list] = {name: [] for name in STRATEGIES}
    for seed in args.seeds:
        for strategy in STRATEGIES:
            factory = experiment.make_model_factory(
                spec,
                dataset.preprocessing.input_shape,
                dataset.num_classes,
                # The recommended strategy's model keeps the head (detached: the backbone trains as bare) for
                # the predicted loss it serves; random labeling trains the bare backbone.
                with_head=strategy == RECOMMENDED or strategy in experiment.HEAD_STRATEGIES,
            )
            loop = ActiveLearningLoop(
                factory,
                (dataset.x_train, dataset.y_train),
                (dataset.x_test, dataset.y_test),
                strategy,
                kl.LoopConfig(
                    initial_size=500,
                    query_size=500,
                    subset_size=5000,
                    cycles=args.cycles,
                    epochs=args.epochs,
                    batch_size=64,
                    seed=seed,
                ),
                preprocessing=dataset.preprocessing,
                work_dir=os.path.join(args.out, strategy, f"seed_{seed}"),
            )
            runs[strategy].append(loop.run())
    return {"dataset": dataset, "runs": runs}


def first_cycle_comparison(runs: dict) -> str:
    """The head's cost: at cycle 0 both strategies train on the same 500 images from the same start."""
    lines = []
    for with_head, bare in zip(runs[RECOMMENDED], runs["random"]):
        head_cycle, bare_cycle = with_head.cycles[0], bare.cycles[0]
        lines.append(
            f"first cycle, seed {with_head.config['seed']} ({head_cycle['num_labeled']} identical labels): "
            f"with the head {head_cycle['accuracy']:.4f}, bare backbone {bare_cycle['accuracy']:.4f} "
            f"(difference {head_cycle['accuracy'] - bare_cycle['accuracy']:+.4f}); the head's test ranking "
            f"accuracy {head_cycle.get('ranking_accuracy', float('nan')):.3f}"
        )
    return "\n".join(lines)


def report(out_dir: str, runs: dict) -> dict:
    """Prints the first-cycle check and the learning-curve table; writes report.{json,csv,md} and the plot."""
    summary = results.summarise(results.load_experiment(out_dir))
    results.write_report(summary, out_dir)
    plot = results.plot_summary(summary, os.path.join(out_dir, "learning_curves.png"), title="Fashion-MNIST demo")
    print("\n" + first_cycle_comparison(runs))
    print("\nTest accuracy (mean ± std over seeds) by number of labeled images, and the area under the curve:")
    print(results.format_table(summary))
    print(f"\nplot: {plot}")
    return summary


def save_for_production(model: kl.LossLearningModel, preprocessing, out_dir: str) -> dict:
    """Keeps the trained learning-loss model and its preprocessing for export and triage."""
    model_path = os.path.join(out_dir, "learning_loss_model.keras")
    model.save(model_path)
    preprocessing_path = os.path.join(out_dir, "preprocessing.json")
    with open(preprocessing_path, "w") as stream:
        stream.write(preprocessing.to_json())
    return {"model": model_path, "preprocessing": preprocessing_path}


def production_step(model, preprocessing, holdout_images_uint8, out_dir: str, num_labeled: int):
    """Exports the model for TF Serving and triages held-out images (examples/production_demo.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from production_demo import run_production_demo

    return run_production_demo(
        model,
        preprocessing,
        holdout_images_uint8,
        os.path.join(out_dir, "production"),
        labels=list(data.FASHION_MNIST_CLASSES),
        num_labeled=num_labeled,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="The recommended selection vs random on Fashion-MNIST (CPU).")
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--no-production", action="store_true", help="skip export and triage")
    args = parser.parse_args(argv)
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)

    start = time.perf_counter()
    outcome = run_protocol(args)
    summary = report(args.out, outcome["runs"])
    dataset = outcome["dataset"]
    model = outcome["runs"][RECOMMENDED][0].model
    saved = save_for_production(model, dataset.preprocessing, args.out)
    print(f"trained model (with the loss-prediction head): {saved['model']}; preprocessing: {saved['preprocessing']}")
    print(f"protocol time: {time.perf_counter() - start:.0f} s")

    triage = None
    if not args.no_production:
        # Held-out test images stand in for newly arrived, unlabeled data.
        num_labeled = outcome["runs"][RECOMMENDED][0].cycles[-1]["num_labeled"]
        triage = production_step(model, dataset.preprocessing, dataset.x_test[:500], args.out, num_labeled)
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return {"summary": summary, "model": model, "preprocessing": dataset.preprocessing, "triage": triage}


if __name__ == "__main__":
    main()
