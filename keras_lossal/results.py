"""Learning curves across seeds: mean ± std per cycle, area under the curve, tables and plots.

The math is small pure functions of NumPy arrays (`area_under_curve`,
`aggregate_curves`); the rest reads an experiment directory written by
`keras_lossal.experiment.run_experiment` (or `lossal run`) and renders it.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np

from keras_lossal.contracts import EXPERIMENT_FILE
from keras_lossal.loop import STATE_FILE, LoopResult

__all__ = [
    "aggregate_curves",
    "area_under_curve",
    "auc_by_seed",
    "format_paired_table",
    "format_per_seed_differences",
    "format_table",
    "load_experiment",
    "paired_difference",
    "t_interval",
    "plot_summary",
    "summarise",
    "values_at_cycle",
    "write_report",
]


def area_under_curve(num_labeled, values) -> float:
    """Normalised area under a learning curve: the trapezoid area divided by the label range.

    The result is the curve's average height, in the metric's units (so an
    accuracy AUC is an accuracy); a single point returns its value.

    Args:
        num_labeled: increasing label counts, shape `(T,)`.
        values: the metric at those counts, shape `(T,)`.

    Example:

    >>> area_under_curve([1000, 2000, 3000], [0.5, 0.7, 0.8])
    0.675
    """
    x = np.asarray(num_labeled, dtype=np.float64).reshape(-1)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"Expected equal, non-empty lengths. Received num_labeled {x.shape} and values {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"Expected strictly increasing num_labeled. Received: {x.tolist()}")
    if x.size == 1:
        return float(y[0])
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def aggregate_curves(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cycle mean, sample standard deviation (ddof=1; 0 for one run) and run count.

    Runs may be of different lengths (an unfinished run); cycle `t` aggregates
    the runs that reached it.

    Example:

    >>> mean, std, count = aggregate_curves([np.array([0.5, 0.7]), np.array([0.7])])
    >>> mean.tolist(), [round(float(s), 4) for s in std], count.tolist()
    ([0.6, 0.7], [0.1414, 0.0], [2, 1])
    """
    if not curves:
        raise ValueError("Expected at least one curve.")
    length = max(len(curve) for curve in curves)
    mean, std, count = np.zeros(length), np.zeros(length), np.zeros(length, dtype=np.int64)
    for t in range(length):
        column = np.array([curve[t] for curve in curves if len(curve) > t], dtype=np.float64)
        mean[t] = column.mean()
        std[t] = column.std(ddof=1) if len(column) > 1 else 0.0
        count[t] = len(column)
    return mean, std, count


def load_experiment(out_dir: str) -> dict[str, dict[int, LoopResult]]:
    """Reads every `<strategy>/seed_<seed>/state.json` under `out_dir` (finished or not).

    Returns:
        `{strategy: {seed: LoopResult}}`, strategies in the order of
        `experiment.json` when present.
    """
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"Expected an experiment directory written by `lossal run`. Not found: {out_dir!r}")
    order: list[str] = []
    settings_path = os.path.join(out_dir, EXPERIMENT_FILE)
    if os.path.exists(settings_path):
        with open(settings_path) as stream:
            order = list(json.load(stream).get("strategies", []))
    found = sorted(name for name in os.listdir(out_dir) if os.path.isdir(os.path.join(out_dir, name)))
    results: dict[str, dict[int, LoopResult]] = {}
    for strategy in [name for name in order if name in found] + [name for name in found if name not in order]:
        runs = {}
        for entry in sorted(os.listdir(os.path.join(out_dir, strategy))):
            path = os.path.join(out_dir, strategy, entry)
            if entry.startswith("seed_") and os.path.exists(os.path.join(path, STATE_FILE)):
                result = LoopResult.load(path)
                if result.cycles:
                    runs[int(entry[len("seed_") :])] = result
        if runs:
            results[strategy] = dict(sorted(runs.items()))
    if not results:
        raise FileNotFoundError(f"No runs (<strategy>/seed_<n>/{STATE_FILE}) found under {out_dir!r}")
    return results


def summarise(results: dict[str, dict[int, LoopResult]], metric: str = "accuracy") -> dict[str, Any]:
    """Mean ± std per cycle and AUC per strategy.

    The AUC is computed per run over the cycles that *every* run of every
    strategy finished (so strategies are compared on one label range), then
    averaged over seeds.
    """
    common = min(len(run.cycles) for runs in results.values() for run in runs.values())
    summary: dict[str, Any] = {"metric": metric, "auc_cycles": common, "strategies": {}}
    for strategy, runs in results.items():
        curves, sizes = [], None
        for run in runs.values():
            run_sizes, values = run.learning_curve(metric)
            if sizes is None or len(run_sizes) > len(sizes):
                sizes = run_sizes
            curves.append(values)
        mean, std, count = aggregate_curves(curves)
        aucs = [area_under_curve(sizes[:common], curve[:common]) for curve in curves]
        summary["strategies"][strategy] = {
            "seeds": sorted(runs),
            "num_labeled": sizes.tolist(),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "runs": count.tolist(),
            "auc_mean": float(np.mean(aucs)),
            "auc_std": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0,
            "auc_per_seed": aucs,
        }
    return summary


