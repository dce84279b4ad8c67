"""The on-disk state of an `ActiveLearningLoop` run: `state.json` and the warm-start weights.

A work directory holds `state.json` (written atomically after every cycle:
config, labeled indices in labeling order, per-cycle records, the relative
path of the weights a warm start needs) and `weights/cycle_NNN.weights.npz`
(the model weights of the last finished cycle only; older files are pruned).
This module owns that layout; `keras_lossal.results` and
`keras_lossal.experiment` read and write through it.

Example:

>>> import tempfile
>>> run = RunDirectory(tempfile.mkdtemp())
>>> run.save({"seed": 0}, cycles=[{"cycle": 0}], labeled=[3, 1], weights=None, finished=False)
>>> run.load({"seed": 0})["labeled_indices"]
[3, 1]
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from keras_lossal.contracts import STATE_FILE
from keras_lossal.files import atomic_open, atomic_write

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "WEIGHTS_DIR",
    "ResumeRefusedError",
    "RunDirectory",
    "jsonable",
    "load_weights",
    "write_json_atomic",
]

STATE_VERSION = 1
WEIGHTS_DIR = "weights"


class ResumeRefusedError(ValueError):
    """A directory holds a run with other settings, so resuming into it is refused; the message ends with advice.

    The advice depends on who asked: the Python API names its argument
    (`restart=True`), a command names its flag (`--restart`). Each layer
    re-issues the error with its own advice through `advising`.

    Args:
        reason: what is recorded and how it differs, ending in "refusing to resume".
        advice: what to do instead.

    Example:

    >>> error = ResumeRefusedError("out/training.json has other settings; refusing to resume.", "Pass restart=True.")
    >>> str(error.advising("Re-run with --restart."))
    'out/training.json has other settings; refusing to resume. Re-run with --restart.'
    """

    def __init__(self, reason: str, advice: str):
        super().__init__(f"{reason} {advice}")
        self.reason, self.advice = reason, advice

    def advising(self, advice: str) -> ResumeRefusedError:
        """The same refusal with other advice."""
        return ResumeRefusedError(self.reason, advice)


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes `payload` as JSON to `path` so that a reader sees the old file or the new one, never a torn one."""
    atomic_write(path, json.dumps(payload, indent=1))


def jsonable(value: Any) -> Any:
    """`value` with NumPy scalars and arrays turned into Python numbers and lists, tuples into lists.

    Example:

    >>> jsonable({"k": (np.int64(2), np.float32(0.5))})
    {'k': [2, 0.5]}
    """
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def load_weights(model, path: str) -> None:
    """Loads weights saved by `RunDirectory.save_weights` (`.npz`), or a Keras weights file, into `model`."""
    if not path.endswith(".npz"):  # a Keras weights file
        model.load_weights(path)
        return
    with np.load(path) as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    expected = len(model.get_weights())
    if len(weights) != expected:
        raise ValueError(f"{path} holds {len(weights)} weight arrays; the model from model_factory has {expected}.")
    model.set_weights(weights)


class RunDirectory:
    """One run's work directory: reads and writes `state.json`, saves, finds and prunes warm-start weights.

    Args:
        path: the work directory (created by `save` and `save_weights` when missing).
    """

    def __init__(self, path: str):
        self.path = str(path)

    @property
    def state_path(self) -> str:
        return os.path.join(self.path, STATE_FILE)

    def load(self, config: dict, unrecorded_ok: tuple[str, ...] = ()) -> dict | None:
        """The recorded state, `None` when there is none; raises `ValueError` if it has another config.

        Args:
            config: the requesting run's configuration; every key must equal the recorded one.
            unrecorded_ok: keys not compared when the recorded state lacks them (states older than the key).
        """
        if not os.path.exists(self.state_path):
            return None
        with open(self.state_path) as stream:
            state = json.load(stream)
        recorded = state.get("config", {})
        mismatched = {
            key: (recorded.get(key), value)
            for key, value in config.items()
            if recorded.get(key) != jsonable(value) and (key in recorded or key not in unrecorded_ok)
        }
        if mismatched:
            raise ResumeRefusedError(
                f"{self.state_path} was written by a run with a different configuration; refusing to resume. "
                f"Differences (recorded, requested): {mismatched}.",
                "Use another work_dir or delete it.",
            )
        return state

    def clear(self) -> None:
        """Deletes the recorded state and weights (a restart); anything else in the directory stays."""
        if os.path.exists(self.state_path):
            os.remove(self.state_path)
        shutil.rmtree(os.path.join(self.path, WEIGHTS_DIR), ignore_errors=True)

    def save(self, config: dict, cycles: list[dict], labeled: list[int], weights: str | None, finished: bool) -> None:
        """Writes the state after a cycle (atomically).

        Args:
            config: the run's configuration.
            cycles: the records of every finished cycle.
            labeled: labeled pool indices in labeling order.
            weights: the warm-start weights' path relative to the directory, or `None`.
            finished: whether the last cycle is done.
        """
        os.makedirs(self.path, exist_ok=True)
        seed = config.get("seed")
        state = {
            "version": STATE_VERSION,
            "config": jsonable(config),
            "finished": finished,
            # Every random draw of cycle c comes from cycle_seed(seed, c, ...), so this is the RNG state.
            "rng": {
                "seed": seed,
                "next_cycle": len(cycles),
                "derivation": "numpy.SeedSequence([seed, cycle, purpose])",
            },
            "labeled_indices": [int(index) for index in labeled],
            "cycles": jsonable(cycles),
            "weights": weights,
        }
        if config.get("training_seed") is not None:  # the model's and the shuffle's draws come from it instead
            state["rng"]["training_seed"] = config["training_seed"]
        write_json_atomic(self.state_path, state)

    def save_weights(self, model, cycle: int) -> str:
        """Saves `model`'s weights for cycle `cycle` and returns their path relative to the directory."""
        directory = os.path.join(self.path, WEIGHTS_DIR)
        os.makedirs(directory, exist_ok=True)
        name = f"cycle_{cycle:03d}.weights.npz"
        # Model weights only: a warm start carries weights over with a fresh optimizer, as the reference code.
        with atomic_open(os.path.join(directory, name), binary=True) as handle:
            np.savez(handle, *model.get_weights())
        return os.path.join(WEIGHTS_DIR, name)

    def weights_path(self, relative: str | None) -> str | None:
        """The absolute path of weights recorded as `relative` (`None` stays `None`)."""
        return None if relative is None else os.path.join(self.path, relative)

    def prune_weights(self, keep: str | None) -> None:
        """Deletes every weights file except `keep` (a relative path as `save_weights` returns; `None`: all)."""
        directory = os.path.join(self.path, WEIGHTS_DIR)
        if not os.path.isdir(directory):
            return
        for name in os.listdir(directory):
            if keep is None or os.path.join(WEIGHTS_DIR, name) != keep:
                os.remove(os.path.join(directory, name))
