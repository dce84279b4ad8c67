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

The same protocol from the command line:

    lossal run --dataset fashion_mnist --strategies learning_loss,random,... --seeds 0,1,2,3,4 \\
        --cycles 6 --initial-size 500 --query-size 500 --subset-size 5000 --width 8 --epochs 8 \\
        --batch-size 64 --lr 0.05 --out runs/label_efficiency
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_lossal import data, experiment, results  # noqa: E402
from keras_lossal.loop import LoopConfig  # noqa: E402

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
CONTROL_ARMS = ["random@recommended", "random@paper", "random@light_joint"]
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


def class_shares(complete: dict) -> str:
    """How each arm's picks spread over the classes (all acquisitions, all finished seeds)."""
    names = data.FASHION_MNIST_CLASSES
    lines = ["| arm | " + " | ".join(names) + " | largest share |", "|" + "---|" * (len(names) + 2)]
    for arm, runs in complete.items():
        counts = sum(
            np.asarray(cycle["selected_class_counts"], np.float64)
            for run in runs.values()
            for cycle in run.cycles
            if "selected_class_counts" in cycle
        )
        shares = counts / counts.sum()
        lines.append(f"| {arm} | " + " | ".join(f"{share:.0%}" for share in shares) + f" | {shares.max():.0%} |")
    return "\n".join(lines)


def report(out_dir: str) -> str:
    complete = finished_runs(out_dir)
    summary = results.summarise(complete)
    results.write_report(summary, out_dir)
    results.plot_summary(summary, os.path.join(out_dir, "learning_curves.png"), title="Fashion-MNIST label efficiency")
    paired = results.format_paired_table(summary, LEARNING_LOSS_ARMS, BASELINE_ARMS + CONTROL_ARMS)
    shares = class_shares(complete)
    with open(os.path.join(out_dir, "paired.md"), "w") as stream:
        stream.write(paired + "\n\n" + shares + "\n")
    return (
        results.format_table(summary)
        + "\n\nPaired AUC differences (arm − baseline, * = interval excludes 0):\n\n"
        + paired
        + "\n\nClass shares of the picks (all acquisitions of the finished seeds):\n\n"
        + shares
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/label_efficiency")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--strategies", default=",".join(ARMS), help="comma-separated arms, strategy[@recipe]")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--initial-size", type=int, default=500)
    parser.add_argument("--query-size", type=int, default=500)
    parser.add_argument("--subset-size", type=int, default=5000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--report-only", action="store_true", help="only print the tables of finished runs")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    if not args.report_only:
        dataset = data.load("fashion_mnist", data_dir=args.data_dir)
        print(dataset.summary(), flush=True)
        spec = experiment.ModelSpec(width=args.width, learning_rate=args.lr)
        start = time.perf_counter()
        for seed in [int(seed) for seed in args.seeds.split(",")]:
            experiment.run_experiment(
                dataset,
                args.strategies.split(","),
                [seed],
                args.out,
                spec,
                LoopConfig(
                    initial_size=args.initial_size,
                    query_size=args.query_size,
                    subset_size=args.subset_size,
                    cycles=args.cycles,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    verbose=0 if args.quiet else 1,
                ),
            )
            print(f"seed {seed} done after {time.perf_counter() - start:.0f} s", flush=True)
            print(report(args.out), flush=True)
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