def format_table(summary: dict[str, Any], digits: int = 3) -> str:
    """A Markdown table: one row per strategy, mean ± std per label count, then the AUC.

    Example:

    >>> s = {"metric": "accuracy", "auc_cycles": 2, "strategies": {"random": {"num_labeled": [10, 20],
    ...      "mean": [0.5, 0.6], "std": [0.01, 0.02], "runs": [3, 3], "auc_mean": 0.55, "auc_std": 0.01}}}
    >>> print(format_table(s))
    | strategy | 10 | 20 | AUC (10–20) |
    |---|---|---|---|
    | random | 0.500 ± 0.010 | 0.600 ± 0.020 | 0.550 ± 0.010 |
    """
    strategies = summary["strategies"]
    sizes = max((entry["num_labeled"] for entry in strategies.values()), key=len)
    common = summary["auc_cycles"]
    auc_label = f"AUC ({sizes[0]}–{sizes[common - 1]})"
    lines = ["| strategy | " + " | ".join(str(size) for size in sizes) + f" | {auc_label} |"]
    lines.append("|" + "---|" * (len(sizes) + 2))
    for strategy, entry in strategies.items():
        cells = []
        for t in range(len(sizes)):
            if t < len(entry["mean"]):
                partial = "" if entry["runs"][t] == entry["runs"][0] else f" (n={entry['runs'][t]})"
                cells.append(f"{entry['mean'][t]:.{digits}f} ± {entry['std'][t]:.{digits}f}{partial}")
            else:
                cells.append("–")
        auc = f"{entry['auc_mean']:.{digits}f} ± {entry['auc_std']:.{digits}f}"
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {auc} |")
    return "\n".join(lines)


# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96).
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_interval(differences) -> tuple[float, float, float]:
    """Mean and 95 % t-interval `(mean, low, high)` of paired differences (one per seed).

    Example:

    >>> [round(value, 3) for value in t_interval([0.01, 0.02, 0.03])]
    [0.02, -0.005, 0.045]
    """
    values = np.asarray(differences, np.float64)
    if len(values) < 2:
        raise ValueError(f"Expected at least 2 paired differences for an interval. Received: {len(values)}")
    mean = float(values.mean())
    quantile = _T_975[len(values) - 2] if len(values) - 1 <= len(_T_975) else 1.96
    half = quantile * float(values.std(ddof=1)) / float(np.sqrt(len(values)))
    return mean, mean - half, mean + half


def paired_difference(summary: dict[str, Any], first: str, second: str) -> dict[str, Any]:
    """The AUC of `first` minus that of `second`, paired by seed, with its 95 % t-interval.

    Only seeds both strategies ran count. Returns `{"seeds", "differences",
    "mean", "low", "high", "wins"}` (`wins`: seeds where `first` is higher).
    """
    entries = summary["strategies"]
    aucs = [dict(zip(entries[name]["seeds"], entries[name]["auc_per_seed"])) for name in (first, second)]
    seeds = sorted(set(aucs[0]) & set(aucs[1]))
    differences = [aucs[0][seed] - aucs[1][seed] for seed in seeds]
    result: dict[str, Any] = {
        "seeds": seeds,
        "differences": differences,
        "wins": int(np.sum(np.array(differences) > 0)),
    }
    if len(seeds) >= 2:
        result["mean"], result["low"], result["high"] = t_interval(differences)
    elif seeds:
        result["mean"] = result["low"] = result["high"] = differences[0]
    return result


def format_paired_table(summary: dict[str, Any], variants: list[str], baselines: list[str], digits: int = 4) -> str:
    """A Markdown table of paired AUC differences: one row per (variant, baseline).

    Each row: the mean difference over seeds, its 95 % t-interval, and on how
    many seeds the variant won. An interval that excludes zero is marked with `*`.
    """
    lines = ["| variant | − baseline | AUC difference (mean) | 95 % interval | wins / seeds |", "|---|---|---|---|---|"]
    present = summary["strategies"]
    for variant in [name for name in variants if name in present]:
        for baseline in [name for name in baselines if name in present and name != variant]:
            paired = paired_difference(summary, variant, baseline)
            if not paired["seeds"]:
                continue
            if len(paired["seeds"]) >= 2:
                marker = " *" if paired["low"] > 0 or paired["high"] < 0 else ""
                interval = f"[{paired['low']:+.{digits}f}, {paired['high']:+.{digits}f}]"
            else:
                marker, interval = "", "– (one seed)"
            lines.append(
                f"| {variant} | {baseline} | {paired['mean']:+.{digits}f}{marker} | {interval} | "
                f"{paired['wins']} / {len(paired['seeds'])} |"
            )
    return "\n".join(lines)


