"""`lossal manifest`: start a labeled-set manifest from what a team already has.

`lossal manifest from-folders ROOT -o labeled.jsonl` writes one record per image
of a folder of class subfolders (`ROOT/<class>/.../<image>`), with the sha256 of
its bytes, so `lossal triage --exclude-labeled labeled.jsonl` recognises those
images in a pool under any name. The records come from
`keras_lossal.labeling.manifest.from_folders`; this module only reads the command line.
"""

from __future__ import annotations

import argparse
import collections
import os

from keras_lossal.commands._errors import CommandError, reports_errors

EPILOG = """examples:
  lossal manifest from-folders labeled_images/ -o labeled.jsonl
  lossal train --data labeled.jsonl --out rounds/1/train
  lossal triage pool/ --model models/lossal --output rounds/1/triage --exclude-labeled labeled.jsonl
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="start a labeled-set manifest (from a folder of class subfolders)",
        description="Labeled-set manifests: the single source of truth of what is labeled (`lossal ingest` adds "
        "to one, `lossal train` reads one, `lossal triage --exclude-labeled` skips what it holds).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    folders = actions.add_parser(
        "from-folders",
        help="a manifest of a folder of class subfolders, with each image's sha256",
        description="Writes one record per image below ROOT/<class>/ (PNG, JPEG, BMP; the layout of "
        "keras.utils.image_dataset_from_directory): id (the path below ROOT), path (relative to the "
        "manifest's folder when inside it, else absolute), label (the subfolder) and sha256 (of the bytes).",
    )
    folders.add_argument("root", help="the folder of class subfolders")
    folders.add_argument("--output", "-o", required=True, help="the manifest to create (.jsonl, or .csv)")
    folders.set_defaults(func=from_folders, tensorflow=False)


@reports_errors("manifest")
def from_folders(args: argparse.Namespace) -> int:
    from keras_lossal.labeling import manifest

    if os.path.exists(args.output):
        raise CommandError(
            f"{args.output!r} exists; from-folders starts a manifest and never rewrites one (`lossal ingest` adds "
            "to it). Choose a new file, or remove this one first."
        )
    records = manifest.from_folders(args.root, args.output)
    if not records:
        raise CommandError(f"no images (.png, .jpg, .jpeg, .bmp) in the class subfolders of {args.root!r}")
    manifest.write_manifest(args.output, records)
    per_class = collections.Counter(record["label"] for record in records)
    classes = ", ".join(f"{label}: {count}" for label, count in sorted(per_class.items()))
    print(f"wrote {len(records)} labeled image(s) in {len(per_class)} class(es) ({classes}) to {args.output}")
    return 0
