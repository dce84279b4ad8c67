"""`lossal ingest`: adds the labels of a Label Studio export to the labeled-set manifest, rejects reported.

The rules (majority of annotators, ties and labels outside the class list
rejected, unknown ids and conflicts with the manifest rejected, never merged)
are `keras_lossal.labelstudio`'s; this module only reads the command line.
"""

from __future__ import annotations

from keras_lossal.commands._errors import CommandError, reports_errors


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="add a Label Studio export's labels to the labeled-set manifest (rejects reported)",
        description=(
            "Reads a Label Studio export (JSON, JSON_MIN or CSV), resolves several annotators of an item by "
            "majority (ties rejected), and adds the labels to the labeled-set manifest. Labels outside the "
            "class list, unknown ids and labels that conflict with the manifest go to a rejects file with "
            "the reason. Ingesting the same export twice changes nothing."
        ),
    )
    parser.add_argument("export", help="the Label Studio export file (.json or .csv)")
    parser.add_argument(
        "--manifest", required=True, help="the labeled-set manifest (JSONL or .csv; created if missing)"
    )
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", help="the class names, comma-separated")
    classes.add_argument("--label-config", help="the project's label_config.xml (its Choice values are the classes)")
    parser.add_argument(
        "--known-items",
        action="append",
        metavar="PATH",
        help="the pool the tasks came from: a triage output directory (scored.jsonl, queue.jsonl) or a pool "
        "manifest; repeatable. An id outside it is rejected. Default: every id is known and its path comes "
        "from the task's image URL (see --document-root)",
    )
    parser.add_argument(
        "--path-root",
        default=None,
        help="what relative paths in a triage output directory are relative to (default: the current directory)",
    )
    parser.add_argument(
        "--document-root",
        default=None,
        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, to find the files of local-files URLs "
        "(only without --known-items)",
    )
    parser.add_argument("--export-type", choices=("JSON", "JSON_MIN", "CSV"), help="default: from the file")
    parser.add_argument(
        "--id-field", default="item_id", help="the task data field holding the item id (default: item_id)"
    )
    parser.add_argument(
        "--rejects", default=None, help="rejects file (default: <export name>.rejects.jsonl beside the manifest)"
    )
    parser.set_defaults(func=run)


@reports_errors("ingest")
def run(args) -> int:
    from keras_lossal import labelstudio, manifest

    if args.classes is not None:
        class_names = [name.strip() for name in args.classes.split(",")]
    else:
        class_names = labelstudio.read_label_config(args.label_config)
    known_items = None
    if args.known_items:
        known_items = {}
        for path in args.known_items:
            known_items.update(manifest.read_known_items(path, path_root=args.path_root))
    elif args.path_root is not None:
        raise CommandError("--path-root only applies to --known-items")
    summary = labelstudio.ingest(
        args.export,
        args.manifest,
        class_names,
        known_items=known_items,
        rejects_path=args.rejects,
        export_type=args.export_type,
        id_field=args.id_field,
        document_root=args.document_root,
    )
    print(summary.describe())
    return 0
