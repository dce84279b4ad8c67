"""Label efficiency beyond classification: regressing the rotation angle of Fashion-MNIST images.

Learning loss needs only a per-sample loss, so it works where entropy and margin do not exist. Every
Fashion-MNIST image is rotated by its own fixed random angle in [-45°, 45°] (seeded; the same for
every strategy); the task is to predict that angle (MSE on angle / 45°). A small CNN with dropout
before its output (so MC-dropout variance is defined) is trained on 200 random initial labels, then
K = 200 labels per cycle chosen from a random subset of M = 2,000 unlabeled images, 5 cycles
(200 -> 1,000 labels), warm-started (model and optimizer carry over), 10 epochs per cycle (Adam 1e-3, batch 32). The test metric is
the RMSE of the angle in degrees on the 10,000 rotated test images after the final epoch of each cycle
(lower is better). Strategies: learning loss (recommended recipe), random, core-set (k-center greedy
on the penultimate features) and MC-dropout variance (20 passes); the protocol was fixed before any
strategy was compared. `learning_loss_clusters` (the highest predicted loss per k-means cluster) was
added after the first seeds showed plain learning loss behind random, and is reported as such. A seed gives every strategy the same angles, initial set, subsets and
initialisation. Each finished run is appended to <out>/runs.jsonl, so an interrupted benchmark resumes.

    python benchmarks/regression_efficiency.py            # 4 strategies x 5 seeds, then the tables
    python benchmarks/regression_efficiency.py --report-only
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

import keras_lossal as kl  # noqa: E402
from keras_lossal import acquisition, data, results  # noqa: E402

STRATEGIES = ["learning_loss", "random", "coreset", "mc_dropout_variance", "learning_loss_clusters"]
MAX_ANGLE = 45.0


def rotate(images: np.ndarray, angles_degrees: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Rotates each (H, W, C) uint8 image about its centre by its angle; bilinear, zero fill."""
    height, width = images.shape[1:3]
    rotated = np.empty_like(images)
    for start in range(0, len(images), batch_size):
        angles = np.deg2rad(angles_degrees[start : start + batch_size]).astype("float32")
        cos, sin = np.cos(angles), np.sin(angles)
        cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
        # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse rotation.
        transform = np.stack(
            [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0 * cos, 0 * cos], axis=1
        )
        batch = images[start : start + batch_size].astype("float32")
        out = keras.ops.image.affine_transform(batch, transform, interpolation="bilinear", fill_mode="constant")
        rotated[start : start + batch_size] = np.clip(np.round(keras.ops.convert_to_numpy(out)), 0, 255)
    return rotated


def rotated_fashion_mnist(seed: int, data_dir: str | None = None):
    dataset = data.load("fashion_mnist", data_dir=data_dir)
    rng = np.random.default_rng([seed, 7])
    train_angles = rng.uniform(-MAX_ANGLE, MAX_ANGLE, len(dataset.x_train))
    test_angles = rng.uniform(-MAX_ANGLE, MAX_ANGLE, len(dataset.x_test))
    x_train = (rotate(dataset.x_train, train_angles) / 255.0).astype("float32")
    x_test = (rotate(dataset.x_test, test_angles) / 255.0).astype("float32")
    return x_train, (train_angles / MAX_ANGLE).astype("float32"), x_test, (test_angles / MAX_ANGLE).astype("float32")


