"""`lossal train`: train a model with a loss-prediction head on your labeled data (`keras_lossal.training.train`)."""

from __future__ import annotations

import argparse

from keras_lossal.commands._errors import CommandError, check_finite_positive, report_rejects, reports_errors
from keras_lossal.contracts import BACKBONE_NAMES, OPTIMIZER_NAMES, RECIPE_NAMES, ModelSpec

# The built-in backbones `--backbone` names (kept under this name for importers).
BUILTIN_BACKBONES = BACKBONE_NAMES


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, _, width = text.lower().partition("x")
        size = (int(height), int(width or height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 32x32 (or one number); got {text!r}") from None
    if min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes; got {text!r}")
    return size


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with a loss-prediction head on your labeled data",
        description=(
            "Trains a LossLearningModel (backbone + loss-prediction head, the recommended recipe) on labeled "
            "data: a labeled-set manifest (.jsonl/.csv of id, path, label), a folder of class subfolders, or an "
            ".npz with x, y (and class_names). Writes OUT/model.keras, OUT/preprocessing.json, OUT/classes.json "
            "and OUT/training.json, then `lossal export`. A checkpoint after every epoch: running the same "
            "command again continues a killed run after its last finished epoch. Images that cannot be read "
            "(not a regular file, truncated, not an image, over the size limits) are skipped and listed in "
            "OUT/rejects.jsonl, or refused with --strict."
        ),
    )
    parser.add_argument("--data", required=True, help="manifest (.jsonl/.csv), folder of class subfolders, or .npz")
    parser.add_argument("--out", required=True, help="output directory (new or empty, or a run to resume)")
    data = parser.add_argument_group("data")
    data.add_argument("--validation-fraction", type=float, default=0.1, help="share of every class held out (0: none)")
    data.add_argument(
        "--image-size", type=_image_size, default=None, help="resize images to HxW (default: first image's)"
    )
    data.add_argument("--channels", type=int, choices=(1, 3), default=None, help="default: the first image's")
    data.add_argument("--augment", action="store_true", help="the paper's random flip + 4-pixel pad-crop (images)")
    data.add_argument(
        "--strict", action="store_true", help="refuse the data if any image cannot be read (default: skip it)"
    )
    data.add_argument(
        "--raw-inputs",
        action="store_true",
        help="an .npz's x used unchanged, no image preprocessing (signals (N, T, C); (N, F) features are by default)",
    )
    model = parser.add_argument_group("model and training")
    model.add_argument(
        "--backbone",
        default="resnet18_cifar",
        help=(
            f"{' or '.join(BUILTIN_BACKBONES)} (with --width), your .keras backbone (its weights are the "
            "initialisation; a lossal train model.keras gives its backbone), or a factory package.module:function "
            "called with input_shape= and num_classes="
        ),
    )
    model.add_argument("--width", type=int, default=16, help="first-stage channels of the built-in backbones")
    model.add_argument("--epochs", type=int, default=10)
    model.add_argument("--batch-size", type=int, default=64)
    model.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="sgd")
    model.add_argument("--lr", type=float, default=0.05, help="learning rate")
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--weight-decay", type=float, default=5e-4)
    model.add_argument("--recipe", choices=RECIPE_NAMES, default="recommended", help="the head's recipe")
    model.add_argument("--seed", type=int, default=0, help="seeds the split, the initialisation and the shuffles")
    parser.add_argument(
        "--restart", action="store_true", help="discard an earlier training in --out instead of resuming it"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary lines are printed)")
    parser.set_defaults(func=run)


@reports_errors("train")
def run(args) -> int:
    from keras_lossal import training
    from keras_lossal.loop_state import ResumeRefusedError

    if args.epochs < 1 or args.batch_size < 1 or args.width < 1:
        raise CommandError(
            f"expected --epochs, --batch-size and --width >= 1; got {args.epochs}, {args.batch_size}, {args.width}"
        )
    check_finite_positive("--lr", args.lr)
    spec = ModelSpec(
        backbone=args.backbone,
        width=args.width,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        recipe=args.recipe,
    )
    try:
        result = training.train(
            args.data,
            args.out,
            spec,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            augment=args.augment,
            image_size=args.image_size,
            channels=args.channels,
            verbose=0 if args.quiet else 1,
            preprocessing="identity" if args.raw_inputs else None,
            strict=args.strict,
            restart=args.restart,
        )
    except ResumeRefusedError as error:
        raise CommandError(
            str(error.advising("Train into a new --out, or re-run with --restart to discard the earlier training."))
        ) from None
    # --quiet hides the progress bars only: what was trained and written is always said.
    report_rejects(result.rejects, args.out)
    shown = ", ".join(f"{key} {value:.4f}" for key, value in sorted(result.validation.items()))
    print(f"validation: {shown or 'none (--validation-fraction 0)'}")
    written = (training.MODEL_FILE, training.PREPROCESSING_FILE, training.CLASSES_FILE, training.TRAINING_FILE)
    print(f"wrote {', '.join(result.path(name) for name in written)}")
    return 0