def values_at_cycle(results: dict[str, dict[int, LoopResult]], cycle: int, metric: str = "accuracy") -> dict:
    """Each run's `metric` at cycle `cycle`: `{strategy: {seed: value}}`, without the runs that did not reach it.

    Example:

    >>> run = LoopResult([{"cycle": 0, "num_labeled": 10, "accuracy": 0.5}], [], {})
    >>> values_at_cycle({"random": {0: run}}, 0), values_at_cycle({"random": {0: run}}, 1)
    ({'random': {0: 0.5}}, {})
    """
    values: dict[str, dict[int, float]] = {}
    for strategy, runs in results.items():
        reached = {seed: float(run.cycles[cycle][metric]) for seed, run in runs.items() if len(run.cycles) > cycle}
        if reached:
            values[strategy] = reached
    return values


def auc_by_seed(summary: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Each strategy's AUC per seed, `{strategy: {seed: auc}}`, from a `summarise` summary."""
    return {name: dict(zip(entry["seeds"], entry["auc_per_seed"])) for name, entry in summary["strategies"].items()}


def format_per_seed_differences(
    values: dict[str, dict[int, float]], variants: list[str], reference: str, digits: int = 4
) -> str:
    """A Markdown table of `variant − reference` on every seed both have, their mean, and on how many seeds it is ≥ 0.

    Args:
        values: `{strategy: {seed: value}}` (`auc_by_seed`, `values_at_cycle`).
        variants: the rows; strategies absent from `values` (or equal to `reference`) are left out.
        reference: what every variant is paired with.

    Example:

    >>> print(format_per_seed_differences({"a": {0: 0.6, 1: 0.5}, "b": {0: 0.5, 1: 0.5}}, ["a"], "b", digits=2))
    | variant | reference | variant (mean) | reference (mean) | seed 0 | seed 1 | mean difference | seeds ≥ reference |
    |---|---|---|---|---|---|---|---|
    | a | b | 0.55 | 0.50 | +0.10 | +0.00 | +0.05 | 2 / 2 |
    """
    rows = [name for name in variants if name in values and name != reference]
    base = values.get(reference, {})
    seeds = sorted({seed for name in rows for seed in values[name] if seed in base})
    header = ["variant", "reference", "variant (mean)", "reference (mean)", *[f"seed {seed}" for seed in seeds]]
    lines = ["| " + " | ".join([*header, "mean difference", "seeds ≥ reference"]) + " |"]
    lines.append("|" + "---|" * (len(header) + 2))
    for name in rows:
        shared = [seed for seed in seeds if seed in values[name]]
        if not shared:
            continue
        differences = {seed: values[name][seed] - base[seed] for seed in shared}
        cells = [f"{differences[seed]:+.{digits}f}" if seed in differences else "–" for seed in seeds]
        means = [float(np.mean([source[seed] for seed in shared])) for source in (values[name], base)]
        at_least = sum(difference >= 0 for difference in differences.values())
        lines.append(
            f"| {name} | {reference} | {means[0]:.{digits}f} | {means[1]:.{digits}f} | "
            + " | ".join(cells)
            + f" | {float(np.mean(list(differences.values()))):+.{digits}f} | {at_least} / {len(shared)} |"
        )
    return "\n".join(lines)


def write_report(summary: dict[str, Any], out_dir: str, stem: str = "report") -> dict[str, str]:
    """Writes `<stem>.json` (the summary), `<stem>.csv` (one row per strategy and cycle) and `<stem>.md`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"{stem}.{kind}") for kind in ("json", "csv", "md")}
    with open(paths["json"], "w") as stream:
        json.dump(summary, stream, indent=1)
    with open(paths["csv"], "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "strategy",
                "cycle",
                "num_labeled",
                f"{summary['metric']}_mean",
                f"{summary['metric']}_std",
                "runs",
                "auc_mean",
                "auc_std",
            ]
        )
        for strategy, entry in summary["strategies"].items():
            for t, size in enumerate(entry["num_labeled"]):
                writer.writerow(
                    [
                        strategy,
                        t,
                        size,
                        f"{entry['mean'][t]:.6f}",
                        f"{entry['std'][t]:.6f}",
                        entry["runs"][t],
                        f"{entry['auc_mean']:.6f}",
                        f"{entry['auc_std']:.6f}",
                    ]
                )
    with open(paths["md"], "w") as stream:
        stream.write(format_table(summary) + "\n")
    return paths


def plot_summary(summary: dict[str, Any], path: str, title: str | None = None) -> str:
    """Saves a PNG of the learning curves: mean line and a ± std band per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for strategy, entry in summary["strategies"].items():
        sizes = np.asarray(entry["num_labeled"][: len(entry["mean"])])
        mean, std = np.asarray(entry["mean"]), np.asarray(entry["std"])
        seeds = len(entry.get("seeds", [])) or max(entry["runs"])
        (line,) = axis.plot(
            sizes, mean, marker="o", markersize=3, label=f"{strategy} (AUC {entry['auc_mean']:.3f}, n={seeds})"
        )
        axis.fill_between(sizes, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    axis.set_xlabel("labeled images")
    axis.set_ylabel(f"test {summary['metric']} (mean ± std over seeds)")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
