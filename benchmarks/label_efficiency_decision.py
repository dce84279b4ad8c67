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

v4 (registered after v3's decision, "Label efficiency v4: registration"): the candidates `badge` and
`badge@light_joint` on fresh seeds 5-9, every arm of both tasks rerun on one code version, v3's rule; if
both qualify, `badge` unless `badge@light_joint` beats it with a paired interval excluding 0 on a task.

v5 (registered after the v5 pilots, "Label efficiency v5: registration"): fresh seeds 10-14, the same
rule with each seed's curve the mean of 4 trainings for random and the candidates (1 for the other
baselines), plus (d) on digits: accuracy at the first acquisition (40 labels) ≥ random's, mean over seeds.
Candidates `learning_loss_clusters` (today's recommendation) and `badge`; if both qualify,
`learning_loss_clusters` unless `badge` beats it with a paired interval excluding 0 on a task.

    python benchmarks/label_efficiency_decision.py            # v3: prints the decision, writes its .md
    python benchmarks/label_efficiency_decision.py --v4       # v4 (from the runs finished so far)
    python benchmarks/label_efficiency_decision.py --v5       # v5 (likewise)
    python benchmarks/label_efficiency_decision.py --v6       # v6 (likewise)
    python benchmarks/label_efficiency_decision.py --recommendation   # the recommendation check (likewise)
    python benchmarks/label_efficiency_decision.py --recommendation2  # the second one (non-inferiority)
    python benchmarks/label_efficiency_decision.py --recommendation3  # the third ((a) compared, fresh seeds)
    python benchmarks/label_efficiency_decision.py --must-show3       # the issue's rule on check 3's seeds

v6 (registered after v5's digits outcome and the digits validation pilots, "Label efficiency v6:
registration"): the one candidate `budget_switch` (TypiClust below 10 labels per class, then BADGE);
Fashion-MNIST from v5's runs of seeds 10-14 (there the switch picks what `badge` picks, so `badge`'s
runs are the candidate's), digits on fresh seeds 15-19; v5's rule (a)-(d).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from label_efficiency import averaged_runs, finished_runs  # noqa: E402
from label_efficiency_digits import BARE_BASELINES, CYCLE0_TOLERANCE, decision_table  # noqa: E402

from keras_lossal import results  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
RECHECKED = ["random", "badge", "random@light_joint"]
NOT_RECHECKED = ["entropy", "margin", "coreset"]


@dataclasses.dataclass(frozen=True)
class Registration:
    """One registered comparison: where its runs are, its candidates and seeds, and its tie rule."""

    name: str
    fashion: str
    digits: str
    finalists: tuple[str, str]  # (preferred if both qualify, challenger that must win with an interval)
    seeds: tuple[int, ...]
    recheck: str | None = None
    # v5: {arm: trainings} averaged per seed (other arms: 1); empty for the single-training registrations.
    trainings: tuple[tuple[str, int], ...] = ()
    # v5: (d) on digits, accuracy at the first acquisition ≥ random's (mean over seeds).
    first_acquisition: bool = False
    # v6: digits' own seeds (default: `seeds`), and Fashion-MNIST arms read under another arm's runs.
    digits_seeds: tuple[int, ...] | None = None
    fashion_aliases: tuple[tuple[str, str], ...] = ()
    # The recommendation checks: the challenger passes a task when its mean paired difference is ≥ -margin.
    margin: float = 0.0
    # The third check: rule (a) asks the challenger for at least as many seeds ≥ random as the recommendation has
    # (not every seed), and the challenger must beat the recommendation with an interval above 0 on one task.
    symmetric: bool = False
    # The must-show check: it changes no default, it reports whether the recommendation meets the target.
    report_only: bool = False

    @property
    def out(self) -> str:
        return os.path.join(RESULTS, f"label_efficiency_decision{'' if self.name == 'v3' else '_' + self.name}.md")


V3 = Registration(
    "v3",
    os.path.join(RESULTS, "label_efficiency"),
    os.path.join(RESULTS, "label_efficiency_digits"),
    ("learning_loss_badge@light_joint", "badge@light_joint"),
    (0, 1, 2, 3, 4),
    recheck=os.path.join(RESULTS, "label_efficiency_recheck"),
)
V4 = Registration(
    "v4",
    os.path.join(RESULTS, "label_efficiency_v4"),
    os.path.join(RESULTS, "label_efficiency_digits_v4"),
    ("badge", "badge@light_joint"),
    (5, 6, 7, 8, 9),
)

V5 = Registration(
    "v5",
    os.path.join(RESULTS, "label_efficiency_v5"),
    os.path.join(RESULTS, "label_efficiency_digits_v5"),
    ("learning_loss_clusters", "badge"),
    (10, 11, 12, 13, 14),
    trainings=(("random", 4), ("badge", 4), ("learning_loss_clusters", 4)),
    first_acquisition=True,
)
V6 = Registration(
    "v6",
    os.path.join(RESULTS, "label_efficiency_v5"),
    os.path.join(RESULTS, "label_efficiency_digits_v6"),
    ("budget_switch",),
    (10, 11, 12, 13, 14),
    trainings=(("random", 4), ("badge", 4), ("budget_switch", 4)),
    first_acquisition=True,
    digits_seeds=(15, 16, 17, 18, 19),
    # Fashion-MNIST starts at 50 labels per class, above the switch point (10): budget_switch picks what badge picks.
    fashion_aliases=(("budget_switch", "badge"),),
)
# The recommendation check (registered after the v7 pilots): budget_switch against today's recommendation,
# head to head, paired; Fashion-MNIST from v5's seeds 10-14 (budget_switch there is badge), digits from v6's.
RECOMMENDATION = Registration(
    "recommendation",
    os.path.join(RESULTS, "label_efficiency_v5"),
    os.path.join(RESULTS, "label_efficiency_digits_v6"),
    ("budget_switch", "learning_loss_clusters"),
    (10, 11, 12, 13, 14),
    trainings=(("random", 4), ("badge", 4), ("budget_switch", 4), ("learning_loss_clusters", 4)),
    digits_seeds=(15, 16, 17, 18, 19),
    fashion_aliases=(("budget_switch", "badge"),),
)
# The second recommendation check (registered after the first ended in a Fashion-MNIST tie, -0.0004): the same
# question on fresh seeds 20-24, both tasks run anew with the arms themselves (no aliases), 2 trainings per arm,
# and a non-inferiority margin fixed before its runs from the measured training noise (RESULTS.md).
RECOMMENDATION_2 = Registration(
    "recommendation2",
    os.path.join(RESULTS, "label_efficiency_recommendation2"),
    os.path.join(RESULTS, "label_efficiency_digits_recommendation2"),
    ("budget_switch", "learning_loss_clusters"),
    (20, 21, 22, 23, 24),
    trainings=(("random", 2), ("budget_switch", 2), ("learning_loss_clusters", 2)),
    margin=0.005,
)
# The third and last recommendation check (registered after the second failed rule (a), which it asked of the
# challenger only): fresh seeds 25-29, 2 trainings per arm, the same margin, rule (a) as a comparison of the two.
RECOMMENDATION_3 = dataclasses.replace(
    RECOMMENDATION_2,
    name="recommendation3",
    fashion=os.path.join(RESULTS, "label_efficiency_recommendation3"),
    digits=os.path.join(RESULTS, "label_efficiency_digits_recommendation3"),
    seeds=(25, 26, 27, 28, 29),
    symmetric=True,
)
# The issue's "Must show" on check 3's seeds (registered afterwards as report-only runs of the bare baselines, 2
# trainings each, on both tasks): the recommendation against every bare baseline, under v5's rule (a)-(d).
MUST_SHOW_3 = dataclasses.replace(
    RECOMMENDATION_3,
    name="must_show3",
    finalists=("budget_switch",),
    trainings=tuple((arm, 2) for arm in ("budget_switch", "learning_loss_clusters", *BARE_BASELINES)),
    margin=0.0,
    symmetric=False,
    first_acquisition=True,
    report_only=True,
)
RECOMMENDATIONS = {
    "recommendation": RECOMMENDATION,
    "recommendation2": RECOMMENDATION_2,
    "recommendation3": RECOMMENDATION_3,
}
FIRST_ACQUISITION_CYCLE = 1


def task_runs(path: str, registration: Registration) -> dict:
    """A task's finished runs: each (arm, seed) the mean of its registered trainings when it has them."""
    if registration.trainings:
        return averaged_runs(path, dict(registration.trainings)) if os.path.isdir(path) else {}
    return finished_runs(path)


def fashion_runs(registration: Registration) -> dict:
    """Fashion-MNIST's runs; for v3, the comparators rerun on the candidates' code replace the earlier ones."""
    runs = task_runs(registration.fashion, registration)
    for arm, source in registration.fashion_aliases:
        if source in runs:
            runs[arm] = runs[source]
    if registration.recheck:
        recheck = finished_runs(registration.recheck)
        runs = {arm: runs[arm] for arm in list(registration.finalists) + NOT_RECHECKED if arm in runs}
        runs.update({arm: recheck[arm] for arm in RECHECKED if arm in recheck})
    return _only_seeds(runs, registration.seeds)


def _only_seeds(runs: dict, seeds) -> dict:
    kept = {arm: {seed: run for seed, run in by_seed.items() if seed in seeds} for arm, by_seed in runs.items()}
    return {arm: by_seed for arm, by_seed in kept.items() if by_seed}


def complete_seeds(runs: dict, registration: Registration, seeds=None) -> list[int]:
    """Seeds (default: the registration's) every finalist and every bare baseline has finished."""
    arms = list(registration.finalists) + BARE_BASELINES
    return [seed for seed in seeds or registration.seeds if all(seed in runs.get(arm, {}) for arm in arms)]


def task_section(name: str, runs: dict, registration: Registration, seeds=None) -> tuple[str, dict[str, bool]]:
    """The task's tables and whether each finalist qualifies (only when all its seeds are in)."""
    registered = tuple(seeds or registration.seeds)
    seeds = complete_seeds(runs, registration, registered)
    runs = _only_seeds(runs, seeds)
    finalists = list(registration.finalists)
    if not seeds:
        return f"## {name}: no seed complete yet\n", dict.fromkeys(finalists, False) | {"_challenger_wins": False}
    summary = results.summarise(runs)
    table = decision_table(summary, runs, finalists)
    qualifies = {arm: len(seeds) == len(registered) and _verdict(table, arm) for arm in finalists}
    controls = [arm for arm in ["random@light_joint"] if arm in runs]
    paired = results.format_paired_table(summary, finalists, BARE_BASELINES + controls)
    first_acquisition = ""
    if registration.first_acquisition and name.startswith("Digits"):
        first_acquisition, passed = first_acquisition_check(runs, finalists)
        qualifies = {arm: qualifies[arm] and passed[arm] for arm in finalists}
    head_to_head, versus = {"low": float("nan")}, ""
    if len(finalists) == 2:
        preferred, challenger = finalists
        head_to_head = results.paired_difference(summary, challenger, preferred)
        versus = (
            f"\n\n{challenger} − {preferred}: {head_to_head['mean']:+.4f} "
            f"[{head_to_head['low']:+.4f}, {head_to_head['high']:+.4f}]"
        )
    text = (
        f"## {name} (seeds {', '.join(map(str, seeds))})\n\n"
        + results.format_table(summary)
        + "\n\nPaired AUC differences (candidate − baseline, 95 % t-interval, * = excludes 0):\n\n"
        + paired
        + "\n\nRegistered decision rule:\n\n"
        + table
        + versus
        + "\n"
        + first_acquisition
    )
    return text, qualifies | {"_challenger_wins": head_to_head["low"] > 0}


def first_acquisition_check(runs: dict, finalists: list[str]) -> tuple[str, dict[str, bool]]:
    """(d): each finalist's accuracy at the first acquisition minus random's, per seed and mean (≥ 0 passes)."""
    at_first = results.values_at_cycle(runs, FIRST_ACQUISITION_CYCLE)
    lines = ["", "(d) accuracy at the first acquisition − random's (mean ≥ 0 passes):", ""]
    passed = {}
    for arm in finalists:
        seeds = sorted(set(at_first.get(arm, {})) & set(at_first.get("random", {})))
        differences = [at_first[arm][seed] - at_first["random"][seed] for seed in seeds]
        mean = float(sum(differences) / len(differences)) if differences else float("nan")
        passed[arm] = bool(differences) and mean >= 0
        cells = ", ".join(f"{difference:+.4f}" for difference in differences)
        lines.append(f"- {arm}: {cells}; mean {mean:+.4f}: {'passes' if passed[arm] else 'fails'}")
    return "\n".join(lines) + "\n", passed


def _verdict(table: str, arm: str) -> bool:
    rows = [line for line in table.splitlines() if line.startswith(f"| {arm} |")]
    return bool(rows) and rows[0].rstrip(" |").endswith("yes")


def decide(verdicts: list[dict[str, bool]], registration: Registration) -> str:
    """The registered choice from the per-task verdicts."""
    both = [arm for arm in registration.finalists if all(verdict[arm] for verdict in verdicts)]
    if len(registration.finalists) == 1:
        (candidate,) = registration.finalists
        if registration.report_only:
            met = "meets" if both else "does not meet"
            return f"{candidate} {met} the issue's target (a)-(d) on both tasks (reported only: no default changes)"
        if both:
            return f"qualifies on both tasks: {candidate}"
        return f"{candidate} does not qualify on both tasks: the recommendation stays as it is (target missed)"
    preferred, challenger = registration.finalists
    if not both:
        return "neither candidate qualifies on both tasks: the recommendation stays as it is (target missed)"
    if len(both) == 2:
        if any(verdict["_challenger_wins"] for verdict in verdicts):
            return f"both qualify; {challenger} beats {preferred} with an interval excluding 0 on a task: {challenger}"
        return f"both qualify: {preferred}"
    return f"qualifies on both tasks: {both[0]}"


def _seeds_at_least_random(table: str, arm: str) -> tuple[int, int]:
    """(seeds ≥ random, seeds) from `decision_table`'s row of `arm`."""
    row = next(line for line in table.splitlines() if line.startswith(f"| {arm} |"))
    at_least = [cell.strip() for cell in row.strip("|").split("|")][2]
    count, seeds = at_least.split(" / ")
    return int(count), int(seeds)


def recommendation_section(
    name: str, runs: dict, registration: Registration, seeds
) -> tuple[str, bool | None, bool | None]:
    """One task of a recommendation check: the challenger's paired difference against the recommendation, (a), (c).

    Returns the task's text, whether the challenger passes there and whether its paired interval against the
    recommendation lies above 0 (both `None` while a seed is missing).
    """
    challenger, current = registration.finalists
    arms = [challenger, current, "random"]
    complete = [seed for seed in seeds if all(seed in runs.get(arm, {}) for arm in arms)]
    if len(complete) < len(seeds):
        return f"## {name}: {len(complete)} of {len(seeds)} seeds complete\n", None, None
    runs = _only_seeds({arm: runs[arm] for arm in arms}, complete)
    summary = results.summarise(runs)
    difference = results.paired_difference(summary, challenger, current)
    table = decision_table(summary, runs, [challenger, current])
    row = next(line for line in table.splitlines() if line.startswith(f"| {challenger} |"))
    cycle0 = float([cell.strip() for cell in row.strip("|").split("|")][4])
    at_least, total = _seeds_at_least_random(table, challenger)
    if registration.symmetric:  # (a) compared: no fewer seeds ≥ random than the recommendation has
        required = _seeds_at_least_random(table, current)[0]
        rule_a = f"(a) {at_least} / {total} seeds ≥ random, {current} {required} / {total}"
    else:
        required = total
        rule_a = f"(a) {at_least} / {total} seeds ≥ random"
    passed = difference["mean"] >= -registration.margin and at_least >= required and cycle0 >= -CYCLE0_TOLERANCE
    rule = f" (passes at ≥ {-registration.margin:+.4f})" if registration.margin else ""
    text = (
        f"## {name} (seeds {', '.join(map(str, complete))})\n\n"
        + results.format_table(summary)
        + f"\n\n{challenger} − {current}: {difference['mean']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"
        + f"{rule}; "
        + f"{rule_a}; (c) cycle 0 − bare {cycle0:+.4f}: {'passes' if passed else 'fails'}\n"
    )
    return text, passed, difference["low"] > 0


def recommendation_check(registration: Registration = RECOMMENDATION) -> str:
    """The registered recommendation check on both tasks, and its decision."""
    challenger, current = registration.finalists
    fashion_text, fashion, fashion_above = recommendation_section(
        "Fashion-MNIST", fashion_runs(registration), registration, registration.seeds
    )
    digits_seeds = registration.digits_seeds or registration.seeds
    digits_runs = task_runs(registration.digits, registration)
    digits_text, digits, digits_above = recommendation_section(
        "Digits (64 tabular features)", digits_runs, registration, digits_seeds
    )
    if fashion is False or digits is False:  # one failed task decides: the challenger must pass both
        decision = f"{current} stays the recommendation"
    elif fashion is None or digits is None:
        decision = "not decided: a task is not complete"
    elif registration.symmetric and not (fashion_above or digits_above):
        decision = f"{current} stays the recommendation: {challenger} is ahead with an interval above 0 on no task"
    else:
        decision = f"{challenger} replaces {current} as the recommendation"
    title = "the recommendation check" + (
        " (third, rule (a) compared)"
        if registration.symmetric
        else " (second, non-inferiority)"
        if registration.margin
        else ""
    )
    text = f"# Issue 22: {title}\n\n{fashion_text}\n{digits_text}\n**Decision:** {decision}\n"
    with open(registration.out, "w") as stream:
        stream.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--v4", action="store_true", help="the v4 registration (fresh seeds 5-9)")
    parser.add_argument("--v5", action="store_true", help="the v5 registration (fresh seeds 10-14, mean of trainings)")
    parser.add_argument("--v6", action="store_true", help="the v6 registration (budget_switch; digits seeds 15-19)")
    parser.add_argument(
        "--recommendation",
        action="store_true",
        help="the recommendation check: budget_switch vs learning_loss_clusters",
    )
    parser.add_argument(
        "--recommendation2",
        action="store_true",
        help="the second recommendation check: fresh seeds 20-24, non-inferiority margin 0.005",
    )
    parser.add_argument(
        "--recommendation3",
        action="store_true",
        help="the third recommendation check: fresh seeds 25-29, rule (a) compared with the recommendation's",
    )
    parser.add_argument(
        "--must-show3",
        action="store_true",
        help="the issue's must-show on check 3's seeds: budget_switch against every bare baseline, both tasks",
    )
    args = parser.parse_args(argv)
    checks = [name for name in RECOMMENDATIONS if getattr(args, name)]
    if checks:
        print(recommendation_check(RECOMMENDATIONS[checks[-1]]))
        return 0
    registration = MUST_SHOW_3 if args.must_show3 else V6 if args.v6 else V5 if args.v5 else V4 if args.v4 else V3
    fashion_text, fashion = task_section("Fashion-MNIST", fashion_runs(registration), registration)
    digits_seeds = registration.digits_seeds or registration.seeds
    digits_runs = _only_seeds(task_runs(registration.digits, registration), digits_seeds)
    digits_text, digits = task_section("Digits (64 tabular features)", digits_runs, registration, digits_seeds)
    note = (
        "Fashion-MNIST: random, badge and random@light_joint from label_efficiency_recheck/ (the candidates' code); "
        "entropy, margin and coreset from the earlier code (not rerun).\n"
        if registration.recheck
        else "Every arm of each task on one code version; seeds never run before the registration.\n"
        + (
            "Each seed's curve is the mean of its trainings: "
            + ", ".join(f"{arm} {count}" for arm, count in registration.trainings)
            + ", the other arms 1.\n"
            if registration.trainings
            else ""
        )
    )
    text = "\n".join(
        [f"# Issue 22: the registered decision ({registration.name})", "", note, fashion_text, digits_text]
    )
    text += "\n**Decision:** " + decide([fashion, digits], registration) + "\n"
    with open(registration.out, "w") as stream:
        stream.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
