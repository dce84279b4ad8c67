"""Label efficiency on Fashion-MNIST: every learning-loss variant against every baseline, paired by seed.

A fixed, CPU-sized version of the paper's protocol, unchanged since it was first fixed from pilots of
random selection alone: a narrow CIFAR ResNet-18 (width 8) on 28x28x1 Fashion-MNIST, 500 random
initial labels, then K = 500 labels per cycle chosen from a random subset of M = 5,000 unlabeled
images, 6 cycles (500 -> 3,000 labels), warm-started training with 8 epochs per cycle (SGD lr 0.05,
momentum 0.9, weight decay 5e-4, batch 64), test accuracy of the final epoch after every cycle.
A seed gives every arm the same initial labeled set, the same subsets and the same initialisation.

Arms (`strategy[@recipe]`; a recipe trains the loss-prediction head with it):

- baselines on the bare backbone: random, entropy, margin, coreset, badge;
- learning loss with the recommended recipe (`learning_loss`), with the paper's recipe
  (`learning_loss@paper`), and the hard-and-diverse variants `learning_loss_clusters` (the highest
  predicted loss in each of K k-means clusters) and `learning_loss_kcenter` (top 3K by predicted loss,
  then k-center greedy); their options were fixed before any run, not tuned;
- the control `random@recommended`: the model learning loss trains, with random picks, so the
  selection's effect is separated from the head's effect on training (`random@paper` likewise for
  the paper's recipe).

Prints the per-label-count mean ± std table and AUC of finished runs, and the paired AUC differences
of each learning-loss arm against each baseline and control with a 95 % t-interval over seeds;
writes report.{json,csv,md}, paired.md and learning_curves.png under --out. Seed-major: every arm of
seed 0 runs before seed 1, so a partial run already pairs. Interrupted? Run it again: finished runs
are skipped and unfinished ones resume from their last finished cycle. The run directory,
benchmarks/results/label_efficiency/, is committed as it fills (every state.json, plus the warm-start
weights of unfinished runs), so a later checkout resumes where the last one stopped. Two processes
may share it when they run different seeds:

    nohup python benchmarks/label_efficiency.py --seeds 0,2,4 > le_a.log 2>&1 &
    nohup python benchmarks/label_efficiency.py --seeds 1,3 > le_b.log 2>&1 &
    python benchmarks/label_efficiency.py --report-only    # tables from what has finished so far

Pilots of the protocol itself (issue 22, v5; benchmarks/V5_PILOTS.md) run the `random` arm alone on a
validation split and measure the training noise: the same seed (same labeled items) trained with two
training seeds (`LoopConfig.training_seed`: the model's initialisation and the shuffle only). `--validation`
holds out a fixed, stratified 5,000 of the training images (split seed 0, the same for every run) as the
evaluation set, the pool is the other 55,000, and the test files are not read; `--noise-report ROOT` reads
every `ROOT/<protocol>_train<T>/` and prints, per protocol, the validation accuracy and AUC (mean ± std over
seeds) and the training noise (per seed, AUC of the second training seed minus the first):

    python benchmarks/label_efficiency.py --validation --strategies random --seeds 0 --training-seed 1 \
        --lr-schedule 6:0.005 --out runs/v5_pilots/B_train1
    python benchmarks/label_efficiency.py --noise-report runs/v5_pilots

v5 (issue 22, registered in benchmarks/RESULTS.md) takes each seed's learning curve as the mean over
several trainings: `--trainings R` writes the seed's own runs (they pick) to `OUT/train0/` and then, for
the arms in `--retrain` (default: every arm), trains exactly their labeled sets again R - 1 times
(`ActiveLearningLoop`'s `replay`, nothing is selected) with training seeds 1000 t + seed, into
`OUT/train<t>/`. The report averages the accuracy of a seed's trainings cycle by cycle:

    python benchmarks/label_efficiency.py --trainings 4 --retrain random,badge,learning_loss_clusters \
        --strategies random,entropy,margin,coreset,badge,learning_loss_clusters --seeds 10 --out runs/v5

The same protocol from the command line:

    lossal run --dataset fashion_mnist --strategies learning_loss,random,... --seeds 0,1,2,3,4 \\
        --cycles 6 --initial-size 500 --query-size 500 --subset-size 5000 --width 8 --epochs 8 \\
        --batch-size 64 --lr 0.05 --out runs/label_efficiency
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_lossal import data, experiment, results  # noqa: E402
from keras_lossal.loop import LoopConfig, LoopResult  # noqa: E402

LEARNING_LOSS_ARMS = [
    "learning_loss",
    "learning_loss_clusters",
    "learning_loss_kcenter",
    "learning_loss@paper",
    # Added on 2026-12-02, after seeds 0-2 (see benchmarks/RESULTS.md): the paper's training with the clusters' picks.
    "learning_loss_clusters@paper",
    # Registered on 2026-12-02 before any of their runs (see benchmarks/RESULTS.md): the joint recipe chosen on
    # the validation split (head ablation), the primary arm first.
    "learning_loss_clusters@light_joint",
    "learning_loss_kcenter@light_joint",
    # Registered on 2026-12-04 before any of their runs (see benchmarks/RESULTS.md, "Label efficiency v3").
    "learning_loss_badge@light_joint",
    "badge@light_joint",
]
BASELINE_ARMS = ["random", "coreset", "entropy", "margin", "badge"]
# The pilots' validation split (--validation): part of the protocol, the same for every run.
VALIDATION_SIZE = 5_000
VALIDATION_SEED = 0
# --noise-report: a protocol's runs with training seed T live in <root>/<protocol>_train<T>/.
TRAINING_RUN_DIRECTORY = re.compile(r"^(?P<protocol>.+)_train(?P<training_seed>\d+)$")
CONTROL_ARMS = ["random@recommended", "random@paper", "random@light_joint"]
# --trainings: a seed's t-th retraining (t >= 1) uses training seed TRAINING_SEED_STRIDE * t + seed.
TRAINING_SEED_STRIDE = 1000
TRAINING_DIRECTORY = re.compile(r"^train(?P<training>\d+)$")
# Run order within a seed: the recommended arms and the strongest baselines first.
ARMS = [
    "learning_loss",
    "learning_loss_clusters",
    "learning_loss_kcenter",
    "random",
    "coreset",
    "entropy",
    "margin",
    "badge",
    "learning_loss@paper",
    "random@recommended",
    "random@paper",
    "learning_loss_clusters@paper",
    "random@light_joint",
    "learning_loss_clusters@light_joint",
    "learning_loss_kcenter@light_joint",
    "learning_loss_badge@light_joint",
    "badge@light_joint",
]


def finished_runs(out_dir: str) -> dict:
    """The runs that finished every cycle, by arm and seed."""
    loaded = results.load_experiment(out_dir)
    complete = {}
    for arm, runs in loaded.items():
        done = {seed: run for seed, run in runs.items() if len(run.cycles) == run.config.get("cycles")}
        if done:
            complete[arm] = done
    return complete


def retraining_seed(seed: int, training: int) -> int:
    """The training seed of a seed's `training`-th retraining (`training` >= 1): distinct for every seed."""
    return TRAINING_SEED_STRIDE * training + seed


