"""The command-line side of `TriageSettings`: the queue-selection and image-limit flags `lossal triage` and
`lossal beam-score` share, and the settings built from them.

Example:

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_selection_arguments(parser)
>>> add_image_limit_arguments(parser)
>>> settings(parser.parse_args(["--selection", "badge", "--max-image-bytes", "1024"]), top_k=50)
TriageSettings(top_k=50, threshold=None, selection='badge', candidates_factor=10, seed=0, \
max_image_pixels=None, max_image_bytes=1024)
"""

from __future__ import annotations

import argparse

from keras_lossal.contracts import (
    BUDGET_SELECTION,
    DEFAULT_CANDIDATES_FACTOR,
    DEFAULT_LABELS_PER_CLASS,
    DEFAULT_SELECTION,
    DEFAULT_SELECTION_SEED,
    SELECTIONS,
    TriageSettings,
)

__all__ = ["add_image_limit_arguments", "add_selection_arguments", "settings"]


def add_selection_arguments(parser: argparse.ArgumentParser, budget: bool = False) -> None:
    """`--selection`, `--candidates-factor` and `--seed`, in a group of their own.

    `budget`: also offer `--selection budget_switch` and `--labels-per-class` (`lossal triage`, which knows
    the labeled items from `--exclude-labeled`).
    """
    group = parser.add_argument_group("queue selection", "how the --top-k queued items are chosen from the scored ones")
    typiclust_help = (
        ", filling the clusters the --exclude-labeled items cover least"
        if budget
        else " (no labeled items here: every cluster counts as uncovered)"
    )
    budget_help = (
        f"; {BUDGET_SELECTION}: typiclust while fewer than --labels-per-class labels per class are labeled (the "
        "--exclude-labeled manifests' distinct items, else the export's training items), badge from there"
        if budget
        else ""
    )
    group.add_argument(
        "--selection",
        choices=SELECTIONS + ((BUDGET_SELECTION,) if budget else ()),
        default=DEFAULT_SELECTION,
        help=f"default {DEFAULT_SELECTION}: the highest predicted loss in each of K k-means clusters of the "
        "candidates' embeddings; learning_loss_badge: BADGE's k-means++ weighted by predicted loss; top_k: the K "
        "highest predicted losses; badge: plain BADGE k-means++ on a uniform random sample of F * K scored items "
        "instead of the highest predicted losses (the benchmarked badge protocol); typiclust: TypiClust's typical "
        "items of K k-means clusters of the same kind of sample (for small budgets)" + typiclust_help + budget_help,
    )
    if budget:
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


def settings(
    args: argparse.Namespace, top_k: int | None, threshold: float | None = None, selection: str | None = None
) -> TriageSettings:
    """The `TriageSettings` of the parsed flags (a bad value raises `ValueError` naming it).

    `selection`: the selection to use instead of `--selection` (`budget_switch` resolved to one).
    """
    return TriageSettings(
        top_k=top_k,
        threshold=threshold,
        selection=selection or args.selection,
        candidates_factor=args.candidates_factor,
        seed=args.seed,
        max_image_pixels=args.max_image_pixels,
        max_image_bytes=args.max_image_bytes,
    )