def regression_cnn(width: int = 16) -> keras.Model:
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for stage in range(3):
        x = keras.layers.Conv2D(width * 2**stage, 3, padding="same", activation="relu", name=f"stage{stage + 1}_conv")(
            x
        )
        x = keras.layers.MaxPooling2D(name=f"stage{stage + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="angle")(x), name="regression_cnn")


def build(strategy: str) -> keras.Model:
    backbone = regression_cnn()
    model = (
        kl.LossLearningModel(backbone, feature_layers=["stage1", "stage2", "stage3", "hidden"])
        if strategy.startswith("learning_loss")
        else backbone
    )
    model.compile(keras.optimizers.Adam(1e-3), loss="mse")
    return model


def test_rmse_degrees(model, x_test, y_test) -> float:
    outputs = model.predict(x_test, batch_size=1000, verbose=0)
    prediction = (outputs["output"] if isinstance(outputs, dict) else outputs).reshape(-1)
    return float(np.sqrt(np.mean(np.square(prediction - y_test))) * MAX_ANGLE)


def run_one(strategy: str, seed: int, arrays, args) -> dict:
    x_train, y_train, x_test, y_test = arrays
    rng = np.random.default_rng([seed, 0])
    labeled = list(rng.permutation(len(x_train))[: args.initial_size])
    keras.utils.set_random_seed(seed)
    model = build(strategy)
    picker = acquisition.get(strategy)
    curve, sizes = [], []
    start = time.perf_counter()
    for cycle in range(args.cycles):
        order = np.random.default_rng([seed, cycle, 1]).permutation(len(labeled))
        chosen = np.asarray(labeled)[order]
        model.fit(
            x_train[chosen], y_train[chosen], batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0
        )
        sizes.append(len(labeled))
        curve.append(test_rmse_degrees(model, x_test, y_test))
        if cycle == args.cycles - 1:
            break
        is_labeled = np.zeros(len(x_train), bool)
        is_labeled[labeled] = True
        unlabeled = np.flatnonzero(~is_labeled)
        subset = np.sort(np.random.default_rng([seed, cycle, 2]).choice(unlabeled, args.subset_size, replace=False))
        options = {"labeled": x_train[labeled]} if strategy == "coreset" else {}
        selection = picker.select(
            model, x_train[subset], args.query_size, seed=int(seed * 1000 + cycle), batch_size=500, **options
        )
        labeled.extend(int(index) for index in subset[selection.indices])
    record = {"strategy": strategy, "seed": seed, "num_labeled": sizes, "rmse_degrees": curve}
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def summarise(records: list[dict]) -> str:
    strategies = [name for name in STRATEGIES if any(r["strategy"] == name for r in records)]
    sizes = records[0]["num_labeled"]
    lines = ["| strategy | " + " | ".join(str(s) for s in sizes) + f" | AUC ({sizes[0]}–{sizes[-1]}) | seeds |"]
    lines.append("|" + "---|" * (len(sizes) + 3))
    aucs = {}
    for name in strategies:
        runs = [r for r in records if r["strategy"] == name]
        curves = np.array([r["rmse_degrees"] for r in runs])
        aucs[name] = {r["seed"]: results.area_under_curve(sizes, r["rmse_degrees"]) for r in runs}
        cells = [
            f"{m:.2f} ± {s:.2f}"
            for m, s in zip(curves.mean(0), curves.std(0, ddof=1) if len(runs) > 1 else 0 * curves[0])
        ]
        values = np.array(list(aucs[name].values()))
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {values.mean():.2f} ± {values.std(ddof=1) if len(values) > 1 else 0:.2f} | {len(runs)} |"
        )
    lines += ["", "Paired AUC difference (variant − baseline; negative = the variant has the lower error):", ""]
    lines += [
        "| variant | − baseline | mean (degrees) | 95 % interval | variant better / seeds |",
        "|---|---|---|---|---|",
    ]
    for variant in [name for name in strategies if name.startswith("learning_loss")]:
        for name in [other for other in strategies if not other.startswith("learning_loss")]:
            seeds = sorted(set(aucs[variant]) & set(aucs[name]))
            differences = [aucs[variant][s] - aucs[name][s] for s in seeds]
            if len(differences) >= 2:
                mean, low, high = results.t_interval(differences)
                lines.append(
                    f"| {variant} | {name} | {mean:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                    f"{sum(d < 0 for d in differences)} / {len(seeds)} |"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/regression_efficiency")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--initial-size", type=int, default=200)
    parser.add_argument("--query-size", type=int, default=200)
    parser.add_argument("--subset-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "runs.jsonl")
    records = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    if not args.report_only:
        done = {(r["strategy"], r["seed"]) for r in records}
        for seed in [int(s) for s in args.seeds.split(",")]:
            todo = [name for name in args.strategies.split(",") if (name, seed) not in done]
            if not todo:
                continue
            arrays = rotated_fashion_mnist(seed, args.data_dir)
            for name in todo:
                record = run_one(name, seed, arrays, args)
                records.append(record)
                with open(path, "a") as stream:
                    stream.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
    if records:
        table = summarise(records)
        with open(os.path.join(args.out, "report.md"), "w") as stream:
            stream.write(table + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