def run_trainings(dataset, arms: list[str], seed: int, out_dir: str, spec, config, trainings: int, retrain, **kwargs):
    """One seed of a mean-over-trainings experiment: the arms' own runs, then the retrainings of `retrain`.

    `out_dir/train0/` holds the runs that pick (the seed's own training); `out_dir/train<t>/`
    (t = 1 .. trainings - 1) the arms of `retrain` trained again on train0's labeled sets with
    training seed `retraining_seed(seed, t)`. Every run resumes; `kwargs` go to `run_experiment`.
    """
    picks = os.path.join(out_dir, "train0")
    experiment.run_experiment(dataset, arms, [seed], picks, spec, config, **kwargs)
    retrained = [arm for arm in arms if arm in retrain]
    for training in range(1, trainings if retrained else 1):
        experiment.run_experiment(
            dataset,
            retrained,
            [seed],
            os.path.join(out_dir, f"train{training}"),
            spec,
            dataclasses.replace(config, training_seed=retraining_seed(seed, training)),
            replay_from=picks,
            **kwargs,
        )


def training_directories(out_dir: str) -> dict[int, str]:
    """`{t: path}` of `out_dir/train<t>/`, empty when `out_dir` is not a mean-over-trainings experiment."""
    if not os.path.isdir(out_dir):
        return {}
    found = {}
    for name in os.listdir(out_dir):
        match = TRAINING_DIRECTORY.match(name)
        if match and os.path.isdir(os.path.join(out_dir, name)):
            found[int(match["training"])] = os.path.join(out_dir, name)
    return dict(sorted(found.items()))


