"""`lossal labelstudio`: working with a Label Studio server: `push` and `pull` rounds, `backend` the ML backend.

A group of subcommands: each adds its parser in `_SUBCOMMANDS` (`push` and
`pull` from `labelstudio_sync`, `backend` here). Nothing heavy is imported until a
subcommand runs, so `lossal --help` stays free of TensorFlow and the web framework.
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_lossal.commands._errors import CommandError, reports_errors
from keras_lossal.labelstudio_backend import config as backend_config

__all__ = ["add_parser"]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

BACKEND_EPILOG = """examples:
  lossal labelstudio backend --model models/lossal --document-root /srv/data
  lossal labelstudio backend --model models/lossal --document-root /srv/data \\
      --manifest labeled.jsonl --state-dir backend_state --retrain-every 50 \\
      --train-args "--backbone small_cnn --width 16 --epochs 10 --image-size 32x32"
  LOSSAL_BACKEND_SECRET=s3cret lossal labelstudio backend --server grpc://localhost:8500 --labels classes.json \\
      --base-path /srv/models/lossal --secret-env LOSSAL_BACKEND_SECRET ...

Connect it in Label Studio (Settings -> Model -> Connect Model, or POST /api/ml {"project": ID, "url":
"http://127.0.0.1:9090"}); Label Studio must be started with ML_BLOCK_LOCAL_IP=false to reach a backend on
a local address, and with SSRF_PROTECTION_ENABLED=false (or USE_DEFAULT_BANNED_SUBNETS=false) for the
webhook that carries annotations to it. See docs/labeling.md, "Live active learning: the ML backend".
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "labelstudio",
        help="work with a Label Studio server: push triage's tasks, pull labels, or run the ML backend",
        description="Label Studio integration. Subcommands: push (a triage's tasks into a project), pull (its "
        "labels into the labeled-set manifest, with lossal ingest's rules), backend (an ML backend that serves learning-loss "
        "predictions, merges annotations into the labeled-set manifest and retrains itself).",
    )
    commands = parser.add_subparsers(dest="labelstudio_command", metavar="SUBCOMMAND")
    for add in _SUBCOMMANDS:
        add(commands)
    parser.set_defaults(func=lambda args: _group_help(parser))
    return parser


def _group_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_backend_parser(commands) -> None:
    parser = commands.add_parser(
        "backend",
        help="serve learning-loss predictions to Label Studio, learn from its annotations, retrain",
        description="A Label Studio ML backend: /predict scores each task's image with the exported model "
        "(score = predicted loss, the class as the project's choice, model_version = the served version); "
        "/webhook merges annotations into --manifest by lossal ingest's rules; with --retrain-every N, N new "
        "labels start lossal train + lossal export of the next version in the background, served once published.",
        epilog=BACKEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_arguments(parser)
    _add_label_arguments(parser)
    _add_server_arguments(parser)
    parser.set_defaults(func=run_backend)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="TF Serving base path to score with in-process (retrained versions go here)")
    source.add_argument("--server", help="score through TF Serving: grpc://host:8500 or http://host:8501")
    group.add_argument("--model-name", default="lossal", help="the model's name on the server (default: lossal)")
    group.add_argument("--base-path", help="with --server: the server's base path, where retrained versions go")
    group.add_argument("--labels", help="with --server: class names, a comma-separated list, text or .json file")


