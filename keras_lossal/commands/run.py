"""`lossal run`: the active-learning protocol for several strategies and seeds."""

from __future__ import annotations

import argparse
import time

from keras_lossal.commands._errors import CommandError, check_finite_positive, report_rejects, reports_errors
from keras_lossal.contracts import OPTIMIZER_NAMES, RECIPE_NAMES, RECOMMENDED_STRATEGY


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2; got {text!r}") from error


def _name_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated strategy names; got {text!r}")
    return names


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run active learning (strategies x seeds) and record learning curves",
        description=(
            "Runs the paper's protocol: train, evaluate on the test set, label the top-K of a random "
            "unlabeled subset, repeat. Results go to OUT/<strategy>/seed_<n>/state.json; running the "
            "same command again resumes unfinished runs. Then: `lossal report OUT`, `lossal plot OUT`. Your own "
            "images that cannot be read are skipped and listed in OUT/rejects.jsonl, or refused with --strict."
        ),
    )
    _add_data_arguments(parser.add_argument_group("data"))
    _add_protocol_arguments(parser.add_argument_group("protocol"))
    _add_model_arguments(parser.add_argument_group("model and training"))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the recorded runs of these strategies and seeds in --out instead of resuming them",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-cycle lines or progress bars")
    parser.add_argument("--progress", action="store_true", help="progress bars for every fit and every pool scoring")
    parser.set_defaults(func=run)


def _add_data_arguments(data) -> None:
    data.add_argument(
        "--dataset",
        default="fashion_mnist",
        help=(
            "fashion_mnist (local IDX files), a TFDS name (cifar10, tfds:NAME), or your own labeled images: a "
            "folder of class subfolders or a labeled-set manifest (.jsonl/.csv of id, path, label)"
        ),
    )
    data.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="your own images: share of every class held out as the test set (one seeded split for all seeds)",
    )
    data.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory, or the TFDS data directory")
    data.add_argument("--pool-size", type=int, default=None, help="use only the first N training images as the pool")
    data.add_argument("--test-size", type=int, default=None, help="evaluate on the first N test images only")
    data.add_argument("--augment", action="store_true", help="the paper's random flip + 4-pixel pad-crop")
    data.add_argument(
        "--strict", action="store_true", help="your own images: refuse them if any cannot be read (default: skip it)"
    )


def _add_protocol_arguments(protocol) -> None:
    protocol.add_argument(
        "--strategies",
        type=_name_list,
        default=[RECOMMENDED_STRATEGY, "random"],
        help=(
            f"comma-separated arms strategy[@recipe] (default: the recommended strategy, {RECOMMENDED_STRATEGY}: "
            "typiclust below 10 labels per class, then badge; against random), e.g. "
            "budget_switch,learning_loss_clusters,learning_loss,random,coreset; "
            "learning_loss@paper trains the head with the paper's recipe, random@recommended is the control "
            "that trains the head but picks at random; options follow the name, "
            "e.g. budget_switch:high=margin:labels_per_class=15"
        ),
    )
    protocol.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    protocol.add_argument(
        "--cycles", type=int, default=10, help="train/evaluate rounds (labels: initial + (cycles-1) x K)"
    )
    protocol.add_argument("--initial-size", type=int, default=1000)
    protocol.add_argument("--query-size", type=int, default=1000, help="K, labels added per cycle")
    protocol.add_argument(
        "--subset-size", type=int, default=10000, help="M, random unlabeled items scored per cycle (0 = all)"
    )
    protocol.add_argument(
        "--training-seed",
        type=int,
        default=None,
        help=(
            "seed of the training only (model initialisation and shuffle) for every seed; the labeled sets still "
            "come from --seeds (default: each seed trains from itself)"
        ),
    )
    protocol.add_argument(
        "--cold-start",
        action="store_true",
        help="re-initialise the model every cycle (default: warm start, as the reference code)",
    )
    protocol.add_argument(
        "--head-for-all",
        action="store_true",
        help="train the loss-prediction head for every strategy, not only the learning_loss ones",
    )


