"""The GPU benchmark: fit overhead, select / floor and triage / floor under `mixed_float16`.

Ready to run on a lent accelerator; the figures in RESULTS.md come from there. Side by side in one run, medians of
interleaved rounds (the order rotates so drifting load hits every method alike), under the `mixed_float16` policy
(float16 compute, float32 head, outputs and loss scaling):

1. fit overhead: one epoch of `LossLearningModel` over `resnet18_cifar` against one epoch of the bare backbone on
   the same data (target <= 1.05x);
2. scoring: `acquisition.get("learning_loss").select` (the documented call, a fresh strategy every round) against
   the floor, a bare compiled forward over fixed-size slices with one top-K at the end (target >= 0.9x);
3. triage: the exported SavedModel's `score_image_bytes` signature on ready-made batches of PNG bytes (the floor)
   against `InProcessScorer.score` and a whole `triage` run over a folder of the same PNGs (target >= 0.9x).

Parts 2 and 3 reuse `benchmarks/scoring.py`'s methods, so the CPU and GPU figures measure the same things.

Run: `python benchmarks/gpu.py` on a machine with a GPU (it refuses to run without one, unless `--smoke`).
`python benchmarks/gpu.py --smoke` runs every part on tiny sizes on whatever device there is, the CPU included:
the test suite runs it so the script stays runnable; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lossal as kl  # noqa: E402
from keras_lossal.contracts import DEFAULT_READ_THREADS  # noqa: E402

FULL = {"fit_items": 8192, "fit_width": 64, "pool_items": 100_000, "export_items": 4096, "rounds": 5}
SMOKE = {"fit_items": 64, "fit_width": 4, "pool_items": 512, "export_items": 64, "rounds": 2}


def fit_overhead(items: int, width: int, rounds: int, batch_size: int) -> dict:
    """Per-round epoch seconds of the bare backbone and of the LossLearningModel, interleaved."""
    x = np.random.default_rng(0).random((items, 32, 32, 3), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, items)
    models = {}
    for kind in ("backbone", "LossLearningModel"):
        keras.utils.set_random_seed(0)
        backbone = kl.backbones.resnet18_cifar((32, 32, 3), num_classes=10, width=width)
        model = backbone if kind == "backbone" else kl.LossLearningModel(backbone)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # warm-up: tracing
        models[kind] = model
    seconds = {kind: [] for kind in models}
    for round_number in range(rounds):
        order = list(models)[round_number % 2 :] + list(models)[: round_number % 2]
        for kind in order:
            start = time.perf_counter()
            models[kind].fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
            seconds[kind].append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (the CPU too)")
    parser.add_argument("--policy", default="mixed_float16", choices=["mixed_float16", "mixed_bfloat16", "float32"])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--k", type=int, default=1000)
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.smoke:
        print("no GPU found: this benchmark measures a GPU (use --smoke for a CPU run of tiny sizes)")
        return 2
    sizes = SMOKE if args.smoke else FULL
    k = min(args.k, sizes["pool_items"] // 4)
    keras.mixed_precision.set_global_policy(args.policy)
    import scoring  # benchmarks/scoring.py: the same methods as the CPU figures

    print(f"devices: {[gpu.name for gpu in gpus] or ['CPU only']}; policy {args.policy}; tensorflow {tf.__version__}")
    fit = fit_overhead(sizes["fit_items"], sizes["fit_width"], sizes["rounds"], min(args.batch_size, 128))
    ratios = [mine / bare for mine, bare in zip(fit["LossLearningModel"], fit["backbone"])]
    print(f"fit overhead: LossLearningModel / backbone epoch time x{statistics.median(ratios):.3f} (target <= 1.05)")

    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(scoring.small_cnn((16, 16, 1)))
    pool = np.random.default_rng(0).random((sizes["pool_items"], 16, 16, 1), dtype=np.float32)
    methods = scoring.runners(model, args.batch_size, k)
    for method in methods.values():
        method(pool)  # warm-up: tracing
    timings = scoring.interleaved({name: (lambda run=run: run(pool)) for name, run in methods.items()}, sizes["rounds"])
    scoring.report(
        "scoring, small CNN 16x16x1", {"items": len(pool), "input_shape": (16, 16, 1), **timings}, sizes["rounds"]
    )

    export_args = argparse.Namespace(
        export_items=sizes["export_items"],
        export_batch_size=min(args.batch_size, 64),
        triage_top_k=max(1, sizes["export_items"] // 20),
        read_threads=DEFAULT_READ_THREADS,
    )
    with tempfile.TemporaryDirectory(prefix="lossal_bench_gpu_") as workdir:
        methods, items, _, _ = scoring.export_runners(export_args, workdir)
        timings = scoring.interleaved(methods, sizes["rounds"])
        scoring.report(
            "exported resnet18_cifar_w8 (triage)", {"items": items, "input_shape": "PNG", **timings}, sizes["rounds"]
        )
    print("targets: fit <= 1.05x; select, InProcessScorer.score and triage >= 0.9x floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
