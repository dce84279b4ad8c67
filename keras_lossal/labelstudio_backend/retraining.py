"""Retraining in the background: after enough new labels, `lossal train` then `lossal export` of the next version.

A round is a directory `rounds/round-NNNN/` of the state directory, created
whole (built under a temporary name, then renamed) with a frozen copy of the
manifest (`labeled.jsonl`, absolute paths) and `round.json` (its number, the
version it will publish, the labels it holds, its status). Its two steps run
as subprocesses, one round at a time, so TensorFlow's training memory stays
out of the server and a crash of a step is only that step's:

1. `lossal train --data labeled.jsonl --out train/ ...` (resumes after its
   last finished epoch when re-run; skipped once `training.json` says finished);
2. `lossal export train/model.keras --base-path B --version V` (skipped once
   version V exists: TF Serving's version directories are published by one
   rename of a complete export, so a version that exists is whole, and a
   half-written export is a hidden `.tmp-export-*` that nothing loads).

Only then is version V loaded and swapped in (in-process) or left to TF
Serving, which loads versions as they appear. A backend killed at any point
starts again by resuming its unfinished round. The steps inherit the round's
lock (`round.lock`, `fcntl.flock`): a step orphaned by a killed backend keeps
it until it exits, and the resumed round waits for it instead of running a
second copy beside it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from keras_lossal.contracts import MODEL_FILE, TRAINING_FILE
from keras_lossal.files import atomic_write
from keras_lossal.labeling import manifest as manifest_lib

__all__ = ["ROUNDS_DIR", "Round", "RoundCommands", "RoundFailed", "Retrainer"]

logger = logging.getLogger(__name__)

ROUNDS_DIR = "rounds"
ROUND_FILE = "round.json"
SNAPSHOT_FILE = "labeled.jsonl"
TRAIN_DIR = "train"
LOCK_FILE = "round.lock"
# The manifest size when retraining was first enabled: labels the served model may already know.
BASELINE_FILE = "retraining.json"
STATUSES = ("training", "exporting", "published", "failed")
# How often the worker looks at the manifest without being woken (labels added by `lossal ingest`).
POLL_SECONDS = 30.0
_LOG_TAIL_BYTES = 2000


class RoundFailed(RuntimeError):
    """A step of a round failed (its exit code and the end of its log); the served version stays."""


class _Stopped(Exception):
    """The backend is stopping: the round is left to resume at the next start."""


@dataclasses.dataclass
class Round:
    """One retraining round: its directory, the version it publishes and how far it got.

    Args:
        directory: `rounds/round-NNNN`.
        number: the round's number (NNNN).
        version: the model version it publishes.
        labels: labeled items in its snapshot of the manifest.
        status: `"training"`, `"exporting"`, `"published"` or `"failed"`.
        error: why it failed.
    """

    directory: str
    number: int
    version: int
    labels: int
    status: str = "training"
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("published", "failed")

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def save(self) -> None:
        fields = {key: value for key, value in dataclasses.asdict(self).items() if key != "directory"}
        atomic_write(self.path(ROUND_FILE), json.dumps(fields, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str) -> Round:
        with open(os.path.join(directory, ROUND_FILE), encoding="utf-8") as handle:
            fields = json.load(handle)
        return cls(directory=directory, **fields)

    def as_json(self) -> dict[str, Any]:
        return {"round": self.number, "version": self.version, "labels": self.labels, "status": self.status,
                **({"error": self.error} if self.error else {})}  # fmt: skip


class RoundCommands:
    """The two subprocesses of a round: `lossal train` and `lossal export` (the contract tests replace).

    Args:
        train_args: extra `lossal train` arguments (backbone, epochs, image size, ...).
        model_name: the served model's name (warmup requests name it).
        python: the interpreter that runs `keras_lossal.cli` (default: this one).
    """

    def __init__(self, train_args: Sequence[str] = (), model_name: str = "lossal", python: str | None = None):
        self.train_args, self.model_name, self.python = tuple(train_args), model_name, python or sys.executable

    def train(self, round_: Round) -> list[str]:
        data, out = round_.path(SNAPSHOT_FILE), round_.path(TRAIN_DIR)
        return [
            self.python,
            "-m",
            "keras_lossal.cli",
            "train",
            "--data",
            data,
            "--out",
            out,
            "--quiet",
            *self.train_args,
        ]

    def export(self, round_: Round, base_path: str) -> list[str]:
        model = os.path.join(round_.path(TRAIN_DIR), MODEL_FILE)
        return [self.python, "-m", "keras_lossal.cli", "export", model, "--base-path", base_path,
                "--version", str(round_.version), "--model-name", self.model_name]  # fmt: skip

    def trained(self, round_: Round) -> bool:
        """Whether the train step finished (its `training.json` says so): a resumed round skips it."""
        try:
            with open(os.path.join(round_.path(TRAIN_DIR), TRAINING_FILE), encoding="utf-8") as handle:
                return json.load(handle).get("finished") is True
        except (OSError, ValueError, AttributeError):
            return False


class Retrainer:
    """The background worker that runs rounds, one at a time, and switches predictions to what they publish.

    Args:
        state_dir: the backend's state directory (`rounds/` and the baseline live there).
        manifest: the labeled-set manifest.
        base_path: the TF Serving base path versions are published to.
        retrain_every: new labels (since the last published round) that start a round.
        commands: the round's subprocesses (default `RoundCommands()`).
        on_published: called with each published version (the in-process backend loads and swaps it in);
            when it raises, the round fails and the served version stays.

    Example:

    >>> retrainer = Retrainer("state", "labeled.jsonl", "models/lossal", 50, RoundCommands(["--epochs", "5"]))  # doctest: +SKIP
    >>> retrainer.start(); retrainer.notify()  # doctest: +SKIP
    """

    def __init__(
        self,
        state_dir: str,
        manifest: str,
        base_path: str,
        retrain_every: int,
        commands: RoundCommands | None = None,
        on_published: Callable[[int], None] | None = None,
    ):
        self.state_dir, self.manifest, self.base_path = state_dir, manifest, base_path
        self.retrain_every = int(retrain_every)
        self.commands = commands or RoundCommands()
        self.on_published = on_published
        self.rounds_dir = os.path.join(state_dir, ROUNDS_DIR)
        os.makedirs(self.rounds_dir, exist_ok=True)
        self.baseline = self._baseline()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._forced = False
        self._lock = threading.Lock()
        self._current: Round | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lossal-retrainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the worker; a running step is terminated (the round resumes at the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self, force: bool = False) -> None:
        """New labels (or "Start training", `force`): the worker looks at the manifest now."""
        with self._lock:
            self._forced = self._forced or force
        self._wake.set()

    def start_training(self) -> str:
        """Label Studio's "Start training": a round now if any label is new; says what will happen."""
        with self._lock:
            current = self._current
        if current is not None:
            return f"round {current.number} is running (version {current.version})"
        size, trained = self._manifest_size(), self._labels_trained(self.rounds())
        if size <= trained:
            return f"nothing new to train on: the manifest's {size} labels are all in the last published round"
        self.notify(force=True)
        return f"starting a round on {size} labels ({size - trained} new)"

    def status(self) -> dict[str, Any]:
        rounds = self.rounds()
        with self._lock:
            current = self._current
        return {
            "retrain_every": self.retrain_every,
            "labels": self._manifest_size(),
            "labels_trained": self._labels_trained(rounds),
            "round": current.as_json() if current else None,
            "last_round": rounds[-1].as_json() if rounds else None,
        }

    def rounds(self) -> list[Round]:
        """The rounds, oldest first (directories being created, without `round.json` yet, are not rounds)."""
        names = sorted(name for name in os.listdir(self.rounds_dir) if name.startswith("round-"))
        return [Round.load(os.path.join(self.rounds_dir, name)) for name in names
                if os.path.isfile(os.path.join(self.rounds_dir, name, ROUND_FILE))]  # fmt: skip

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                round_ = self._next_round()
                if round_ is None:
                    self._wake.wait(POLL_SECONDS)
                    self._wake.clear()
                    continue
                self._run_round(round_)
            except _Stopped:
                return
            except Exception:  # noqa: BLE001 - the worker must outlive any one round's failure
                logger.exception("retraining: unexpected error; trying again in %s s", POLL_SECONDS)
                self._stop.wait(POLL_SECONDS)

    def _next_round(self) -> Round | None:
        """An unfinished round to resume, else a new one when enough labels are new (or training was asked for)."""
        rounds = self.rounds()
        unfinished = [round_ for round_ in rounds if not round_.finished]
        if unfinished:
            return unfinished[0]
        size, trained = self._manifest_size(), self._labels_trained(rounds)
        failed_at = max([-1] + [round_.labels for round_ in rounds if round_.status == "failed"])
        with self._lock:
            forced, self._forced = self._forced, False
        due = size - trained >= self.retrain_every or (forced and size > trained)
        if not due or size <= failed_at:  # a failed round is tried again only with more labels
            return None
        return self._new_round(rounds)

    def _new_round(self, rounds: list[Round]) -> Round:
        """Creates the next round whole: snapshot and `round.json` under a temporary name, then one rename."""
        from keras_lossal.export.versions import existing_versions

        number = max([0] + [round_.number for round_ in rounds]) + 1
        version = max([0] + existing_versions(self.base_path)) + 1
        final = os.path.join(self.rounds_dir, f"round-{number:04d}")
        building = os.path.join(self.rounds_dir, f".round-{number:04d}.tmp")
        shutil.rmtree(building, ignore_errors=True)
        os.makedirs(building)
        records = _absolute(manifest_lib.read_manifest(self.manifest, missing_ok=True), self.manifest)
        manifest_lib.write_manifest(os.path.join(building, SNAPSHOT_FILE), records)
        Round(building, number, version, len(records)).save()
        os.rename(building, final)
        logger.info("retraining: round %d started on %d labels, will publish version %d", number, len(records), version)
        return Round.load(final)

    def _run_round(self, round_: Round) -> None:
        with self._lock:
            self._current = round_
        try:
            with _RoundLock(round_.path(LOCK_FILE), self._stop) as lock:
                self._steps(round_, lock)
        except RoundFailed as error:
            round_.status, round_.error = "failed", str(error)
            round_.save()
            logger.error("retraining: round %d failed: %s", round_.number, error)
        finally:
            with self._lock:
                self._current = None

    def _steps(self, round_: Round, lock: _RoundLock) -> None:
        from keras_lossal.export.versions import existing_versions

        if not self.commands.trained(round_):
            self._step(round_, "train", self.commands.train(round_), lock)
        if round_.version not in existing_versions(self.base_path):
            round_.status = "exporting"
            round_.save()
            self._step(round_, "export", self.commands.export(round_, self.base_path), lock)
        if round_.version not in existing_versions(self.base_path):
            raise RoundFailed(f"export finished but version {round_.version} is not under {self.base_path!r}")
        if self.on_published is not None:
            try:
                self.on_published(round_.version)
            except Exception as error:  # noqa: BLE001 - a version that does not load is this round's failure
                raise RoundFailed(f"version {round_.version} does not load: {error}") from None
        round_.status, round_.error = "published", None
        round_.save()
        logger.info("retraining: round %d published version %d", round_.number, round_.version)

    def _step(self, round_: Round, name: str, command: list[str], lock: _RoundLock) -> None:
        """Runs one step as a subprocess holding the round's lock; its output goes to `<name>.log`."""
        round_.save()
        log_path = round_.path(f"{name}.log")
        with open(log_path, "ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock.descriptor,)
            )
        while process.poll() is None:
            if self._stop.wait(0.5):
                _terminate(process)
                raise _Stopped
        if process.returncode != 0:
            raise RoundFailed(f"{name} exited with code {process.returncode}: ...{_tail(log_path)}")

    # ------------------------------------------------------------------ labels
    def _labels_trained(self, rounds: list[Round]) -> int:
        """Labels the served model was trained on: the most of the baseline, the published rounds', and what the
        newest export records (a version trained and exported by hand after the backend started counts too)."""
        published = [round_.labels for round_ in rounds if round_.status == "published"]
        served = self._served_training_items()
        return max([self.baseline, *published] + ([] if served is None else [min(served, self._manifest_size())]))

    def _manifest_size(self) -> int:
        return len(manifest_lib.read_manifest(self.manifest, missing_ok=True))

    def _baseline(self) -> int:
        """Labels the served model was trained on when retraining first ran here (recorded once: a restart keeps it).

        The newest export's `training.num_items` (what `lossal export` records from `lossal train`), at most
        the manifest's size; for an export that does not record it, the manifest's size: every label in it
        then counts as seen.
        """
        path = os.path.join(self.state_dir, BASELINE_FILE)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                return int(json.load(handle)["baseline_labels"])
        size = self._manifest_size()
        trained = self._served_training_items()
        baseline = size if trained is None else min(size, trained)
        source = "manifest" if trained is None else "export"
        atomic_write(path, json.dumps({"baseline_labels": baseline, "from": source}) + "\n")
        return baseline

    def _served_training_items(self) -> int | None:
        """`training.num_items` of the newest version under the base path, or `None` (no export, not recorded)."""
        import tensorflow as tf

        from keras_lossal.export.config import read_export_config

        try:
            items = read_export_config(self.base_path).get("training", {}).get("num_items")
        except (OSError, ValueError, AttributeError, tf.errors.OpError):  # no version yet, not ours, unreadable
            return None
        return int(items) if isinstance(items, int) and items >= 0 else None


class _RoundLock:
    """The round's lock, waited for (the stop event ends the wait); its descriptor is passed to the steps."""

    def __init__(self, path: str, stop: threading.Event):
        self.path, self.stop = path, stop
        self.descriptor = -1

    def __enter__(self) -> _RoundLock:
        self.descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        waited = False
        while True:
            try:
                fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not waited:
                    logger.info("retraining: waiting for a step of an earlier backend to finish (%s)", self.path)
                    waited = True
                if self.stop.wait(0.5):
                    os.close(self.descriptor)
                    raise _Stopped from None

    def __exit__(self, *exc) -> None:
        os.close(self.descriptor)


def _absolute(records: list[dict], manifest_path: str) -> list[dict]:
    """The manifest's records with paths that mean the same file from the round's folder."""
    folder = os.path.dirname(os.path.abspath(manifest_path))
    return [{**record, "path": record["path"] if "://" in record["path"] else os.path.join(folder, record["path"])}
            for record in records]  # fmt: skip


def _terminate(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def _tail(path: str) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - _LOG_TAIL_BYTES))
        return " ".join(handle.read().decode("utf-8", "replace").split())[-500:]
