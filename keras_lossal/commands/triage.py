"""`lossal triage`: score unlabeled items by predicted loss and choose a labeling queue from them."""

from __future__ import annotations

import argparse
import collections
import math

from keras_lossal.commands import _settings
from keras_lossal.commands._errors import CommandError, reports_errors
from keras_lossal.commands._settings import add_image_limit_arguments, add_selection_arguments
from keras_lossal.contracts import COMMIT_SECONDS, DEFAULT_READ_THREADS, trained_items

__all__ = ["add_parser", "class_names", "run"]

EPILOG = """examples:
  lossal triage unlabeled/ --model models/lossal --output triage_out --top-k 500
  lossal triage items.jsonl --server grpc://localhost:8500 --model-name lossal --output triage_out
  lossal triage pool.tfrecord --server http://localhost:8501 --model-name lossal --threshold 2.0 --output out
  lossal triage /srv/pool --model models/lossal --output /srv/triage --label-studio-document-root /srv
  lossal triage /srv/pool --model models/lossal --output round2 --exclude-labeled labeled.jsonl
  lossal triage unlabeled/ --model models/lossal --output triage_out --selection top_k
  lossal triage /srv/pool --model models/lossal --output round2 --exclude-labeled labeled.jsonl \\
      --selection learning_loss_clusters

The queue: by default (--selection budget_switch, the recommended selection) it follows the budget_switch
strategy: typiclust (typical items of the clusters the labeled ones cover least) while fewer than
--labels-per-class labels per class are labeled, then badge (BADGE's k-means++ on a uniform sample). The labeled
items are counted in the --exclude-labeled manifests, else the export's training record; when neither says, it
takes badge and prints so. --selection learning_loss_clusters takes the highest predicted loss in each of K
k-means clusters of the K * --candidates-factor highest predicted losses; --selection top_k queues the K highest
predicted losses. Every queue is listed by predicted loss.

Re-running with the same --output resumes: only items not yet scored are sent to the model. A queue holds
the scores of one model version: a resume or a server that answers with another version stops, saying how
to go on (--model-version N to keep the queue's version, --restart to rescore with the new one).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "triage",
        help="score unlabeled items by predicted loss and write a ranked labeling queue",
        description="Score unlabeled items (image folder, TFRecord of tf.Examples, or JSONL manifest) with an "
        "exported LossLearningModel, in-process or through TF Serving, and write a ranked labeling queue "
        "(queue.jsonl, queue.csv, label_studio_tasks.json, label_config.xml) plus scored.jsonl and failures.jsonl.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="directory of images, .tfrecord file, or .jsonl manifest")
    parser.add_argument("--output", "-o", required=True, help="output directory (re-running resumes there)")
    parser.add_argument(
        "--model", help="SavedModel base path or version directory for in-process scoring (the default mode)"
    )
    parser.add_argument("--server", help="score through TF Serving: grpc://host:8500 or http://host:8501")
    parser.add_argument("--model-name", default="lossal", help="model name on the server (default: lossal)")
    parser.add_argument(
        "--model-version",
        type=int,
        help="pin the model version: the server's version, or the version directory under --model (default: the "
        "latest). A queue holds one version's scores: resuming with another version is refused",
    )
    parser.add_argument("--model-label", help="server version label, e.g. stable")
    parser.add_argument("--labels", help="class names for server mode: a comma-separated list or a text file")
    parser.add_argument(
        "--top-k", type=int, default=1000, help="queue length (default 1000; 0 = no limit: every scored item)"
    )
    parser.add_argument("--threshold", type=float, help="only queue items with predicted loss >= this")
    add_selection_arguments(parser, labeled_manifests=True)
    parser.add_argument("--batch-size", type=int, default=32, help="items per request (default 32)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight in server mode")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (server mode)")
    parser.add_argument("--retries", type=int, default=3, help="retries for transient server errors")
    parser.add_argument(
        "--stop-after-server-errors",
        type=int,
        default=3,
        metavar="N",
        help="stop (resumable) after N scoring calls in a row failed on the server side (default 3; 0 = never)",
    )
    _add_content_arguments(parser)
    _add_reading_arguments(parser)
    _add_label_studio_arguments(parser)
    parser.add_argument("--restart", action="store_true", help="discard earlier results in --output")
    parser.add_argument(
        "--show", type=int, default=10, help="print this many queue entries, or all if fewer (default 10)"
    )
    parser.set_defaults(func=run)
    return parser


def _add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading items")
    group.add_argument(
        "--input-type", default="auto", choices=("auto", "images", "tfrecord", "manifest"), help="default: auto"
    )
    group.add_argument("--root", help="manifest paths must resolve inside this directory (default: its folder)")
    add_image_limit_arguments(group)
    group.add_argument(
        "--read-threads",
        type=int,
        default=DEFAULT_READ_THREADS,
        metavar="N",
        help=f"threads reading and checking items ahead of the scorer (default here: {DEFAULT_READ_THREADS}, the "
        "number of CPUs between 2 and 8; the outputs are the same for any N)",
    )
    group.add_argument(
        "--scoring-calls",
        type=int,
        metavar="N",
        help="batches scored at once (default: 2 in-process, where two calls keep the CPU busier than one; 1 "
        "with --server, which sends --concurrency requests itself); 1 halves the model's working memory",
    )
    group.add_argument(
        "--commit-seconds",
        type=float,
        default=COMMIT_SECONDS,
        metavar="S",
        help=f"write and sync the logs at most every S seconds (default: {COMMIT_SECONDS:g}; 0: after every batch); "
        "a kill loses at most S seconds of scoring, which the resume does again",
    )


def _add_content_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("items by content", "items are matched by the sha256 of their bytes")
    group.add_argument("--dedupe", action="store_true", help="do not score an item whose bytes equal an earlier item's")
    group.add_argument(
        "--exclude-labeled",
        action="append",
        default=[],
        metavar="MANIFEST",
        help="a labeled-set manifest (repeatable): items whose bytes it holds are neither scored nor queued, "
        "whatever their name (records without sha256 are hashed from their files); the count is reported",
    )


def _add_label_studio_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Label Studio", "how label_studio_tasks.json names images (label_config.xml is written beside it)"
    )
    group.add_argument(
        "--label-studio-document-root",
        metavar="DIR",
        help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: images become /data/local-files/?d=<path "
        "relative to DIR> (an item outside DIR is refused)",
    )
    group.add_argument(
        "--label-studio-url-prefix",
        metavar="URL",
        help="cloud storage prefix standing for the document root (default: the current directory), e.g. "
        "gs://bucket/pool/, s3://bucket/pool/, https://host/pool/",
    )
    group.add_argument(
        "--label-studio-tfrecord-images",
        choices=("write", "refuse"),
        default="write",
        help="TFRecord items: write their images to <output>/label_studio_images/ (default) or refuse",
    )


def _label_studio_options(args: argparse.Namespace):
    from keras_lossal.serving.labeling import LabelStudioOptions

    return LabelStudioOptions(
        document_root=args.label_studio_document_root,
        url_prefix=args.label_studio_url_prefix,
        tfrecord_images=args.label_studio_tfrecord_images,
    )


def class_names(value: str | None) -> list[str] | None:
    """Class names from a `--labels` value: a `.json` list (what `lossal train` writes as `classes.json`),
    a text file (one name a line) or a comma-separated list."""
    if value is None:
        return None
    import json
    import os

    if os.path.isfile(value) and value.endswith(".json"):
        try:
            with open(value, encoding="utf-8") as handle:
                names = json.load(handle)
        except ValueError as error:
            raise CommandError(f"expected a JSON list of class names in {value!r}: {error}") from None
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise CommandError(f"expected a JSON list of class names (strings) in {value!r}. Received: {names!r:.80}")
        return names
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    return [label.strip() for label in value.split(",")]


@reports_errors("triage")
def run(args: argparse.Namespace) -> int:
    from keras_lossal.records import FAILURES_FILE
    from keras_lossal.serving import triage
    from keras_lossal.serving.triage import ServerUnavailableError, TriageStopped

    limits = _queue_limits(args)
    # Every flag's value is checked before a model loads (budget_switch resolves once the model is known).
    checked = _settings.settings(args, *limits)
    label_studio = _label_studio_options(args)
    labeled = _labeled_content(args)
    scorer, batch_size = _scorer(args)
    skipped = collections.Counter()
    try:
        settings, labeled_count = _selection(args, checked, scorer, labeled, trained_items(scorer))
        labeled_embeddings, embedded_versions = _labeled_embeddings(args, scorer, settings, batch_size)
        result = triage(
            _items(args, scorer, settings, skipped),
            scorer,
            args.output,
            checked,  # triage resolves budget_switch to the same selection, and records why
            batch_size=batch_size,
            label_studio=label_studio,
            restart=args.restart,
            dedupe=args.dedupe,
            stop_after_server_errors=args.stop_after_server_errors or None,
            skipped=skipped,
            exclude_content=labeled.sha256,
            read_threads=args.read_threads,
            commit_seconds=args.commit_seconds,
            labeled_embeddings=labeled_embeddings,
            labeled_count=labeled_count,
            scoring_calls=args.scoring_calls,
        )
    except TriageStopped as error:  # the server failed repeatedly, or answered with another model version
        scored = error.result.total_scored
        if isinstance(error, ServerUnavailableError):
            raise CommandError(f"{error} ({scored} scored so far, see {args.output}/{FAILURES_FILE})", code=3) from None
        raise CommandError(str(error), code=3) from None
    finally:
        if args.server:
            scorer.client.close()
    _print_result(result, args, labeled)
    if embedded_versions and result.model_version not in embedded_versions:
        print(
            f"note: the labeled items were embedded with model version(s) {sorted(embedded_versions)} and the pool "
            f"scored with {result.model_version}; re-run with --model-version {result.model_version} (and --restart) "
            "for a queue from one version"
        )
    return 0 if result.scored or result.resumed or not result.failed else 1


def _queue_limits(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """Checks the scoring mode and limits; returns triage's `(top_k, threshold)`."""
    if (args.model is None) == (args.server is None):
        raise CommandError("pass exactly one of --model DIR (in-process) or --server URL")
    if args.scoring_calls is not None and args.scoring_calls < 1:
        raise CommandError(f"expected --scoring-calls >= 1. Received: {args.scoring_calls}")
    if args.read_threads < 1:
        raise CommandError(f"expected --read-threads >= 1. Received: {args.read_threads}")
    if not 0 <= args.commit_seconds < math.inf:
        raise CommandError(f"expected --commit-seconds to be a finite number >= 0. Received: {args.commit_seconds}")
    for name in ("top_k", "stop_after_server_errors", "show"):
        if getattr(args, name) < 0:
            flag = f"--{name.replace('_', '-')}"
            meaning = " (0 = none)" if name == "show" else " (0 = no limit)"
            raise CommandError(f"expected {flag} >= 0{meaning}. Received: {getattr(args, name)}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise CommandError(f"expected --threshold to be a finite number. Received: {args.threshold}")
    top_k = args.top_k or None
    # No limit and no threshold: every scored item is queued (-inf admits every finite predicted loss).
    threshold = float("-inf") if top_k is None and args.threshold is None else args.threshold
    return top_k, threshold


def _selection(args: argparse.Namespace, settings, scorer, labeled, trained: int | None):
    """`(settings with budget_switch resolved to typiclust or badge, the labeled count)`; the choice is printed.

    Triage resolves the same settings and count to the same selection, and records why in `summary.json`.

    The labeled items are counted in the `--exclude-labeled` manifests (distinct items), else taken from the
    export's `training.num_items`; when neither says, or the classes are not known, the switch takes `badge`.
    """
    if args.exclude_labeled:
        # Distinct items: a record repeated in two manifests is one label.
        count, source = len(labeled.sha256) + len(labeled.unhashed), " in the --exclude-labeled manifests"
    else:
        count = trained
        source = "" if count is None else " the model was trained on (its export's training.num_items)"
    classes = len(scorer.labels) if scorer.labels else None
    resolved, why = settings.resolved(count, classes, counted=source)
    if not why or settings.top_k is None:  # no queue length: every item is queued, whichever selection
        return resolved, count
    print(why)
    if count is None:
        print(
            "  (pass the labeled-set manifests with --exclude-labeled, which also keeps them out of the queue, or "
            "score an export of a `lossal train` output, whose lossal.json records training.num_items)"
        )
    elif not classes:
        print(f"  ({scorer.description} names no classes: pass --labels)")
    elif resolved.selection == "typiclust" and not args.exclude_labeled:
        print("typiclust without --exclude-labeled: the labeled items are unknown, so no cluster counts as covered")
    return resolved, count


def _labeled_embeddings(args: argparse.Namespace, scorer, settings, batch_size: int):
    """For a `typiclust` queue with `--exclude-labeled`: `(the labeled items' embeddings, their model versions)`.

    A labeled item that cannot be read or scored is left out (counted in the printed line); a server failure
    stops the run (exit status 3), since the queue would quietly lose what the labels cover.
    """
    if settings.selection != "typiclust" or not args.exclude_labeled or settings.top_k is None:
        return None, set()
    from keras_lossal.labeling.manifest import labeled_items
    from keras_lossal.serving.triage import embed_items

    _, max_bytes = settings.image_limits(scorer)
    embedded = embed_items(labeled_items(args.exclude_labeled, max_bytes), scorer, settings, batch_size=batch_size)
    retryable = [failure for failure in embedded.failures if failure.get("retryable")]
    if retryable:
        raise CommandError(
            f"could not embed {len(retryable)} labeled item(s) for the typiclust queue (first: {retryable[0]['id']}: "
            f"{retryable[0]['reason']}); nothing was scored: re-run when the server answers",
            code=3,
        )
    line = f"typiclust: embedded {len(embedded.embeddings)} labeled item(s) to fill around"
    if embedded.failures:
        first = embedded.failures[0]
        line += f"; {len(embedded.failures)} could not be embedded (first: {first['id']}: {first['reason']})"
    print(line)
    return embedded.embeddings, embedded.model_versions


def _labeled_content(args: argparse.Namespace):
    """The content hashes of the `--exclude-labeled` manifests (read before anything is scored)."""
    from keras_lossal.labeling.manifest import labeled_content

    return labeled_content(args.exclude_labeled)


def _scorer(args: argparse.Namespace):
    """The in-process or server scorer, and the batch size that keeps the server's workers busy."""
    from keras_lossal.serving import InProcessScorer, ServerScorer, TFServingClient

    if not args.server:
        return InProcessScorer(args.model, version=args.model_version), args.batch_size
    client = TFServingClient(
        args.server,
        args.model_name,
        protocol=None,
        version=args.model_version,
        label=args.model_label,
        timeout=args.timeout,
        retries=args.retries,
        batch_size=args.batch_size,
        max_concurrency=args.concurrency,
    )
    # Each scoring call carries one request per worker, so the server sees `concurrency` requests in flight.
    return ServerScorer(client, labels=class_names(args.labels)), args.batch_size * args.concurrency


def _items(args: argparse.Namespace, scorer, settings, skipped: collections.Counter):
    from keras_lossal.serving import read_items

    # Bound each file read by the same limit triage applies, so a huge file is refused unread.
    _, max_bytes = settings.image_limits(scorer)
    return read_items(args.input, args.input_type, root=args.root, max_bytes=max_bytes, skipped=skipped)


def _print_result(result, args: argparse.Namespace, labeled) -> None:
    from keras_lossal.records import FAILURES_FILE

    print(
        f"scored {result.scored}, failed {result.failed}, resumed {result.resumed} "
        f"({result.items_per_second:.1f} items/s); queue: {result.queued} items; "
        f"totals: {result.total_scored} scored, {result.total_failed} failed -> {result.output_dir} "
        f"(model version {result.model_version})"
    )
    if args.exclude_labeled:
        print(
            f"excluded {result.excluded_labeled} item(s) already labeled (matched by sha256 against "
            f"{labeled.records} labeled record(s) in {', '.join(args.exclude_labeled)})"
        )
        if labeled.unhashed:
            print(
                f"{len(labeled.unhashed)} labeled record(s) could not be matched (no sha256, file not readable), "
                f"first: {labeled.unhashed[0]}"
            )
    if result.skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in result.skipped.items())
        print(f"skipped {sum(result.skipped.values())} file(s) that are not items ({reasons})")
    for record in result.queue[: args.show]:
        label = f"  {record['label']}" if "label" in record else ""
        print(f"{record['rank']:>4}  {record['predicted_loss']:.4f}{label}  {record['id']}")
    if result.total_failed:
        print(f"see {args.output}/{FAILURES_FILE} for the {result.total_failed} failed item(s)")