def _add_label_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images, labels and retraining")
    group.add_argument(
        "--document-root",
        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local-files URLs and plain paths resolve there "
        "and must stay inside it (default for plain paths: the current directory)",
    )
    group.add_argument("--allow-paths-outside-root", action="store_true", help="read plain paths outside the root")
    group.add_argument(
        "--allow-url-schemes",
        default="",
        metavar="SCHEMES",
        help="comma-separated URL schemes read as they are, e.g. 'https' (downloaded, no redirects) or 'gs,s3'; "
        "default: none, a task with such a URL gets an error",
    )
    group.add_argument("--id-field", default="item_id", help="task data field holding the item id (default: item_id)")
    group.add_argument("--project", type=int, help="serve only this Label Studio project id (others: 403 / ignored)")
    group.add_argument("--manifest", help="the labeled-set manifest annotations are merged into (default: none)")
    group.add_argument(
        "--state-dir", help="the backend's files: annotation log, rejects, rounds (needed with --manifest)"
    )
    group.add_argument(
        "--retrain-every", type=int, metavar="N", help="train and export a new version after N new labels"
    )
    group.add_argument(
        "--train-args",
        default="",
        metavar="ARGS",
        help='extra lossal train arguments of each round, one quoted string: "--backbone small_cnn --epochs 5"',
    )


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server and limits")
    group.add_argument("--host", default=backend_config.DEFAULT_HOST, help="address to listen on (default: 127.0.0.1)")
    group.add_argument("--port", type=int, default=backend_config.DEFAULT_PORT, help="default: 9090")
    group.add_argument(
        "--secret-env",
        metavar="VAR",
        help="require the shared secret in environment variable VAR on every request: as the HTTP basic auth "
        f"password (Label Studio's Basic Auth) or the {backend_config.SECRET_HEADER} header",
    )
    limits = (
        ("--batch-size", int, backend_config.DEFAULT_BATCH_SIZE, "tasks per model call"),
        ("--max-tasks", int, backend_config.DEFAULT_MAX_TASKS, "tasks per /predict request (more: 413)"),
        ("--max-concurrent-predictions", int, backend_config.DEFAULT_MAX_CONCURRENT_PREDICTIONS,
         "/predict requests scoring at once; others wait"),
        ("--predict-timeout", float, backend_config.DEFAULT_PREDICT_TIMEOUT,
         "seconds a /predict request may score; tasks not reached get an error"),
        ("--max-request-bytes", int, backend_config.DEFAULT_MAX_REQUEST_BYTES, "largest request body (more: 413)"),
    )  # fmt: skip
    for flag, kind, default, text in limits:
        group.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")


@reports_errors("labelstudio backend")
def run_backend(args: argparse.Namespace) -> int:
    from keras_lossal.labelstudio_backend import serve

    config = backend_config.BackendConfig(
        model_dir=args.model,
        server=args.server,
        model_name=args.model_name,
        base_path=args.base_path,
        labels=_labels(args),
        manifest=args.manifest,
        state_dir=args.state_dir,
        document_root=args.document_root,
        allow_paths_outside_root=args.allow_paths_outside_root,
        url_schemes=backend_config.parse_url_schemes(args.allow_url_schemes),
        id_field=args.id_field,
        project=args.project,
        retrain_every=args.retrain_every,
        train_args=_train_args(args.train_args),
        secret=_secret(args.secret_env),
        host=args.host,
        port=args.port,
        batch_size=args.batch_size,
        max_tasks=args.max_tasks,
        max_concurrent_predictions=args.max_concurrent_predictions,
        predict_timeout=args.predict_timeout,
        max_request_bytes=args.max_request_bytes,
    )
    if config.secret is None and config.host not in LOOPBACK_HOSTS:
        print(
            f"lossal labelstudio backend: warning: listening on {config.host} without a secret: anyone who reaches "
            "this port can add labels to the manifest (--secret-env VAR)",
            file=sys.stderr,
        )
    serve(config, ready=lambda backend: print(_banner(config, backend), flush=True))
    return 0


def _labels(args: argparse.Namespace) -> tuple[str, ...] | None:
    from keras_lossal.commands.triage import class_names

    if args.labels is not None and args.server is None:
        raise CommandError("--labels is for --server (an export names its classes in lossal.json)")
    names = class_names(args.labels)
    return tuple(names) if names is not None else None


def _train_args(text: str) -> tuple[str, ...]:
    """`--train-args` split like a shell line and checked against `lossal train`'s own parser."""
    from keras_lossal.commands import train

    arguments = backend_config.split_train_args(text)
    checker = argparse.ArgumentParser(prog="lossal", add_help=False)
    train.add_parser(checker.add_subparsers())
    try:
        checker.parse_args(["train", "--data", "-", "--out", "-", *arguments])
    except SystemExit:
        raise CommandError(
            f"--train-args: not valid lossal train arguments: {text!r} (see lossal train --help)"
        ) from None
    return arguments


def _secret(variable: str | None) -> str | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        raise CommandError(f"--secret-env {variable}: the environment variable is not set or empty")
    return value


def _banner(config: backend_config.BackendConfig, backend) -> str:
    where = f"http://{config.host}:{config.port}"
    served = backend.served
    lines = [f"lossal labelstudio backend: serving {served.version_name()} ({served.current().description}) at {where}"]
    if config.manifest:
        lines.append(f"  labels -> {config.manifest} (log and rounds in {config.state_dir})")
    if config.retrain_every:
        lines.append(f"  retraining every {config.retrain_every} new labels into {config.export_base_path}")
    return "\n".join(lines)


def _add_sync_parsers(commands) -> None:
    from keras_lossal.commands import labelstudio_sync

    labelstudio_sync.add_subcommands(commands)


_SUBCOMMANDS = (_add_sync_parsers, _add_backend_parser)
