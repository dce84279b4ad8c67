"""The command-line side of `TriageSettings`: the queue-selection and image-limit flags `lossal triage` and
`lossal beam-score` share, and the settings built from them.

Example:

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_selection_arguments(parser)
>>> add_image_limit_arguments(parser)
>>> settings(parser.parse_args(["--selection", "badge", "--max-image-bytes", "1024"]), top_k=50)
TriageSettings(top_k=50, threshold=None, selection='badge', candidates_factor=10, seed=0, \
max_image_pixels=None, max_image_bytes=1024, labels_per_class=10)
"""

from __future__ import annotations

import argparse

from keras_lossal.contracts import (
    BUDGET_SELECTION,
    DEFAULT_CANDIDATES_FACTOR,
    DEFAULT_LABELS_PER_CLASS,
    DEFAULT_SELECTION,
    DEFAULT_SELECTION_SEED,
    TRIAGE_SELECTIONS,
    TriageSettings,
)

__all__ = ["add_image_limit_arguments", "add_selection_arguments", "settings"]


def add_selection_arguments(parser: argparse.ArgumentParser, labeled_manifests: bool = False) -> None:
    """`--selection`, `--labels-per-class`, `--candidates-factor` and `--seed`, in a group of their own.

    `labeled_manifests`: the command knows the labeled items from `--exclude-labeled` (`lossal triage`), which
    `budget_switch` counts and `typiclust` fills around; without them (Beam) the export's training record counts
    them and no cluster counts as covered.
    """
    group = parser.add_argument_group("queue selection", "how the --top-k queued items are chosen from the scored ones")
    counted = (
        "the --exclude-labeled manifests' distinct items, else the export's training items"
        if labeled_manifests
        else "the export's training items"
    )
    typiclust_help = (
        ", filling the clusters the --exclude-labeled items cover least"
        if labeled_manifests
        else " (no labeled items here: every cluster counts as uncovered)"
    )
    group.add_argument(
        "--selection",
        choices=TRIAGE_SELECTIONS,
        default=DEFAULT_SELECTION,
        help=f"default {DEFAULT_SELECTION} (the recommended selection): typiclust while fewer than "
        f"--labels-per-class labels per class are labeled ({counted}; not known: badge), badge from there; "
        "learning_loss_clusters: the highest predicted loss in each of K k-means clusters of the candidates' "
        "embeddings; learning_loss_badge: BADGE's k-means++ weighted by predicted loss; top_k: the K highest "
        "predicted losses; badge: plain BADGE k-means++ on a uniform random sample of F * K scored items instead of "
        "the highest predicted losses (the benchmarked badge protocol); typiclust: TypiClust's typical items of K "
        "k-means clusters of the same kind of sample (for small budgets)" + typiclust_help,
    )
    group.add_argument(
        "--labels-per-class",
        type=int,
        metavar="N",
        help=f"{BUDGET_SELECTION}'s switch point (default {DEFAULT_LABELS_PER_CLASS}, as the budget_switch strategy)",
    )
    group.add_argument(
        "--candidates-factor",
        type=int,
        default=DEFAULT_CANDIDATES_FACTOR,
        metavar="F",
        help=f"choose among the F * K highest predicted losses (badge, typiclust: a random sample of F * K), the "
        f"most items held in memory with their embeddings (default {DEFAULT_CANDIDATES_FACTOR})",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SELECTION_SEED,
        help=f"selection seed, also of the badge and typiclust samples (default {DEFAULT_SELECTION_SEED})",
    )


def add_image_limit_arguments(parser) -> None:
    """`--max-image-pixels` and `--max-image-bytes` (a parser or an argument group)."""
    parser.add_argument("--max-image-pixels", type=int, help="decompression-bomb guard (default: the export's)")
    parser.add_argument("--max-image-bytes", type=int, help="largest encoded file accepted (default: the export's)")


def settings(args: argparse.Namespace, top_k: int | None, threshold: float | None = None) -> TriageSettings:
    """The `TriageSettings` of the parsed flags (a bad value raises `ValueError` naming it)."""
    if args.labels_per_class is not None:
        if args.selection != BUDGET_SELECTION:
            raise ValueError(f"--labels-per-class applies to --selection {BUDGET_SELECTION} only")
        if args.labels_per_class < 0:
            raise ValueError(f"expected --labels-per-class >= 0. Received: {args.labels_per_class}")
    per_class = {} if args.labels_per_class is None else {"labels_per_class": args.labels_per_class}
    return TriageSettings(
        top_k=top_k,
        threshold=threshold,
        selection=args.selection,
        candidates_factor=args.candidates_factor,
        seed=args.seed,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
        **per_class,
    )