def averaged_runs(out_dir: str, required: dict[str, int] | None = None, metric: str = "accuracy") -> dict:
    """Finished runs of a mean-over-trainings experiment, each (arm, seed) as the mean of its trainings.

    Args:
        out_dir: the experiment (`train0/`, `train1/`, ...).
        required: `{arm: trainings}` an (arm, seed) must have finished to count (others: 1);
            only its first `required` trainings are averaged, so a partial retraining never enters.
        metric: the per-cycle number averaged (the other records are dropped).

    Returns:
        `{arm: {seed: LoopResult}}` whose cycles hold `cycle`, `num_labeled`, the mean `metric`
        and `trainings` (how many were averaged), with train0's labeled set and config.
    """
    directories = training_directories(out_dir)
    if 0 not in directories:
        raise FileNotFoundError(f"No train0/ (the runs that pick) under {out_dir!r}")
    by_training = {training: _finished_or_none(path) for training, path in directories.items()}
    averaged: dict[str, dict] = {}
    for arm, runs in by_training[0].items():
        count = (required or {}).get(arm, 1)
        for seed, first in runs.items():
            trainings = [by_training.get(t, {}).get(arm, {}).get(seed) for t in range(count)]
            if any(run is None for run in trainings):
                continue
            for run in trainings[1:]:
                if run.labeled_indices != first.labeled_indices:
                    raise ValueError(f"{arm} seed {seed}: a retraining labeled other items than train0")
            cycles = [
                {
                    "cycle": record["cycle"],
                    "num_labeled": record["num_labeled"],
                    metric: float(np.mean([run.cycles[index][metric] for run in trainings])),
                    "trainings": count,
                }
                for index, record in enumerate(first.cycles)
            ]
            averaged.setdefault(arm, {})[seed] = LoopResult(cycles, first.labeled_indices, first.config)
    return averaged


def _finished_or_none(path: str) -> dict:
    """`finished_runs(path)`, or `{}` while no run there has recorded a cycle."""
    try:
        return finished_runs(path)
    except FileNotFoundError:
        return {}


def class_shares(complete: dict) -> str:
    """How each arm's picks spread over the classes (all acquisitions, all finished seeds; arms without counts left out)."""
    names = data.FASHION_MNIST_CLASSES
    lines = ["| arm | " + " | ".join(names) + " | largest share |", "|" + "---|" * (len(names) + 2)]
    for arm, runs in complete.items():
        counts = sum(
            (
                np.asarray(cycle["selected_class_counts"], np.float64)
                for run in runs.values()
                for cycle in run.cycles
                if "selected_class_counts" in cycle
            ),
            np.zeros(len(names)),
        )
        if not counts.sum():
            continue
        shares = counts / counts.sum()
        lines.append(f"| {arm} | " + " | ".join(f"{share:.0%}" for share in shares) + f" | {shares.max():.0%} |")
    return "\n".join(lines)


def report(out_dir: str, required: dict[str, int] | None = None) -> str:
    """Writes the report files of `out_dir`; a mean-over-trainings experiment is averaged first (`averaged_runs`)."""
    complete = averaged_runs(out_dir, required) if training_directories(out_dir) else finished_runs(out_dir)
    summary = results.summarise(complete)
    results.write_report(summary, out_dir)
    results.plot_summary(summary, os.path.join(out_dir, "learning_curves.png"), title="Fashion-MNIST label efficiency")
    paired = results.format_paired_table(summary, LEARNING_LOSS_ARMS, BASELINE_ARMS + CONTROL_ARMS)
    # The picks are train0's (the retrainings replay them; their averaged cycles carry no class counts).
    trainings = training_directories(out_dir)
    shares = class_shares(finished_runs(trainings[0]) if trainings else complete)
    with open(os.path.join(out_dir, "paired.md"), "w") as stream:
        stream.write(paired + "\n\n" + shares + "\n")
    return (
        results.format_table(summary)
        + "\n\nPaired AUC differences (arm − baseline, * = interval excludes 0):\n\n"
        + paired
        + "\n\nClass shares of the picks (all acquisitions of the finished seeds):\n\n"
        + shares
    )


def load_dataset(data_dir: str | None, validation: bool) -> data.ArrayDataset:
    """Fashion-MNIST: the test split, or (`validation`) the pilots' stratified 5,000-image validation split of the training images."""
    if validation:
        return data.load_fashion_mnist(data_dir, validation_size=VALIDATION_SIZE, validation_seed=VALIDATION_SEED)
    return data.load("fashion_mnist", data_dir=data_dir)