def _add_model_arguments(model) -> None:
    model.add_argument(
        "--backbone",
        default="resnet18_cifar",
        help=(
            "resnet18_cifar (the paper), small_cnn (quick CPU runs), your own backbone as a .keras file (its "
            "weights are every run's initialisation) or a factory package.module:function called with "
            "input_shape= and num_classes= (a fresh model per run and cycle)"
        ),
    )
    model.add_argument("--width", type=int, default=16, help="first-stage channels of resnet18_cifar (paper: 64)")
    model.add_argument("--epochs", type=int, default=10, help="epochs per cycle (paper: 200)")
    model.add_argument("--batch-size", type=int, default=128)
    model.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="sgd")
    model.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    model.add_argument("--lr-schedule", default="", help="epoch:rate steps within each cycle, e.g. 160:0.01")
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--weight-decay", type=float, default=5e-4)
    model.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        default="recommended",
        help="the loss-prediction head's training recipe (an arm's @recipe overrides it)",
    )
    model.add_argument("--loss-weight", type=float, default=None, help="lambda (default: the recipe's, 1)")
    model.add_argument("--margin", type=float, default=None, help="xi (default: the recipe's, 1)")
    model.add_argument("--detach-after-epoch", type=int, default=None, help="paper: 120 (of 200)")


@reports_errors("run")
def run(args) -> int:
    from keras_lossal import experiment, results
    from keras_lossal.loop import LoopConfig
    from keras_lossal.loop_state import ResumeRefusedError

    check_finite_positive("--lr", args.lr)
    spec, lr_schedule = (
        _model_spec(args),
        experiment.parse_lr_schedule(args.lr_schedule),
    )  # refused before the data is read
    dataset = _dataset(args)
    verbose = 0 if args.quiet else (2 if args.progress else 1)
    if verbose:
        print(dataset.summary(), flush=True)
    start = time.perf_counter()
    try:
        experiment.run_experiment(
            dataset,
            args.strategies,
            args.seeds,
            args.out,
            spec,
            LoopConfig(
                initial_size=args.initial_size,
                query_size=args.query_size,
                subset_size=args.subset_size or None,
                cycles=args.cycles,
                epochs=args.epochs,
                batch_size=args.batch_size,
                augment=args.augment,
                warm_start=not args.cold_start,
                verbose=verbose,
                training_seed=args.training_seed,
            ),
            lr_schedule=lr_schedule,
            head_for_all=args.head_for_all,
            restart=args.restart,
        )
    except ResumeRefusedError as error:  # the directory is untouched
        advice = "Re-run with --restart to discard the recorded runs of these arms and seeds, or use another --out."
        raise CommandError(str(error.advising(advice))) from None
    report_rejects(dataset.rejects, args.out)  # after the runs: a refused command leaves --out as it was
    summary = results.summarise(results.load_experiment(args.out))
    results.write_report(summary, args.out)
    if verbose:
        print(f"done in {time.perf_counter() - start:.0f} s; report in {args.out}/report.{{json,csv,md}}")
        print(results.format_table(summary))
    return 0


def _dataset(args):
    """The `ArrayDataset` of --dataset, cut to --pool-size and --test-size."""
    from keras_lossal import data

    # A fixed split seed: runs of other seeds, in other invocations, share one test set.
    dataset = data.load(
        args.dataset, data_dir=args.data_dir, test_fraction=args.test_fraction, seed=0, strict=args.strict
    )
    if args.pool_size:
        dataset.x_train, dataset.y_train = dataset.x_train[: args.pool_size], dataset.y_train[: args.pool_size]
    if args.test_size:
        dataset.x_test, dataset.y_test = dataset.x_test[: args.test_size], dataset.y_test[: args.test_size]
    return dataset


def _model_spec(args):
    from keras_lossal import experiment

    return experiment.ModelSpec(
        backbone=args.backbone,
        width=args.width,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        recipe=args.recipe,
        loss_weight=args.loss_weight,
        margin=args.margin,
        detach_after_epoch=args.detach_after_epoch,
    )
