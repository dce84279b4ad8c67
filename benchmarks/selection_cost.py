"""Selection cost at scale: every strategy's `select` at 10^4, 10^5 and 10^6 items, split into scoring and selection.

For each strategy and pool size, in a fresh interpreter (so peak RSS is its own): a `LossLearningModel` over a
small CNN on 8x8x1 inputs (the outside review's setting), a pool of random items generated in memory, K = 1,000,
and the documented call `acquisition.get(name).select(model, pool, k=K, seed=0)` run `--rounds` times after one
warm-up call (tracing). Each round is split into:

- scoring: the time spent in the compiled scoring pass (`PoolScorer.collect` / `collect_top` for the strategies
  that gather embeddings or candidates; the whole call for the top-K strategies, whose running top-K is part of the pass);
- selection: the rest of the call (k-means, k-center, k-means++, best-per-cluster, ...).

The headline per row is the median over rounds of selection / scoring of the same strategy, and of the whole call
against `learning_loss` (the scoring pass with its top-K) at the same size. Peak RSS is VmHWM of the child minus
its RSS before the pool was scored (the pool itself, 4 bytes x 64 per item, is excluded).

Run: `python benchmarks/selection_cost.py` (all strategies, 10^4 / 10^5 / 10^6; long on 2 cores: the diversity
strategies over the whole pool grow with N x K), or e.g. `--sizes 10000,100000 --strategies
learning_loss,learning_loss_clusters`. Only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

STRATEGIES = (
    "learning_loss",
    "budget_switch",
    "budget_switch (100 labeled)",
    "learning_loss_clusters",
    "learning_loss_kcenter",
    "learning_loss_badge",
    "badge",
    "coreset",
    "entropy",
    "margin",
    "random",
)
INPUT_SHAPE = (8, 8, 1)
# A row "name (N labeled)" passes `labeled=` N items: the recommended budget_switch picks with typiclust below
# 10 labels per class (here none: the documented call) and with badge from there (100 for the 10 classes).
LABELED_SUFFIX = " labeled)"


def _strategy_and_labeled(row: str) -> tuple[str, int]:
    if row.endswith(LABELED_SUFFIX):
        name, _, count = row[: -len(LABELED_SUFFIX)].partition(" (")
        return name, int(count)
    return row, 0


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class _ScoringTimer:
    """Wraps the pool scorer's scoring passes (`PoolScorer.collect` and `collect_top`), summing their wall time.

    Strategies that gather embeddings or candidates call one of them; the
    top-K strategies call neither (their running top-K is the pass itself).
    """

    METHODS = ("collect", "collect_top")

    def __init__(self, scorer_class):
        self.scorer_class, self.seconds, self.calls = scorer_class, 0.0, 0
        self.originals = {name: getattr(scorer_class, name) for name in self.METHODS}

    def _timed(self, original):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def __enter__(self):
        for name, original in self.originals.items():
            setattr(self.scorer_class, name, self._timed(original))
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(self.scorer_class, name, original)


def measure_one(name: str, size: int, k: int, rounds: int, batch_size: int) -> dict:
    """In this process: warm-up, then `rounds` timed calls of the documented `select`."""
    import keras
    import numpy as np

    import keras_lossal as kl
    from keras_lossal import acquisition, backbones
    from keras_lossal.acquisition.pool_scorer import PoolScorer

    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(backbones.small_cnn(INPUT_SHAPE, num_classes=10, width=16))
    pool = np.random.default_rng(0).random((size, *INPUT_SHAPE), dtype=np.float32)
    row, (name, count) = name, _strategy_and_labeled(name)
    labeled = np.random.default_rng(1).random((count, *INPUT_SHAPE), dtype=np.float32) if count else None
    acquisition.get(name).select(model, pool[: max(2 * k, 4096)], k=k, seed=0, batch_size=batch_size,
                                 labeled=labeled)  # fmt: skip  # trace
    rss_before = _vm_kb("VmRSS")
    _reset_peak_rss()
    totals, scoring = [], []
    for round_index in range(rounds):
        with _ScoringTimer(PoolScorer) as timer:
            start = time.perf_counter()
            selection = acquisition.get(name).select(
                model, pool, k=k, seed=round_index, batch_size=batch_size, labeled=labeled
            )
            total = time.perf_counter() - start
        totals.append(total)
        scoring.append(timer.seconds if timer.calls else total)
        assert len(set(selection.indices.tolist())) == k
    return {
        "strategy": row,
        "items": size,
        "total_s": statistics.median(totals),
        "scoring_s": statistics.median(scoring),
        "selection_s": statistics.median(t - s for t, s in zip(totals, scoring)),
        "peak_rss_growth_mb": max(_vm_kb("VmHWM") - rss_before, 0) / 1024,
    }


def _child(args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", args.name, "--items", str(args.items)]
    command += ["--k", str(args.k), "--rounds", str(args.rounds), "--batch-size", str(args.batch_size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0:
        return {"strategy": args.name, "items": args.items, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    floor = {
        row["items"]: row["total_s"] for row in rows if row.get("strategy") == "learning_loss" and "error" not in row
    }
    lines = [
        "| strategy | items | select (s) | scoring (s) | selection (s) | selection / scoring | select / learning_loss "
        "| peak RSS growth (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['strategy']} | {row['items']:,} | failed: {row['error']} | | | | | |")
            continue
        base = floor.get(row["items"])
        relative = f"{row['total_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {row['strategy']} | {row['items']:,} | {row['total_s']:.2f} | {row['scoring_s']:.2f} | "
            f"{row['selection_s']:.2f} | {row['selection_s'] / row['scoring_s']:.1%} | {relative} | "
            f"{row['peak_rss_growth_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--child", dest="name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.name:
        print(json.dumps(measure_one(args.name, args.items, args.k, args.rounds, args.batch_size)))
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; K = {args.k}", flush=True)
    rows = []
    for size in [int(size) for size in args.sizes.split(",")]:
        for name in args.strategies.split(","):
            args.name, args.items = name, size
            rows.append(_child(args))
            print(json.dumps(rows[-1]), flush=True)
            args.name = None
    print(table(rows))
    if args.out:
        with open(args.out, "w") as stream:
            json.dump(rows, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