def training_noise(values: dict[int, dict[int, float]]) -> dict:
    """How much one number (an AUC, an accuracy) moves with the training seed alone, seed by seed.

    Args:
        values: `{training_seed: {seed: value}}`, at least two training seeds;
            only the seeds every training seed has count.

    Returns:
        `seeds`; `differences` (per seed, the second-lowest training seed's value
        minus the lowest's) with their `mean_abs` and `std` (ddof=1; 0 for one
        seed); `per_run`, the training noise of one run: the square root of the
        mean over seeds of the variance over training seeds (ddof=1; with two
        training seeds, the root mean square difference / √2); `means`, per seed
        the mean over training seeds, with `mean` and `std` over seeds.

    Example:

    >>> noise = training_noise({0: {0: 0.80, 1: 0.79}, 1: {0: 0.81, 1: 0.77}})
    >>> [round(d, 3) for d in noise["differences"]], round(noise["mean_abs"], 3), round(noise["per_run"], 4)
    ([0.01, -0.02], 0.015, 0.0112)
    """
    training_seeds = sorted(values)
    if len(training_seeds) < 2:
        raise ValueError(f"Expected values of at least 2 training seeds. Received: {training_seeds}")
    seeds = sorted(set.intersection(*(set(values[training_seed]) for training_seed in training_seeds)))
    table = np.array([[values[training_seed][seed] for training_seed in training_seeds] for seed in seeds])
    table = table.reshape(len(seeds), len(training_seeds))
    differences = table[:, 1] - table[:, 0]
    means = table.mean(axis=1)
    return {
        "seeds": seeds,
        "differences": differences.tolist(),
        "mean_abs": float(np.abs(differences).mean()) if seeds else float("nan"),
        "std": float(differences.std(ddof=1)) if len(seeds) > 1 else 0.0,
        "per_run": float(np.sqrt(table.var(axis=1, ddof=1).mean())) if seeds else float("nan"),
        "means": means.tolist(),
        "mean": float(means.mean()) if seeds else float("nan"),
        "mean_std": float(means.std(ddof=1)) if len(seeds) > 1 else 0.0,
    }


def training_repeats(root: str) -> dict[str, dict[int, dict]]:
    """`{protocol: {training_seed: {seed: finished LoopResult}}}` of every `<root>/<protocol>_train<T>/`, one arm each."""
    protocols: dict[str, dict[int, dict]] = {}
    for name in sorted(os.listdir(root)):
        match = TRAINING_RUN_DIRECTORY.match(name)
        if not match or not os.path.isdir(os.path.join(root, name)):
            continue
        runs = finished_runs(os.path.join(root, name))
        if len(runs) > 1:
            raise ValueError(f"Expected the runs of one arm in {os.path.join(root, name)}. Received: {sorted(runs)}")
        if runs:
            (by_seed,) = runs.values()
            for seed, run in by_seed.items():
                recorded = run.config.get("training_seed")
                if recorded != int(match["training_seed"]):
                    raise ValueError(f"{name}/…/seed_{seed} was trained with training_seed={recorded}, not its name's")
            protocols.setdefault(match["protocol"], {})[int(match["training_seed"])] = by_seed
    return protocols


