"""The registered decision of issue 22 on both tasks, from the runs on disk.

The rule was registered in benchmarks/RESULTS.md ("Label efficiency v3: registration (issue 22)")
before any candidate ran. A candidate qualifies on a task when, paired over seeds 0-4: (a) its AUC is
≥ random's on every seed; (b) its mean AUC difference against each bare baseline (random, entropy,
margin, coreset, badge) is ≥ 0; (c) its cycle-0 accuracy is within 1 point of bare (mean) or above. The
recommendation becomes the candidate that qualifies on both tasks; if both do, learning_loss_badge@light_joint,
unless badge@light_joint beats it with a paired interval excluding 0 on either task.

Fashion-MNIST's runs come from two directories: the candidates ran on code with the ResNet projection
rebuilt (issue 23), so `random`, `badge` and `random@light_joint` were run again on that same code into
`label_efficiency_recheck/`, and those runs replace the earlier ones (a different floating-point order
moved cycle 0 by 1-2 points). `entropy`, `margin` and `coreset` were not rerun: their earlier runs are
used, and the table says so. The digits task ran on one code version.

    python benchmarks/label_efficiency_decision.py      # prints the decision, writes decision.md
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from label_efficiency import finished_runs  # noqa: E402
from label_efficiency_digits import BARE_BASELINES, decision_table  # noqa: E402

from keras_lossal import results  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION = os.path.join(HERE, "results", "label_efficiency")
RECHECK = os.path.join(HERE, "results", "label_efficiency_recheck")
DIGITS = os.path.join(HERE, "results", "label_efficiency_digits")
OUT = os.path.join(HERE, "results", "label_efficiency_decision.md")
RECHECKED = ["random", "badge", "random@light_joint"]
NOT_RECHECKED = ["entropy", "margin", "coreset"]
FINALISTS = ["badge@light_joint", "learning_loss_badge@light_joint"]
SEEDS = [0, 1, 2, 3, 4]


def fashion_runs() -> dict:
    """Fashion-MNIST: candidates and unrechecked baselines from the main directory, the rest from the recheck."""
    main, recheck = finished_runs(FASHION), finished_runs(RECHECK)
    runs = {arm: main[arm] for arm in FINALISTS + NOT_RECHECKED if arm in main}
    runs.update({arm: recheck[arm] for arm in RECHECKED if arm in recheck})
    return {arm: {seed: run for seed, run in by_seed.items() if seed in SEEDS} for arm, by_seed in runs.items()}


def complete_seeds(runs: dict) -> list[int]:
    """Seeds every finalist and every bare baseline has finished."""
    arms = FINALISTS + BARE_BASELINES
    return [seed for seed in SEEDS if all(seed in runs.get(arm, {}) for arm in arms)]


def task_section(name: str, runs: dict) -> tuple[str, dict[str, bool]]:
    """The task's tables and whether each finalist qualifies (only when all five seeds are in)."""
    seeds = complete_seeds(runs)
    runs = {arm: {seed: run for seed, run in by_seed.items() if seed in seeds} for arm, by_seed in runs.items()}
    runs = {arm: by_seed for arm, by_seed in runs.items() if by_seed}
    summary = results.summarise(runs)
    table = decision_table(summary, runs)
    qualifies = {arm: len(seeds) == len(SEEDS) and _verdict(table, arm) for arm in FINALISTS}
    paired = results.format_paired_table(summary, FINALISTS, BARE_BASELINES + ["random@light_joint"])
    head_to_head = results.paired_difference(summary, "badge@light_joint", "learning_loss_badge@light_joint")
    text = (
        f"## {name} (seeds {', '.join(map(str, seeds)) or 'none complete'})\n\n"
        + results.format_table(summary)
        + "\n\nPaired AUC differences (candidate − baseline, 95 % t-interval, * = excludes 0):\n\n"
        + paired
        + "\n\nRegistered decision rule:\n\n"
        + table
        + f"\n\nbadge@light_joint − learning_loss_badge@light_joint: {head_to_head['mean']:+.4f} "
        + f"[{head_to_head['low']:+.4f}, {head_to_head['high']:+.4f}]\n"
    )
    return text, qualifies | {"_badge_beats": head_to_head["low"] > 0}


def _verdict(table: str, arm: str) -> bool:
    rows = [line for line in table.splitlines() if line.startswith(f"| {arm} |")]
    return bool(rows) and rows[0].rstrip(" |").endswith("yes")


def decide(verdicts: list[dict[str, bool]]) -> str:
    """The registered choice from the per-task verdicts."""
    both = [arm for arm in FINALISTS if all(verdict[arm] for verdict in verdicts)]
    if not both:
        return "neither candidate qualifies on both tasks: the recommendation stays as it is (target missed)"
    if len(both) == 2:
        if any(verdict["_badge_beats"] for verdict in verdicts):
            return "both qualify; badge@light_joint beats learning_loss_badge@light_joint on a task: badge@light_joint"
        return "both qualify: learning_loss_badge@light_joint"
    return f"qualifies on both tasks: {both[0]}"


def main() -> int:
    fashion_text, fashion = task_section("Fashion-MNIST", fashion_runs())
    digits_text, digits = task_section("Digits (64 tabular features)", finished_runs(DIGITS))
    note = (
        "Fashion-MNIST: random, badge and random@light_joint from label_efficiency_recheck/ (the candidates' code); "
        "entropy, margin and coreset from the earlier code (not rerun).\n"
    )
    text = "\n".join(["# Issue 22: the registered decision", "", note, fashion_text, digits_text])
    text += "\n**Decision:** " + decide([fashion, digits]) + "\n"
    with open(OUT, "w") as stream:
        stream.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
