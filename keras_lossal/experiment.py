"""Experiments: one `ActiveLearningLoop` per (strategy, seed), laid out on disk for `report` and `plot`.

Layout: `<out_dir>/<strategy>/seed_<seed>/state.json` (plus warm-start weights),
and `<out_dir>/experiment.json` with the settings. Re-running the same command
resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_lossal import acquisition
from keras_lossal.acquisition.models import mc_dropout_model
from keras_lossal.backbones import BACKBONES, small_cnn
from keras_lossal.contracts import EXPERIMENT_FILE, STATE_FILE, ModelSpec, check_finite_non_negative
from keras_lossal.data import ArrayDataset
from keras_lossal.loop import ActiveLearningLoop, LoopConfig, LoopResult
from keras_lossal.loop_state import ResumeRefusedError, RunDirectory, write_json_atomic
from keras_lossal.model import RECIPES
from keras_lossal.model_factory import (  # public here as before the model factory had a module of its own
    FACTORY_SEPARATOR,
    KERAS_FILE_SUFFIX,
    OPTIMIZERS,
    backbone_builder,
    backbone_fingerprint,
    make_model_factory,
)

__all__ = [
    "FACTORY_SEPARATOR",
    "KERAS_FILE_SUFFIX",
    "OPTIMIZERS",
    "ModelSpec",
    "backbone_builder",
    "backbone_fingerprint",
    "make_model_factory",
    "arm_strategy",
    "parse_arm",
    "parse_strategy",
    "strategy_parts",
    "small_cnn",
    "parse_lr_schedule",
    "lr_schedule_callback",
    "run_experiment",
]


# Strategies whose scores need the loss-prediction head; the others train the bare backbone, as in the paper.
HEAD_STRATEGIES = ("learning_loss", "learning_loss_clusters", "learning_loss_kcenter", "learning_loss_badge")
ARM_SEPARATOR = "@"
OPTION_SEPARATOR = ":"


def parse_strategy(text: str) -> tuple[str, dict]:
    """Splits a strategy `"name[:option=value]..."` into the name and its options for `acquisition.get`.

    Values that read as integers or floats become numbers, `true`, `false`
    and `none` (any case) become `True`, `False` and `None`; the rest stay
    strings (strategy names, for example). An arm's options are part of its
    name, so each variant runs in a directory of its own.

    Example:

    >>> parse_strategy("budget_switch:high=margin:labels_per_class=15"), parse_strategy("entropy")
    (('budget_switch', {'high': 'margin', 'labels_per_class': 15}), ('entropy', {}))
    """
    name, *pairs = text.split(OPTION_SEPARATOR)
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not key or not equals or not value or key in options:
            raise ValueError(f"Expected strategy options as ':option=value', each option once. Received: {text!r}")
        options[key] = _option_value(value)
    return name, options


def _option_value(value: str):
    words = {"true": True, "false": False, "none": None}
    if value.lower() in words:
        return words[value.lower()]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def arm_strategy(arm: str):
    """The strategy of an arm `"name[:option=value]...[@recipe]"`: its name when it has no options, else the built `Strategy`."""
    name, options = parse_strategy(parse_arm(arm)[0])
    return acquisition.get(name, **options) if options else name


def strategy_parts(strategy) -> list:
    """A strategy (a name or a `Strategy`) and the strategies it picks with (a budget switch's `low` and `high`).

    Example:

    >>> [part.name for part in strategy_parts(arm_strategy("budget_switch:high=learning_loss_clusters"))]
    ['budget_switch', 'typiclust', 'learning_loss_clusters']
    """
    resolved = acquisition.get(strategy)
    inner = [getattr(resolved, name, None) for name in ("low", "high")]
    return [resolved] + [part for part in inner if isinstance(part, acquisition.Strategy)]


def parse_arm(arm: str) -> tuple[str, str | None]:
    """Splits an arm `"strategy[@recipe]"` into the strategy (with its `:option=value`s, see `parse_strategy`) and the head recipe (or `None`).

    `learning_loss@paper` trains the head with the paper's recipe; a baseline
    with a recipe (`random@recommended`) trains the head too but picks with the
    baseline: the control that separates the head's effect on training from
    its picks.

    Example:

    >>> parse_arm("random@paper"), parse_arm("entropy")
    (('random', 'paper'), ('entropy', None))
    """
    name, _, recipe = arm.partition(ARM_SEPARATOR)
    if recipe and recipe not in RECIPES:
        raise ValueError(f"Expected an arm 'strategy@recipe' with recipe in {sorted(RECIPES)}. Received: {arm!r}")
    return name, recipe or None


def parse_lr_schedule(text: str | None) -> dict[int, float]:
    """Parses `"160:0.01,180:0.001"` into `{160: 0.01, 180: 0.001}` (epoch: learning rate from then on).

    Example:

    >>> parse_lr_schedule("160:0.01")
    {160: 0.01}
    """
    if not text:
        return {}
    schedule = {}
    for part in text.split(","):
        try:
            epoch, rate = part.split(":")
            schedule[int(epoch)] = float(rate)
            check_finite_non_negative("rate", schedule[int(epoch)])
        except ValueError as error:
            raise ValueError(
                "Expected a learning-rate schedule like '160:0.01,180:0.001' (epoch:rate, every rate a finite "
                f"number >= 0). Received: {text!r}"
            ) from error
    return dict(sorted(schedule.items()))


def lr_schedule_callback(initial: float, schedule: dict[int, float]) -> keras.callbacks.Callback:
    """A stateless `LearningRateScheduler`: `initial` until the first listed epoch, then each listed rate."""

    def rate(epoch: int, current: float) -> float:
        value = initial
        for start, scheduled in schedule.items():
            if epoch >= start:
                value = scheduled
        return value

    return keras.callbacks.LearningRateScheduler(rate)


def run_experiment(
    dataset: ArrayDataset,
    strategies: list[Any],
    seeds: list[int],
    out_dir: str,
    spec: ModelSpec,
    config: LoopConfig,
    lr_schedule: dict[int, float] | None = None,
    head_for_all: bool = False,
    restart: bool = False,
    replay_from: str | None = None,
) -> dict[str, list[LoopResult]]:
    """Runs every strategy with every seed (seed-major, so partial results cover all strategies).

    Args:
        dataset: the `ArrayDataset` (pool = train split, evaluation = test split).
        strategies: arms: names for `keras_lossal.acquisition.get`, optionally
            with a head recipe (`"learning_loss@paper"`, `"random@recommended"`,
            see `parse_arm`), or strategy objects with a `name`.
        seeds: one run per seed; the same seed gives every strategy the same initial labeled set.
        out_dir: output directory.
        spec: the `ModelSpec`.
        config: the `LoopConfig` of every run, its `seed` replaced by each of `seeds`
            (`verbose`: 0 silent, 1 a line per cycle, 2 Keras progress bars too; a
            `training_seed` is kept as it is: every seed trains from it).
        lr_schedule: `{epoch: rate}` applied within every cycle.
        head_for_all: also train the loss-prediction head for non-learning-loss strategies.
        restart: discard the recorded state of these (arm, seed) runs instead of resuming them;
            without it, a run recorded with other settings is refused (`ResumeRefusedError`)
            before anything is written. Other runs in `out_dir` are left alone.
        replay_from: another experiment directory whose finished run of each (arm, seed)
            gives the labeled items, in labeling order, that this run trains on again
            (`ActiveLearningLoop`'s `replay`: nothing is selected); with a `training_seed`
            in `config` this measures the training noise of exactly those labeled sets.

    Returns:
        `{strategy name: [LoopResult per seed]}`.
    """
    if not isinstance(config, LoopConfig):
        raise TypeError(f"Expected `config` to be a keras_lossal.LoopConfig. Received: config={config!r}")
    _check_strategies(strategies, spec, dataset)
    os.makedirs(out_dir, exist_ok=True)
    arms = _Arms(dataset, spec, out_dir, config, lr_schedule or {}, head_for_all, replay_from)
    names = [_arm_name(strategy) for strategy in strategies]
    runs = [(name, strategy, seed) for seed in seeds for name, strategy in zip(names, strategies)]
    # Refuse a changed setting before anything is written, so a refused command leaves the directory as it was.
    loops = [arms.loop(name, strategy, seed) for name, strategy, seed in runs]
    if restart:
        for loop in loops:
            RunDirectory(loop.work_dir).clear()
    else:
        _check_resumable(loops)
    _write_settings(os.path.join(out_dir, EXPERIMENT_FILE), arms.settings(names, seeds))
    results: dict[str, list[LoopResult]] = {name: [] for name in names}
    for name, strategy, seed in runs:
        results[name].append(arms.loop(name, strategy, seed).run())
    return results


def _check_resumable(loops: list[ActiveLearningLoop]) -> None:
    """Refuses, advising `restart=True`, when a run's directory records other settings."""
    for loop in loops:
        try:
            loop.check_resumable()
        except ResumeRefusedError as error:
            raise error.advising(
                "Pass restart=True to discard the recorded runs of these arms and seeds, or use another out_dir."
            ) from None


def _arm_name(strategy) -> str:
    return strategy if isinstance(strategy, str) else getattr(strategy, "name", type(strategy).__name__)


class _Arms:
    """Builds the loop of every (arm, seed) of one experiment, and the settings recorded in experiment.json.

    Args:
        dataset: the `ArrayDataset`.
        spec: the `ModelSpec` (an arm's `@recipe` replaces its recipe).
        out_dir: the experiment's directory; a run lives in `<out_dir>/<arm>/seed_<seed>`.
        config: the `LoopConfig` shared by every run (its seed is replaced per run).
        lr_schedule: `{epoch: rate}` within every cycle.
        head_for_all: train the loss-prediction head for every arm.
        replay_from: the experiment directory whose finished runs every run here replays, or `None`.
    """

    def __init__(self, dataset, spec, out_dir, config, lr_schedule, head_for_all, replay_from=None):
        self.dataset, self.spec, self.out_dir, self.config = dataset, spec, out_dir, config
        self.replay_from = replay_from
        self.lr_schedule = {str(epoch): rate for epoch, rate in lr_schedule.items()}
        self.head_for_all = head_for_all
        self.callbacks = [lr_schedule_callback(spec.learning_rate, lr_schedule)] if lr_schedule else []
        self.backbone_sha256 = backbone_fingerprint(spec.backbone)

    def settings(self, names: list[str], seeds: list[int]) -> dict:
        """experiment.json's content (the keys and order older runs recorded)."""
        config = self.config
        settings = {
            "dataset": self.dataset.name,
            "strategies": names,
            "seeds": list(seeds),
            "model": dataclasses.asdict(self.spec),
            **dict(initial_size=config.initial_size, query_size=config.query_size, subset_size=config.subset_size),
            **dict(cycles=config.cycles, epochs=config.epochs, batch_size=config.batch_size),
            **dict(augment=config.augment, warm_start=config.warm_start),
            "lr_schedule": self.lr_schedule,
            "head_for_all": self.head_for_all,
            "preprocessing": self.dataset.preprocessing.get_config(),
        }
        if config.training_seed is not None:
            settings["training_seed"] = config.training_seed
        if self.replay_from is not None:
            settings["replay_from"] = os.path.relpath(self.replay_from, self.out_dir)
        return settings

    def loop(self, name: str, strategy, seed: int) -> ActiveLearningLoop:
        """The loop of arm `name` (built from `strategy`, a name or an object) with seed `seed`."""
        recipe = parse_arm(name)[1] if isinstance(strategy, str) else None
        built = arm_strategy(name) if isinstance(strategy, str) else strategy
        needs_head = any(part.name in HEAD_STRATEGIES for part in strategy_parts(built))
        with_head = recipe is not None or self.head_for_all or needs_head
        arm_spec = self.spec if recipe is None else dataclasses.replace(self.spec, recipe=recipe)
        dataset = self.dataset
        return ActiveLearningLoop(
            make_model_factory(arm_spec, dataset.preprocessing.input_shape, dataset.num_classes, with_head),
            (dataset.x_train, dataset.y_train),
            (dataset.x_test, dataset.y_test),
            built,
            preprocessing=dataset.preprocessing,
            work_dir=os.path.join(self.out_dir, name, f"seed_{seed}"),
            fit_kwargs={"callbacks": self.callbacks} if self.callbacks else None,
            label=name,
            tags=self._tags(arm_spec, with_head),
            config=dataclasses.replace(self.config, seed=seed),
            replay=self._replay(name, seed),
        )

    def _replay(self, name: str, seed: int) -> list[int] | None:
        """The labeled sequence of `replay_from`'s run of (`name`, `seed`); it must have finished every cycle."""
        if self.replay_from is None:
            return None
        path = os.path.join(self.replay_from, name, f"seed_{seed}")
        recorded = LoopResult.load(path) if os.path.exists(os.path.join(path, STATE_FILE)) else None
        if recorded is None or len(recorded.cycles) < self.config.cycles:
            done = 0 if recorded is None else len(recorded.cycles)
            raise ValueError(
                f"Expected a finished run of {self.config.cycles} cycles to replay in {path!r}. Received {done} cycles"
            )
        return recorded.labeled_indices

    def _tags(self, arm_spec: ModelSpec, with_head: bool) -> dict:
        """The facts a run's state records beside the loop's config (a resume with others is refused)."""
        tags = {
            "model": dataclasses.asdict(arm_spec),
            "with_head": with_head,
            "lr_schedule": self.lr_schedule,
            "dataset": self.dataset.name,
        }
        if self.backbone_sha256 is not None:  # only for a .keras backbone: older runs' tags stay as they were
            tags["backbone_sha256"] = self.backbone_sha256
        return tags


def _check_strategies(strategies: Sequence[Any], spec: ModelSpec, dataset: ArrayDataset) -> None:
    """Fails before any training on an unknown strategy name, a backbone that does not fit, or a strategy the model cannot serve."""
    if spec.backbone not in BACKBONES:  # your own backbone: build one now, so a wrong input shape fails here
        backbone_builder(spec.backbone)(dataset.preprocessing.input_shape, dataset.num_classes, spec.width)
    for strategy in strategies:
        resolved = arm_strategy(strategy) if isinstance(strategy, str) else strategy
        if any(isinstance(part, acquisition.BALD) for part in strategy_parts(resolved)):
            model = make_model_factory(spec, dataset.preprocessing.input_shape, dataset.num_classes, False)()
            mc_dropout_model(model)  # raises when the backbone has no dropout layer


def _write_settings(path: str, settings: dict) -> None:
    """Writes experiment.json; several invocations may share a directory (one per seed): keep the union."""
    if os.path.exists(path):
        with open(path) as stream:
            previous = json.load(stream)
        settings["strategies"] = _union(previous.get("strategies", []), settings["strategies"])
        settings["seeds"] = sorted(set(previous.get("seeds", [])) | set(settings["seeds"]))
    write_json_atomic(path, settings)


def _union(first: list, second: list) -> list:
    return list(first) + [item for item in second if item not in first]
