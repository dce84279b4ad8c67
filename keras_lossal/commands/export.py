"""`lossal export`: a trained `LossLearningModel` (`.keras`) -> the next version under a TF Serving base path."""

from __future__ import annotations

import argparse
import os

from keras_lossal.commands._errors import CommandError, reports_errors
from keras_lossal.commands.triage import class_names
from keras_lossal.contracts import CLASSES_FILE, PREPROCESSING_FILE, TRAINING_FILE

__all__ = ["add_parser", "run"]

# What `lossal train` and `make demo` write beside the model. `lossal train` writes TRAINING_FILE first with
# `finished: false`, and sets `finished` once the other two exist.

EPILOG = """examples:
  lossal export demo_out/learning_loss_model.keras --base-path models/lossal --labels labels.txt
  lossal export model.keras --base-path gs://bucket/models/lossal --model-name lossal --version 7

Prints the version directory written. An existing version is never overwritten; TF Serving loads the
new version when it polls the base path.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a trained LossLearningModel (.keras) as the next TF Serving version",
        description="Export a trained LossLearningModel saved as .keras to <base path>/<next version>/ with the "
        "serving signatures, lossal.json and warmup requests (keras_lossal.export.export_for_serving).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="the .keras file of a trained LossLearningModel")
    parser.add_argument("--base-path", required=True, help="TF Serving base path (local or gs://, s3://, ...)")
    parser.add_argument(
        "--preprocessing",
        help=f"ImagePreprocessing JSON (default: {PREPROCESSING_FILE} beside the model; without one only "
        "serving_default, the model-input signature, is exported)",
    )
    parser.add_argument(
        "--labels",
        help=f"class names: a comma-separated list, a text file (one per line) or a JSON list (default: "
        f"{CLASSES_FILE} beside the model, as lossal train writes it; else 0, 1, ...)",
    )
    parser.add_argument("--model-name", default="lossal", help="the serving model name (warmup requests name it)")
    parser.add_argument("--version", type=int, help="the version to write (default: the next free one)")
    parser.add_argument("--task", default="auto", choices=("auto", "classification", "other"), help="default: auto")
    parser.add_argument("--no-warmup", action="store_true", help="do not write warmup requests")
    parser.set_defaults(func=run)
    return parser


@reports_errors("export")
def run(args: argparse.Namespace) -> int:
    model_path = _checked_model_path(args.model)
    _check_training_finished(model_path, args)
    preprocessing = _preprocessing(args.preprocessing, model_path)
    if args.version is not None and args.version < 0:
        raise CommandError(f"expected --version >= 0. Received: {args.version}")
    model = _load_model(model_path)
    training = _training_facts(model_path)
    from keras_lossal.export import export_for_serving

    try:
        version_dir = export_for_serving(
            model,
            args.base_path,
            version=args.version,
            preprocessing=preprocessing,
            labels=_class_names(args.labels, model_path),
            task=args.task,
            warmup=not args.no_warmup,
            model_name=args.model_name,
            training=training,
        )
    except FileExistsError as error:
        raise CommandError(f"{error} Pass another --version, or none for the next free one.") from None
    except TypeError as error:  # not a LossLearningModel
        raise CommandError(f"{model_path!r}: {error}") from None
    print(version_dir)
    return 0


def _checked_model_path(path: str) -> str:
    if not path.endswith(".keras"):
        raise CommandError(f"expected a .keras file (model.save('model.keras')). Received: {path!r}")
    if not os.path.isfile(path):
        raise CommandError(f"no such model file: {path!r}")
    return path


def _check_training_finished(model_path: str, args: argparse.Namespace) -> None:
    """Refuses a `lossal train` directory (it holds `training.json`) whose training did not finish.

    A run killed after `model.keras` was written but before `preprocessing.json` and `classes.json` would
    otherwise export with default labels and without the image signatures.
    """
    directory = os.path.dirname(os.path.abspath(model_path))
    record_path = os.path.join(directory, TRAINING_FILE)
    if not os.path.isfile(record_path):
        return  # not written by lossal train (make demo, model.save): the flags say what to export
    import json

    try:
        with open(record_path, encoding="utf-8") as handle:
            finished = json.load(handle).get("finished") is True
    except (ValueError, AttributeError):  # not JSON, or not an object
        finished = False
    absent = [name for name in (PREPROCESSING_FILE, CLASSES_FILE) if not os.path.isfile(os.path.join(directory, name))]
    if not finished:
        not_written = f"; {', '.join(absent)} not written" if absent else ""
        raise CommandError(
            f"{directory!r} is an unfinished lossal train directory ({TRAINING_FILE} does not say finished"
            f"{not_written}); re-run the same lossal train command to finish it, then export."
        )
    flags = {PREPROCESSING_FILE: args.preprocessing, CLASSES_FILE: args.labels}
    missing = [name for name in absent if flags[name] is None]
    if missing:
        raise CommandError(
            f"{', '.join(missing)} missing from the lossal train directory {directory!r}; restore it, or pass "
            "--preprocessing / --labels."
        )


def _training_facts(model_path: str) -> dict | None:
    """`num_items` and `data_sha256` of the `lossal train` run beside the model (its `training.json`), else `None`."""
    import json

    record_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), TRAINING_FILE)
    if not os.path.isfile(record_path):
        return None
    with open(record_path, encoding="utf-8") as handle:
        settings = json.load(handle).get("settings")
    if not isinstance(settings, dict):
        return None
    facts = {key: settings[key] for key in ("num_items", "data_sha256") if key in settings}
    return facts or None


def _class_names(value: str | None, model_path: str) -> list[str] | None:
    """`--labels` as `lossal triage` reads it; without one, `classes.json` beside the model if present."""
    beside = os.path.join(os.path.dirname(os.path.abspath(model_path)), CLASSES_FILE)
    if value is None and os.path.isfile(beside):
        value = beside
    return class_names(value)


def _preprocessing(path: str | None, model_path: str):
    """The `ImagePreprocessing` from `path`, or from `preprocessing.json` beside the model; `None` without one."""
    if path is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(model_path)), PREPROCESSING_FILE)
        if not os.path.isfile(beside):
            return None
        path = beside
    import json

    from keras_lossal.preprocessing import ImagePreprocessing

    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        if isinstance(config, dict) and config.get("kind") == "identity":
            return None  # non-image inputs: only serving_default (the model input) is exported
        return ImagePreprocessing.from_config(config)
    except (ValueError, TypeError) as error:  # not JSON, or not an ImagePreprocessing config
        raise CommandError(f"expected an ImagePreprocessing JSON in {path!r}: {error}") from None


def _load_model(path: str):
    import keras

    import keras_lossal.model  # noqa: F401 - registers LossLearningModel and its head for deserialisation

    try:
        return keras.saving.load_model(path)
    except (ValueError, TypeError, OSError) as error:
        raise CommandError(f"could not load {path!r} as a Keras model: {' '.join(str(error).split())[:300]}") from None
