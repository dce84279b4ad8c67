"""Does the loss-prediction head cost the backbone accuracy? An ablation of head training recipes.

Every variant trains the benchmark's model (`resnet18_cifar` width 8 on Fashion-MNIST, SGD lr 0.05,
momentum 0.9, weight decay 5e-4, batch 64, 8 epochs, BatchNorm momentum 0.9: the protocol of
`benchmarks/label_efficiency.py`) on the same random labeled set per seed, in the same order, from
the same backbone initialisation; only the head and its options differ. For each run it records the
accuracy of the final epoch and, for head variants, how well the head ranks: the fraction of all
item pairs whose predicted-loss order matches their true-loss order (concordance, on 2,000
evaluation items) and the Spearman correlation.

The recipe is chosen on a validation split (10,000 training images held out from every labeled set,
`--split validation`, the default); the test set is used once, for the chosen default against the
bare backbone (`--split test`). Results go to `<out>/<split>.jsonl` one run at a time; a re-run skips
finished runs, so an interrupted ablation resumes.

    python benchmarks/head_ablation.py                       # every variant, validation split
    python benchmarks/head_ablation.py --split test --variants bare,recommended,paper
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lossal import data, experiment, losses  # noqa: E402

# name: ModelSpec overrides (None = the bare backbone). "paper" and "recommended" are the recipes as they stand.
VARIANTS = {
    "bare": None,
    "paper": {"recipe": "paper"},
    "paper_no_detach": {"recipe": "paper", "detach_after_fraction": 1.0},
    "paper_all_pairs": {"recipe": "paper", "pairs": "all"},
    "paper_warmup": {"recipe": "paper", "loss_weight_warmup_epochs": 4},
    "paper_normalized": {"recipe": "paper", "normalize_head_inputs": True},
    "paper_scale_0.1": {"recipe": "paper", "backbone_gradient_scale": 0.1},
    "detached_disjoint": {"recipe": "paper", "backbone_gradient_scale": 0.0, "detach_after_fraction": None},
    "detached_all_pairs": {
        "recipe": "paper",
        "backbone_gradient_scale": 0.0,
        "detach_after_fraction": None,
        "pairs": "all",
    },
    "detached_all_pairs_normalized": {
        "recipe": "paper",
        "backbone_gradient_scale": 0.0,
        "detach_after_fraction": None,
        "pairs": "all",
        "normalize_head_inputs": True,
    },
    "detached_margin_0.1": {
        "recipe": "paper",
        "backbone_gradient_scale": 0.0,
        "detach_after_fraction": None,
        "pairs": "all",
        "normalize_head_inputs": True,
        "margin": 0.1,
    },
    "recommended": {"recipe": "recommended"},
}
VALIDATION_SIZE = 10_000
VALIDATION_SEED = 20261201
RANKING_ITEMS = 2_000


def split(dataset: data.ArrayDataset, which: str):
    """`(x_pool, y_pool, x_eval, y_eval)`: the labeled sets come from the pool, evaluation never."""
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(dataset.x_train))
    held_out, pool = order[:VALIDATION_SIZE], order[VALIDATION_SIZE:]
    if which == "validation":
        return dataset.x_train[pool], dataset.y_train[pool], dataset.x_train[held_out], dataset.y_train[held_out]
    return dataset.x_train[pool], dataset.y_train[pool], dataset.x_test, dataset.y_test


def concordance(predicted: np.ndarray, target: np.ndarray) -> float:
    """Fraction of pairs (ties in the target excluded) that `predicted` orders like `target`."""
    difference_predicted = np.sign(predicted[:, None] - predicted[None, :])
    difference_target = np.sign(target[:, None] - target[None, :])
    upper = np.triu(np.ones_like(difference_target, dtype=bool), k=1) & (difference_target != 0)
    return float(np.mean(difference_predicted[upper] == difference_target[upper]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def run_one(dataset, arrays, variant: str, seed: int, size: int, args) -> dict:
    x_pool, y_pool, x_eval, y_eval = arrays
    labeled = np.random.default_rng([seed, size]).permutation(len(x_pool))[:size]
    overrides = VARIANTS[variant]
    spec = experiment.ModelSpec(width=args.width, learning_rate=args.lr, **(overrides or {}))
    keras.utils.set_random_seed(seed)
    model = experiment.make_model_factory(
        spec, dataset.preprocessing.input_shape, dataset.num_classes, overrides is not None
    )()
    train = data.training_pipeline(
        x_pool[labeled], y_pool[labeled], dataset.preprocessing, batch_size=args.batch_size, seed=seed
    )
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    evaluation = data.evaluation_pipeline(x_eval, y_eval, dataset.preprocessing, 500)
    outputs = model.predict(evaluation, verbose=0)
    logits = outputs["output"] if isinstance(outputs, dict) else outputs
    record = {
        "variant": variant,
        "seed": seed,
        "size": size,
        "accuracy": float(np.mean(np.argmax(logits, axis=1) == y_eval)),
        "train_seconds": round(seconds, 1),
    }
    if isinstance(outputs, dict):
        true_loss = losses.per_sample_loss(
            keras.losses.SparseCategoricalCrossentropy(from_logits=True), y_eval, logits
        ).numpy()
        items = np.random.default_rng(seed).permutation(len(y_eval))[:RANKING_ITEMS]
        record["ranking_concordance"] = concordance(outputs["predicted_loss"][items], true_loss[items])
        record["spearman"] = spearman(outputs["predicted_loss"], true_loss)
    return record


def summarise(records: list[dict]) -> str:
    rows = [
        "| variant | labels | accuracy (mean ± std) | − bare, paired (mean ± std) | ranking concordance | Spearman | seeds |"
    ]
    rows.append("|---|---|---|---|---|---|---|")
    bare = {(r["seed"], r["size"]): r["accuracy"] for r in records if r["variant"] == "bare"}
    for size in sorted({r["size"] for r in records}):
        for variant in VARIANTS:
            runs = [r for r in records if r["variant"] == variant and r["size"] == size]
            if not runs:
                continue
            accuracy = np.array([r["accuracy"] for r in runs])
            paired = np.array([r["accuracy"] - bare[(r["seed"], size)] for r in runs if (r["seed"], size) in bare])
            concord = [r["ranking_concordance"] for r in runs if "ranking_concordance" in r]
            rho = [r["spearman"] for r in runs if "spearman" in r]
            rows.append(
                f"| {variant} | {size} | {accuracy.mean():.4f} ± {accuracy.std(ddof=1) if len(runs) > 1 else 0:.4f} | "
                + (f"{paired.mean():+.4f} ± {paired.std(ddof=1) if len(paired) > 1 else 0:.4f}" if len(paired) else "–")
                + " | "
                + (f"{np.mean(concord):.3f}" if concord else "–")
                + " | "
                + (f"{np.mean(rho):.3f}" if rho else "–")
                + f" | {len(runs)} |"
            )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/head_ablation")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--variants", default=",".join(name for name in VARIANTS if name != "recommended"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--sizes", default="500,2000")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; available: {sorted(VARIANTS)}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.split}.jsonl")
    records = []
    if os.path.exists(path):
        with open(path) as stream:
            records = [json.loads(line) for line in stream if line.strip()]
    if not args.summary_only:
        dataset = data.load("fashion_mnist", data_dir=args.data_dir)
        arrays = split(dataset, args.split)
        done = {(r["variant"], r["seed"], r["size"]) for r in records}
        for size in [int(s) for s in args.sizes.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for variant in variants:
                    if (variant, seed, size) in done:
                        continue
                    record = run_one(dataset, arrays, variant, seed, size, args)
                    records.append(record)
                    with open(path, "a") as stream:
                        stream.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    print(f"\n{args.split} split ({path}):\n")
    print(summarise(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