def format_training_noise(repeats: dict[int, dict]) -> str:
    """One protocol's table: per label count and for the AUC, the mean ± std over seeds and the training noise."""
    training_seeds = sorted(repeats)
    summary = results.summarise({f"train{training_seed}": runs for training_seed, runs in repeats.items()})
    aucs = results.auc_by_seed(summary)
    sizes = summary["strategies"][f"train{training_seeds[0]}"]["num_labeled"][: summary["auc_cycles"]]
    rows = []
    for cycle, size in enumerate(sizes):
        at_cycle = results.values_at_cycle(repeats, cycle)
        rows.append((str(size), {training_seed: at_cycle.get(training_seed, {}) for training_seed in training_seeds}))
    auc_label = f"AUC ({sizes[0]}–{sizes[-1]})"
    rows.append((auc_label, {training_seed: aucs[f"train{training_seed}"] for training_seed in training_seeds}))
    noise_columns = training_noise(rows[-1][1])["seeds"]
    header = ["labels", *[f"train {t}: mean ± std" for t in training_seeds], "mean of trainings: mean ± std"]
    header += [f"seed {seed}: train {training_seeds[1]} − {training_seeds[0]}" for seed in noise_columns]
    header += ["mean abs difference", "std of differences", "training noise per run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in rows:
        noise = training_noise(values)
        cells = [_mean_std(list(values[training_seed].values())) for training_seed in training_seeds]
        cells.append(f"{noise['mean']:.4f} ± {noise['mean_std']:.4f}")
        differences = dict(zip(noise["seeds"], noise["differences"]))
        cells += [f"{differences[seed]:+.4f}" if seed in differences else "–" for seed in noise_columns]
        cells += [f"{noise['mean_abs']:.4f}", f"{noise['std']:.4f}", f"{noise['per_run']:.4f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.4f} ± {std:.4f} (n={len(values)})"


NOISE_NOTE = (
    "Differences are paired by seed (same labeled items with `random`); 'training noise per run' is the square "
    "root of the mean over seeds of the variance over training seeds (two training seeds: rms difference / √2), "
    "the spread one training adds to a run's number; the mean of r trainings has it / √r. Every seed of one "
    "training seed starts from the same initialisation (the training seed, not the seed, draws it)."
)


def noise_report(root: str) -> str:
    """The training-noise tables of every protocol under `root`; also written to `root/training_noise.md`."""
    sections = []
    for protocol, repeats in training_repeats(root).items():
        seeds = sorted({seed for runs in repeats.values() for seed in runs})
        title = f"Protocol {protocol}: training seeds {sorted(repeats)}, seeds {seeds} (finished runs)"
        if len(repeats) < 2 or not set.intersection(*(set(runs) for runs in repeats.values())):
            sections.append(f"{title}: no seed has finished runs of every training seed yet.")
            continue
        sections.append(f"{title}\n\n{format_training_noise(repeats)}")
    if not sections:
        raise FileNotFoundError(f"No finished runs under {root!r}/<protocol>_train<T>/")
    text = "\n\n".join(sections) + "\n\n" + NOISE_NOTE
    with open(os.path.join(root, "training_noise.md"), "w") as stream:
        stream.write(text + "\n")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/label_efficiency")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--strategies", default=",".join(ARMS), help="comma-separated arms, strategy[:option=value]...[@recipe]"
    )
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--initial-size", type=int, default=500)
    parser.add_argument("--query-size", type=int, default=500)
    parser.add_argument("--subset-size", type=int, default=5000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--lr-schedule", default="", help="epoch:rate steps within each cycle (0-based), e.g. 6:0.005")
    parser.add_argument(
        "--training-seed", type=int, default=None, help="seed of the training only (LoopConfig.training_seed)"
    )
    parser.add_argument(
        "--validation", action="store_true", help="pilots: evaluate on a validation split of the pool, never the test"
    )
    parser.add_argument(
        "--trainings", type=int, default=1, help="v5: each seed's curve is the mean of this many trainings"
    )
    parser.add_argument("--retrain", default="", help="v5: the arms trained --trainings times (default: every arm)")
    parser.add_argument("--report-only", action="store_true", help="only print the tables of finished runs")
    parser.add_argument(
        "--noise-report",
        metavar="ROOT",
        default=None,
        help="only print the training noise of ROOT/<protocol>_train<T>/",
    )
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)

    if args.noise_report:
        print(noise_report(args.noise_report))
        return 0
    if not args.report_only:
        lr_schedule = experiment.parse_lr_schedule(args.lr_schedule)
        dataset = load_dataset(args.data_dir, args.validation)
        print(dataset.summary(), flush=True)
        spec = experiment.ModelSpec(width=args.width, learning_rate=args.lr)
        start = time.perf_counter()
        for seed in [int(seed) for seed in args.seeds.split(",")]:
            config = LoopConfig(
                initial_size=args.initial_size,
                query_size=args.query_size,
                subset_size=args.subset_size,
                cycles=args.cycles,
                epochs=args.epochs,
                batch_size=args.batch_size,
                verbose=0 if args.quiet else 1,
                training_seed=args.training_seed,
            )
            arms = args.strategies.split(",")
            if args.trainings > 1:
                run_trainings(
                    dataset,
                    arms,
                    seed,
                    args.out,
                    spec,
                    config,
                    args.trainings,
                    retrained(args),
                    lr_schedule=lr_schedule,
                )
            else:
                experiment.run_experiment(dataset, arms, [seed], args.out, spec, config, lr_schedule=lr_schedule)
            print(f"seed {seed} done after {time.perf_counter() - start:.0f} s", flush=True)
            print(report(args.out, required_trainings(args)), flush=True)
    print(report(args.out, required_trainings(args)))
    return 0


def retrained(args) -> list[str]:
    """The arms `--trainings` applies to: `--retrain`, or every arm of `--strategies`."""
    return (args.retrain or args.strategies).split(",")


def required_trainings(args) -> dict[str, int]:
    """`{arm: trainings}` a finished (arm, seed) needs to enter the report."""
    return dict.fromkeys(retrained(args), args.trainings) if args.trainings > 1 else {}


if __name__ == "__main__":
    sys.exit(main())
