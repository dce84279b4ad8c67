"""`lossal ingest`: adds the labels of a Label Studio export to the labeled-set manifest, rejects reported.

The rules (majority of annotators, ties and labels outside the class list
rejected, unknown ids and conflicts with the manifest rejected, never merged)
are `keras_lossal.labeling.labelstudio`'s; this module only reads the command line.
"""

from __future__ import annotations

import argparse

from keras_lossal.commands._errors import CommandError, reports_errors
from keras_lossal.files import DEFAULT_LOCK_TIMEOUT

# The exit code of an ingest that wrote what it accepted and rejected something (see the rejects file).
COMPLETED_WITH_REJECTS = 3

EPILOG = f"""exit status:
  0  every resolved label was added (or was already present)
  2  bad input (a bad flag, export, manifest or known-items source): nothing written
  {COMPLETED_WITH_REJECTS}  completed with rejects: the accepted labels were added, the others are in the rejects file
     (ties, labels outside the class list, unknown ids, conflicts, image missing, content changed since triage)
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="add a Label Studio export's labels to the labeled-set manifest (rejects reported)",
        description=(
            "Reads a Label Studio export (JSON, JSON_MIN or CSV), resolves several annotators of an item by "
            "majority (ties rejected), and adds the labels to the labeled-set manifest. Labels outside the "
            "class list, unknown ids and labels that conflict with the manifest go to a rejects file with "
            "the reason. Ingesting the same export twice changes nothing. Without --known-items an item's "
            "file comes from its task's image URL: local-files URLs and plain paths inside --document-root "
            "are accepted, anything else (file://, http(s)://, s3://, paths outside the root) is rejected "
            "unless allowed below. A label is never recorded for a file that does not exist, or whose bytes "
            "no longer match the task's sha256 (or triage's): it is rejected as 'image missing' or 'content "
            "changed since triage'. Concurrent ingests into one manifest take turns (a lock file beside it)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export", help="the Label Studio export file (.json or .csv)")
    parser.add_argument(
        "--manifest", required=True, help="the labeled-set manifest (JSONL or .csv; created if missing)"
    )
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help="the class names, comma-separated")
    classes.add_argument("--label-config", help="the project's label_config.xml (its Choice values are the classes)")
    parser.add_argument("--export-type", choices=("JSON", "JSON_MIN", "CSV"), help="default: from the file")
    add_rule_arguments(parser)
    parser.set_defaults(func=run, tensorflow=False)


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ingest's rules (known items, image URLs, rejects, lock), shared with `lossal labelstudio pull`."""
    parser.add_argument(
        "--known-items",
        action="append",
        metavar="PATH",
        help="the pool the tasks came from: a triage output directory (scored.jsonl, queue.jsonl) or a pool "
        "manifest; repeatable (two sources naming one id differently are an error). An id outside it is "
        "rejected. Default: every id is known and its path comes from the task's image URL (see --document-root)",
    )
    parser.add_argument(
        "--path-root",
        default=None,
        help="what relative paths in a triage output directory are relative to (older triage runs; newer ones "
        "record absolute paths; default: the current directory)",
    )
    _add_image_url_arguments(parser)
    parser.add_argument(
        "--id-field", default="item_id", help="the task data field holding the item id (default: item_id)"
    )
    parser.add_argument(
        "--rejects", default=None, help="rejects file (default: <export name>.rejects.jsonl beside the manifest)"
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait while another ingest writes the manifest (it holds <manifest>.lock); then "
        f"give up with an error, nothing written (default: {DEFAULT_LOCK_TIMEOUT:g})",
    )


def _add_image_url_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "image URLs", "which task image URLs give a manifest path when the pool is not given (no --known-items)"
    )
    group.add_argument(
        "--document-root",
        default=None,
        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, to find the files of local-files URLs; "
        "plain image paths must stay inside it (default for those: the current directory). Only without "
        "--known-items",
    )
    group.add_argument(
        "--allow-paths-outside-root",
        action="store_true",
        help="accept plain image paths outside the document root (absolute, or going up with ..); default: "
        "rejected as 'image refused'. Only without --known-items",
    )
    group.add_argument(
        "--allow-url-schemes",
        default="",
        metavar="SCHEMES",
        help="comma-separated URL schemes whose image URLs are written to the manifest as they are, e.g. "
        "'gs,s3' or 'https' ('file' for file:// URLs); default: none, every URL with a scheme is rejected. "
        "Only without --known-items",
    )


@reports_errors("ingest")
def run(args) -> int:
    from keras_lossal.labeling import labelstudio

    if args.classes is not None:
        class_names = [name.strip() for name in args.classes.split(",")]
    else:
        class_names = labelstudio.read_label_config(args.label_config)
    return ingest_export(args, args.export, class_names, args.export_type)


def ingest_export(args: argparse.Namespace, export: str, class_names: list[str], export_type: str | None) -> int:
    """Ingests `export` into `args.manifest` with the options of `add_rule_arguments`; prints the summary and
    returns the exit status (0, or `COMPLETED_WITH_REJECTS`). Raises `CommandError` for a bad option."""
    from keras_lossal.labeling import labelstudio, manifest

    known_items = None
    if args.known_items:
        known_items = manifest.merge_known_items(args.known_items, path_root=args.path_root)
    elif args.path_root is not None:
        raise CommandError("--path-root only applies to --known-items")
    if args.lock_timeout < 0:
        raise CommandError(f"Expected --lock-timeout >= 0 seconds. Received: {args.lock_timeout:g}")
    summary = labelstudio.ingest(
        export,
        args.manifest,
        class_names,
        known_items=known_items,
        rejects_path=args.rejects,
        export_type=export_type,
        id_field=args.id_field,
        image_sources=labelstudio.ImageSources(
            document_root=args.document_root,
            allow_paths_outside_root=args.allow_paths_outside_root,
            url_schemes=tuple(scheme.strip() for scheme in args.allow_url_schemes.split(",") if scheme.strip()),
        ),
        lock_timeout=args.lock_timeout,
    )
    print(summary.describe())
    return COMPLETED_WITH_REJECTS if summary.rejects else 0
