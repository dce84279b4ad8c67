"""`lossal labelstudio push` and `pull`: a triage output into a Label Studio project, its annotations into the manifest.

`push` and `pull` are `keras_lossal.labeling.labelstudio_api`'s; pull ingests the export
with `lossal ingest`'s rules, options and exit statuses (`ingest_export`). This
module only reads the command line. `add_subcommands` adds both to the
`lossal labelstudio` group.
"""

from __future__ import annotations

import argparse
import os

from keras_lossal.commands import ingest
from keras_lossal.commands._errors import CommandError, reports_errors

CONNECTION = """connection:
  --url defaults to $LABEL_STUDIO_URL, else http://localhost:8080; --token to $LABEL_STUDIO_API_KEY (better than
  --token, which other users of the machine can see). The token is a personal access token (Account & Settings >
  Personal Access Token; the default of Label Studio 1.23) or a legacy token (accepted only where the organisation
  enables legacy tokens: Organization > API Tokens Settings, or `label-studio start --enable-legacy-api-token` on
  the first start, which creates the organisation).
"""

PUSH_EPILOG = f"""{CONNECTION}
example:
  export LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=<personal access token>
  lossal labelstudio push rounds/1/triage --project fashion --document-root /srv/data

exit status: 0 pushed (or nothing new to push); 2 bad input, or Label Studio refused or could not be reached
"""

PULL_EPILOG = f"""{CONNECTION}
example:
  lossal labelstudio pull --project fashion -o labeled.jsonl --known-items rounds/1/triage

{ingest.EPILOG}  (2 also when Label Studio refused the token or could not be reached: nothing written)
"""


def add_subcommands(subparsers) -> None:
    """Adds `push` and `pull` to the subparsers of the `lossal labelstudio` group."""
    push = subparsers.add_parser(
        "push",
        help="create or find a project, connect its local-files storage, import triage's tasks (idempotent)",
        description="Pushes a `lossal triage` output into the Label Studio project titled --project: creates it with "
        "the triage's label_config.xml (or finds it, and checks it labels the same classes), connects a "
        "local-files storage covering the folder of the queue's images below the document root (or finds one), and "
        "imports label_studio_tasks.json with the model's predictions and scores. A task whose data.sha256 or image "
        "URL the project holds already is not imported again: pushing twice adds nothing.",
        epilog=PUSH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("triage_dir", help="the output directory of `lossal triage`")
    push.add_argument("--project", required=True, help="the project's title (created if no project has it)")
    _add_connection_arguments(push)
    push.add_argument(
        "--document-root",
        default=None,
        help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, as the server sees it (default: "
        "$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); the storage's path is a folder below it",
    )
    push.set_defaults(func=run_push, tensorflow=False)

    pull = subparsers.add_parser(
        "pull",
        help="export a project's annotations and add them to the labeled-set manifest (lossal ingest's rules)",
        description="Exports the annotations of the Label Studio project titled --project (JSON export, kept in "
        "--export) and ingests them into the manifest exactly as `lossal ingest` does: majority of annotators, "
        "ties, labels outside the class list, unknown ids, conflicts, missing or changed files rejected with the "
        "reason; pulling twice adds nothing. The classes are the project's label config's unless given. "
        "--document-root defaults to $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT here.",
        epilog=PULL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("--project", required=True, help="the project's title")
    pull.add_argument(
        "--output", "-o", "--manifest", dest="manifest", required=True,
        help="the labeled-set manifest (JSONL or .csv; created if missing)",
    )  # fmt: skip
    pull.add_argument(
        "--export",
        default=None,
        help="where to keep the export (default: labelstudio_project_<id>.json beside the manifest, rewritten by "
        "each pull; its name is the manifest records' `source` and names the rejects file)",
    )
    classes = pull.add_mutually_exclusive_group()
    classes.add_argument("--classes", help="the class names, comma-separated (default: the project's label config)")
    classes.add_argument("--label-config", help="a label_config.xml whose Choice values are the classes")
    _add_connection_arguments(pull)
    ingest.add_rule_arguments(pull)
    pull.set_defaults(func=run_pull, tensorflow=False)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="the Label Studio server (default: $LABEL_STUDIO_URL, else :8080)")
    parser.add_argument("--token", default=None, help="personal access token or legacy token ($LABEL_STUDIO_API_KEY)")


@reports_errors("labelstudio push")
def run_push(args: argparse.Namespace) -> int:
    from keras_lossal.labeling import labelstudio_api

    document_root = args.document_root or os.environ.get(labelstudio_api.DOCUMENT_ROOT_VARIABLE)
    try:
        client = labelstudio_api.LabelStudioClient(args.url, args.token)
        summary = labelstudio_api.push(client, args.triage_dir, args.project, document_root)
    except labelstudio_api.LabelStudioError as error:
        raise CommandError(str(error)) from None
    print(summary.describe())
    return 0


@reports_errors("labelstudio pull")
def run_pull(args: argparse.Namespace) -> int:
    from keras_lossal.labeling import labelstudio, labelstudio_api

    if args.document_root is None:
        args.document_root = os.environ.get(labelstudio_api.DOCUMENT_ROOT_VARIABLE)
    try:
        client = labelstudio_api.LabelStudioClient(args.url, args.token)
        project, export = labelstudio_api.pull(client, args.project, args.export, args.manifest)
    except labelstudio_api.LabelStudioError as error:
        raise CommandError(str(error)) from None
    print(f"exported project {project.title!r} (id {project.id}) to {export}")
    if args.classes is not None:
        class_names = [name.strip() for name in args.classes.split(",")]
    elif args.label_config is not None:
        class_names = labelstudio.read_label_config(args.label_config)
    else:
        class_names = labelstudio.label_config_classes(project.label_config, source=f"of project {project.title!r}")
    return ingest.ingest_export(args, export, class_names, "JSON")
