"""Reliability probes (issue 23): every defect an outside trial found, probed again the way a new user meets it.

An outside trial broke the package twice. Issue 11 lists what it found the first time (16 items); issue 23
lists what it found when it re-ran those and probed the new surfaces (7 items: native crashes on odd
batches, lost labels under concurrent ingests, `file://` URLs, unhardened `train`/`run`, `export`
publishing what it should refuse, the REST client taking raw pixels, and ten smaller defects). This script
probes each of them again. Where the trial met the defect through the `lossal` command, the probe runs
`lossal` in a subprocess with a timeout, so a hang, a native crash or a traceback is an observation and
not the end of the run; where it met it through the Python API, the probe calls the API.

It prints one row per probe, `| # | probe | expected | observed | verdict |`, and exits 1 if any probe
fails (2 if the shared setup, one `lossal train` and one `lossal export`, fails). The data are tiny
(16x16 images, one epoch, `small_cnn` or `resnet18_cifar` at width 4 or 8): a few minutes on 2 shared
cores, most of it TensorFlow starting in each `lossal` process.

Run: `python benchmarks/reliability_probes.py` (`--only A5,B2` for some probes, `--list` to list them,
`--keep` to keep the work directory, `--jobs N` command-line probes side by side, `--json PATH` for the
rows as JSON).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
QUICK_TIMEOUT = 300  # a command that should refuse at once; TensorFlow alone takes 20 s on a loaded machine
TRAIN_TIMEOUT = 900  # a command that trains
HANG_TIMEOUT = 420  # a command that trains on a folder holding a FIFO: a hang shows as this timeout
CLASSES = ("dark", "mid", "bright")
SIZE = 16
# TensorFlow's and absl's own log lines (C++ logging, the oneDNN/CPU/CUDA notices), not our messages.
TF_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:\d\d|To enable the following instructions)"
    r"|oneDNN custom operations|cpu_feature_guard|cudart_stub|cuda_executor|cuInit|Could not find cuda drivers"
)


# ------------------------------------------------------------------------------------- commands
@dataclasses.dataclass
class Command:
    """One finished subprocess: its command line, exit code (`None`: killed at the timeout) and output."""

    argv: list[str]
    code: int | None
    out: str
    err: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.code is None

    @property
    def output(self) -> str:
        return self.out + self.err

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def is_one_line_refusal(self) -> bool:
        """Exit 2 with a short message and no traceback, as `lossal` reports a mistake the user can fix."""
        lines = self.error_lines()
        return self.code == 2 and 0 < len(lines) <= 3 and "Traceback" not in self.output

    def describe(self) -> str:
        if self.timed_out:
            status = f"no exit after {self.seconds:.0f} s (killed)"
        elif self.code < 0:
            status = f"killed by signal {signal.Signals(-self.code).name} after {self.seconds:.0f} s"
        else:
            status = f"exit {self.code} in {self.seconds:.0f} s"
        if "Traceback" in self.output:
            last = [line for line in self.output.splitlines() if line.strip()][-1]
            return f"{status}; a {len(self.err.splitlines())}-line traceback ending {clip(last, 140)!r}"
        # The command's own message when there is one (a library warning may come first); never TensorFlow's
        # start-up lines (A13 counts those separately).
        lines = [line for line in self.error_lines() if not TF_LOG_LINE.search(line)]
        ours = [line for line in lines if line.startswith("lossal ")] or lines
        return f"{status}; stderr {clip(ours[0], 170)!r}" if ours else status


def clip(text: str, length: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= length else text[: length - 3] + "..."


def user_environment(**extra: str) -> dict[str, str]:
    """The environment of a new user's shell: TensorFlow's defaults (oneDNN on, logs unset), this checkout's code."""
    environment = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL",
                   "TF_ENABLE_ONEDNN_OPTS")}  # fmt: skip
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    environment.update(extra)
    return environment


def lossal_executable() -> list[str]:
    """The `lossal` console script beside this interpreter (or on PATH); else its entry point through Python."""
    found = shutil.which("lossal", path=os.path.dirname(sys.executable)) or shutil.which("lossal")
    return (
        [found] if found else [sys.executable, "-c", "import sys; from keras_lossal.cli import main; sys.exit(main())"]
    )


def start(argv: list[str], environment: dict[str, str], cwd: str | None = None) -> subprocess.Popen:
    # A session of its own: a timeout kills the command and whatever it started, nothing else.
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                            cwd=cwd, start_new_session=True)  # fmt: skip


def finish(process: subprocess.Popen, argv: list[str], started: float, timeout: float) -> Command:
    try:
        out, err = process.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        code = None
    return Command(argv, code, out, err, time.monotonic() - started)


# ------------------------------------------------------------------------------------- the probes
@dataclasses.dataclass
class Outcome:
    passed: bool
    observed: str


@dataclasses.dataclass
class Probe:
    """One row of the table. `kind`: "cli" probes run side by side in threads, "api" probes in the main
    thread (they build Keras models), "last" probes after all others (they read every command's output).
    `weight` orders the start: long probes and the first user of a shared run go first."""

    number: str
    name: str
    expected: str
    check: Callable[[Workspace], Outcome]
    kind: str = "cli"
    weight: int = 1


PROBES: list[Probe] = []


def probe(number: str, name: str, expected: str, kind: str = "cli", weight: int = 1):
    def register(check: Callable[[Workspace], Outcome]) -> Callable[[Workspace], Outcome]:
        PROBES.append(Probe(number, name, expected, check, kind, weight))
        return check

    return register


class Workspace:
    """The probes' files, the shared trained model and export, stand-in servers and every `lossal` call made."""

    def __init__(self, root: str):
        self.root = root
        self.lossal_argv = lossal_executable()
        self.calls: list[Command] = []
        self._lock = threading.Lock()
        self._shared: dict[str, object] = {}
        self._shared_locks: dict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._servers: list[Callable[[], None]] = []
        # Set by `setup`: the triage pool's item ids, and the shared `lossal train` and `lossal export` calls.
        self.pool_ids: list[str] = []
        self.train: Command | None = None
        self.export: Command | None = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def record(self, command: Command) -> Command:
        with self._lock:
            self.calls.append(command)
        return command

    def lossal(self, *argv, timeout: float = QUICK_TIMEOUT, environment: dict | None = None) -> Command:
        full = [*self.lossal_argv, *map(str, argv)]
        started = time.monotonic()
        return self.record(finish(start(full, environment or user_environment()), full, started, timeout))

    def lossal_together(self, *argvs: list, timeout: float = QUICK_TIMEOUT) -> list[Command]:
        """Starts several `lossal` commands at once and waits for all of them."""
        full = [[*self.lossal_argv, *map(str, argv)] for argv in argvs]
        started = time.monotonic()
        processes = [start(argv, user_environment()) for argv in full]
        return [self.record(finish(process, argv, started, timeout)) for process, argv in zip(processes, full)]

    def python(self, script: str, *argv, timeout: float = TRAIN_TIMEOUT) -> Command:
        """A Python API call in a fresh interpreter (a native crash ends that process, not the probes)."""
        full = [sys.executable, "-c", script, *map(str, argv)]
        started = time.monotonic()
        return finish(start(full, user_environment(TF_CPP_MIN_LOG_LEVEL="3")), full, started, timeout)

    def shared(self, key: str, make: Callable[[], object]) -> object:
        """`make()` once for all the probes that read one run (e.g. one triage of a pool with every kind of file)."""
        with self._lock:
            lock = self._shared_locks[key]
        with lock:
            if key not in self._shared:
                self._shared[key] = make()
            return self._shared[key]

    def grpc_standin(self, delay: float = 0.0):
        """A gRPC TF Serving stand-in (tests/tfserving_standin.py) on the shared export: `(target, faults)`."""
        from tfserving_standin import start_grpc_standin

        server, target, service = start_grpc_standin(self.path("models", "lossal"), "lossal")
        service.faults.delay = delay
        self._servers.append(lambda: server.stop(None))
        return target, service.faults

    def rest_standin(self):
        from tfserving_standin import start_rest_standin

        server, target, faults = start_rest_standin(self.path("models", "lossal"), "lossal")
        self._servers.append(server.shutdown)
        return target, faults

    def close(self) -> None:
        for stop in self._servers:
            stop()


# --------------------------------------------------------------------------------------- the data
def gray_images(count: int, seed: int) -> np.ndarray:
    """`count` 16x16 grayscale uint8 images, class `i % 3` darker to brighter, so a model can learn something."""
    rng = np.random.default_rng(seed)
    levels = np.array([40, 128, 215])[np.arange(count) % 3]
    noise = rng.integers(-30, 31, size=(count, SIZE, SIZE, 1))
    return np.clip(levels[:, None, None, None] + noise, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


def write_bytes(path: str, payload: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(payload)
    return path


def write_class_folder(folder: str, per_class: int, seed: int, rgb_size: int | None = None) -> str:
    """A folder of class subfolders (`dark`, `mid`, `bright`), as `lossal train --data` and `lossal run` read."""
    images = gray_images(per_class * len(CLASSES), seed)
    if rgb_size:
        images = np.repeat(np.kron(images, np.ones((1, rgb_size // SIZE, rgb_size // SIZE, 1), np.uint8)), 3, -1)
    for index, image in enumerate(images):
        write_bytes(os.path.join(folder, CLASSES[index % 3], f"img_{index:03d}.png"), png(image))
    return folder


# Files that are not readable images, each a defect of issue 23 (item 4) when read by train or run.
BAD_FILES = {"dark/truncated.png": "truncated", "mid/empty.png": "zero bytes", "bright/notes.png": "text",
             "dark/loop.png": "symlink loop"}  # fmt: skip


def add_bad_files(folder: str, fifo: bool = True) -> list[str]:
    """Adds `BAD_FILES` (and a FIFO `mid/pipe.png`) to a class folder; returns their names."""
    good = png(gray_images(1, 99)[0])
    write_bytes(os.path.join(folder, "dark", "truncated.png"), good[:40])
    write_bytes(os.path.join(folder, "mid", "empty.png"), b"")
    write_bytes(os.path.join(folder, "bright", "notes.png"), b"hello, not a picture")
    os.symlink("loop.png", os.path.join(folder, "dark", "loop.png"))  # a link to itself
    names = list(BAD_FILES)
    if fifo:
        os.mkfifo(os.path.join(folder, "mid", "pipe.png"))
        names.append("mid/pipe.png")
    return names


def write_triage_pool(folder: str) -> list[str]:
    """20 PNGs, two byte-identical copies of the first, a truncated PNG, a 24-bit BMP, and a GIF (not an item).

    Returns the ids triage must account for: every file but the GIF.
    """
    from PIL import Image

    images = gray_images(20, seed=5)
    ids = []
    for index, image in enumerate(images):
        ids.append(os.path.basename(write_bytes(os.path.join(folder, f"img_{index:02d}.png"), png(image))))
    for copy in ("copy_a.png", "copy_b.png"):
        shutil.copyfile(os.path.join(folder, "img_00.png"), os.path.join(folder, copy))
        ids.append(copy)
    write_bytes(os.path.join(folder, "truncated.png"), png(images[1])[:40])
    Image.fromarray(np.repeat(images[2], 3, -1)).save(os.path.join(folder, "photo.bmp"))
    Image.fromarray(images[3][..., 0]).save(os.path.join(folder, "anim.gif"))
    return [*ids, "truncated.png", "photo.bmp"]


def write_idx(path: str, array: np.ndarray) -> None:
    """An uncompressed IDX file (the MNIST format) of unsigned bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    write_bytes(path, header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: str, train: int, test: int) -> str:
    """A Fashion-MNIST lookalike (28x28x1, 10 classes) that `lossal run --dataset fashion_mnist --data-dir` reads."""
    rng = np.random.default_rng(3)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (count, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), np.arange(count) % 10)
    return folder


def label_studio_task(number: int, item_id: str, image: str, label: str) -> dict:
    """One task of a Label Studio JSON export with one annotation choosing `label`."""
    choice = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    annotation = {"id": number, "completed_by": 1, "result": [choice], "was_cancelled": False}
    return {"id": number, "data": {"image": image, "item_id": item_id}, "annotations": [annotation]}


def write_labeling_pool(root: str, names: list[str]) -> None:
    """The images a labeling project shows, `<root>/pool/<name>.png` (ingest checks that each labeled file exists)."""
    from PIL import Image

    for index, name in enumerate(names):
        pixels = np.full((4, 4), index % 256, np.uint8)
        pixels[0, :3] = [index // 65536 % 256, index // 256 % 256, index % 256]  # distinct bytes for every item
        os.makedirs(os.path.join(root, "pool"), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(root, "pool", f"{name}.png"))


def json_min_export(path: str, prefix: str, count: int) -> str:
    """A Label Studio JSON_MIN export of `count` labels for items `<prefix>0...`, their images beside it in pool/."""
    write_labeling_pool(os.path.dirname(path), [f"{prefix}{i}" for i in range(count)])
    records = [{"image": f"/data/local-files/?d=pool/{prefix}{i}.png", "item_id": f"{prefix}{i}", "id": i + 1,
                "label": "cat" if i % 2 else "dog", "annotator": 1, "annotation_id": i + 1}
               for i in range(count)]  # fmt: skip
    write_bytes(path, json.dumps(records).encode())
    return path


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def tree_digest(folder: str) -> dict[str, str]:
    return {os.path.relpath(os.path.join(base, name), folder): digest(os.path.join(base, name))
            for base, _, names in os.walk(folder) for name in names if name.endswith(".json")}  # fmt: skip


def verdict(checks: dict[str, bool], observed: str) -> Outcome:
    """Passes when every named check holds; the observation lists the checks that did not."""
    failed = [name for name, held in checks.items() if not held]
    return Outcome(not failed, observed + (f" [not held: {', '.join(failed)}]" if failed else ""))


# ------------------------------------------------------------------------------------- shared setup
TRAIN_FAST = ["--backbone", "small_cnn", "--width", "4", "--epochs", "1", "--batch-size", "8", "--optimizer", "adam",
              "--lr", "0.01"]  # fmt: skip


class SetupFailed(Exception):
    """The shared `lossal train` or `lossal export` failed: no probe can run."""


def setup(ws: Workspace) -> None:
    """The data every probe reads, and the model a new user trains and exports first (both through `lossal`)."""
    write_class_folder(ws.path("gray"), per_class=12, seed=0)
    write_class_folder(ws.path("run_images"), per_class=12, seed=1)
    write_class_folder(ws.path("rgb32"), per_class=12, seed=2, rgb_size=32)
    write_fashion_mnist(ws.path("fashion_mnist"), train=160, test=50)
    ws.pool_ids = write_triage_pool(ws.path("pool"))
    ws.train = ws.lossal("train", "--data", ws.path("gray"), "--out", ws.path("model"), *TRAIN_FAST, "--quiet",
                         timeout=TRAIN_TIMEOUT)  # fmt: skip
    if ws.train.code != 0:
        raise SetupFailed(f"lossal train: {ws.train.describe()}\n{ws.train.output[-3000:]}")
    # As the Makefile sets it: issue 23 saw a cuInit line on every command with this level.
    ws.export = ws.lossal("export", ws.path("model", "model.keras"), "--base-path", ws.path("models", "lossal"),
                          environment=user_environment(TF_CPP_MIN_LOG_LEVEL="2"))  # fmt: skip
    if ws.export.code != 0:
        raise SetupFailed(f"lossal export: {ws.export.describe()}\n{ws.export.output[-3000:]}")


def small_model(num_classes: int = 3):
    """A compiled `LossLearningModel` on `small_cnn` for 16x16 grayscale images, as the README builds one."""
    import keras

    import keras_lossal as kl
    from keras_lossal.experiment import small_cnn

    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(small_cnn((SIZE, SIZE, 1), num_classes=num_classes, width=4))
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])  # fmt: skip
    return model


def model_inputs(count: int, seed: int = 0) -> np.ndarray:
    """Preprocessed float32 inputs of the shared export's `serving_default` (pixels / 255)."""
    return (gray_images(count, seed) / 255.0).astype(np.float32)


# ============================================================================ issue 11: the 16 items
_FIT_CHILD = """
import sys
import numpy as np, keras
import keras_lossal as kl

width, sizes, shape = int(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], tuple(map(int, sys.argv[3].split("x")))
batch_size, kinds = int(sys.argv[4]), sys.argv[5].split(",")
rng = np.random.default_rng(0)
x = rng.random((max(sizes), *shape)).astype("float32")
y = np.arange(max(sizes)) % 10
for kind in kinds:
    backbone = kl.backbones.resnet18_cifar(shape, width=width)
    model = kl.LossLearningModel(backbone) if kind == "head" else backbone
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for size in sizes:
        history = model.fit(x[:size], y[:size], batch_size=batch_size or size, epochs=1, verbose=0).history
        print("fitted", kind, size, history["loss"][0], flush=True)
"""


def fitted(command: Command) -> list[tuple[str, int, float]]:
    """The `(model, batch size, loss)` of every fit the child finished."""
    rows = [line.split() for line in command.out.splitlines() if line.startswith("fitted ")]
    return [(row[1], int(row[2]), float(row[3])) for row in rows]


@probe("A1a", "batch of one, Python API (11.1)",
       "fit of LossLearningModel(resnet18_cifar((28,28,1), width=4)) on 129 items, batch_size=128: no crash, "
       "finite loss", weight=3)  # fmt: skip
def batch_of_one_api(ws: Workspace) -> Outcome:
    command = ws.python(_FIT_CHILD, 4, 129, "28x28x1", 128, "head")
    done = fitted(command)
    return verdict({"exit 0": command.code == 0, "finite loss": bool(done) and np.isfinite(done[0][2])},
                   f"{command.describe()}; fits finished: {[(kind, size) for kind, size, _ in done]}")  # fmt: skip


@probe("A1b", "batch of one, `lossal run` (11.1)",
       "`lossal run --initial-size 129 --batch-size 128` (28x28x1, resnet18_cifar width 4; learning_loss and "
       "random): exit 0, every run finished", weight=3)  # fmt: skip
def batch_of_one_cli(ws: Workspace) -> Outcome:
    out = ws.path("a1_run")
    command = ws.lossal(
        "run", "--dataset", "fashion_mnist", "--data-dir", ws.path("fashion_mnist"), "--strategies",
        "learning_loss,random", "--cycles", "1", "--initial-size", "129", "--query-size", "8", "--subset-size", "0",
        "--batch-size", "128", "--backbone", "resnet18_cifar", "--width", "4", "--epochs", "1", "--out", out,
        "--quiet", timeout=TRAIN_TIMEOUT,
    )  # fmt: skip
    finished = run_states_finished(out, ["learning_loss", "random"])
    return verdict({"exit 0": command.code == 0, "runs finished": finished}, command.describe())


def run_states_finished(out: str, arms: list[str]) -> bool:
    states = [os.path.join(out, arm, "seed_0", "state.json") for arm in arms]
    return all(os.path.exists(path) and json.load(open(path)).get("finished") for path in states)


@probe("A2", "non-finite items and data (11.2)",
       "a NaN and an inf pool item are counted in num_nan (with a warning) and never picked by learning_loss or "
       "entropy; fit on data with one NaN pixel raises 'Expected finite training data', weights unchanged",
       kind="api")  # fmt: skip
def non_finite_items(ws: Workspace) -> Outcome:
    import warnings

    from keras_lossal import acquisition

    model = small_model()
    pool = model_inputs(24, seed=1)
    pool[3, 0, 0, 0], pool[11, 5, 5, 0] = np.nan, np.inf
    checks, observed = {}, []
    for name in ("learning_loss", "entropy"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            selection = acquisition.get(name).select(model, pool, k=5, seed=0, batch_size=8)
        picked = sorted({3, 11} & set(np.asarray(selection.indices).tolist()))
        warned = sum(issubclass(warning.category, RuntimeWarning) for warning in caught)
        checks[f"{name} counts and skips them"] = not picked and selection.num_nan == 2 and warned > 0
        observed.append(f"{name}: num_nan {selection.num_nan}, picked {picked or 'none'} of them, {warned} warning(s)")
    x, y = model_inputs(16, seed=2), np.arange(16) % 3
    x[5, 2, 2, 0] = np.nan
    before = model.get_weights()
    try:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        raised = "no error"
    except ValueError as error:
        raised = str(error)
    unchanged = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(before, model.get_weights()))
    checks["fit refuses NaN data"] = raised.startswith("Expected finite training data")
    checks["weights unchanged"] = unchanged
    observed.append(f"fit: {clip(raised, 60)!r}, weights {'unchanged' if unchanged else 'CHANGED'}")
    return verdict(checks, "; ".join(observed))


def is_duplicate(failure: dict) -> bool:
    """A copy `--dedupe` kept out of the queue (recorded in failures.jsonl, not a failure of the item)."""
    return bool(failure.get("duplicate")) or failure.get("reason", "").startswith("duplicate content")


def triage_ids(out: str) -> tuple[list[str], list[str]]:
    """The ids in scored.jsonl and in failures.jsonl (duplicates of `--dedupe` left out)."""
    scored = [record["id"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))]
    failed = [r["id"] for r in read_jsonl(os.path.join(out, "failures.jsonl")) if not is_duplicate(r)]
    return scored, failed


def each_item_once(out: str, expected_ids: list[str]) -> tuple[bool, str]:
    scored, failed = triage_ids(out)
    both = set(scored) & set(failed)
    twice = len(scored) - len(set(scored)) + len(failed) - len(set(failed))
    missing = set(expected_ids) - set(scored) - set(failed)
    summary_path = os.path.join(out, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {}
    totals = summary.get("total_scored", -1) + summary.get("total_failed", -1)
    holds = not both and not twice and not missing and totals == len(expected_ids)
    return holds, (f"{len(set(scored))} scored + {len(set(failed))} failed of {len(expected_ids)}, {len(both)} in "
                   f"both, {twice} twice, {len(missing)} missing; summary totals {totals}")  # fmt: skip


def start_lossal(ws: Workspace, *argv) -> tuple[subprocess.Popen, list[str], float]:
    full = [*ws.lossal_argv, *map(str, argv)]
    return start(full, user_environment()), full, time.monotonic()


@probe("A3", "stale failures after a killed retry run (11.3)",
       "triage against a dead server (--retries 0), then a run killed (SIGKILL) mid-way, then a finishing run: "
       "every item in exactly one of scored/failures, none retryable left, summary totals = items", weight=2)  # fmt: skip
def stale_failures(ws: Workspace) -> Outcome:
    out = ws.path("a3_out")
    dead = ws.lossal("triage", ws.path("pool"), "--server", "grpc://localhost:1", "--output", out, "--retries", "0",
                     "--timeout", "2", "--stop-after-server-errors", "0", "--batch-size", "2")  # fmt: skip
    dead_failures = count_lines(os.path.join(out, "failures.jsonl"))
    target, faults = ws.grpc_standin(delay=0.5)  # slow enough to kill the run mid-way
    argv = ["triage", ws.path("pool"), "--server", f"grpc://{target}", "--output", out, "--batch-size", "2",
            "--concurrency", "1"]  # fmt: skip
    process, full, started = start_lossal(ws, *argv)
    while process.poll() is None and count_lines(os.path.join(out, "scored.jsonl")) < 4:
        time.sleep(0.05)
    killed_mid_way = process.poll() is None
    if killed_mid_way:
        os.killpg(process.pid, signal.SIGKILL)
    ws.record(finish(process, full, started, QUICK_TIMEOUT))
    scored_when_killed = count_lines(os.path.join(out, "scored.jsonl"))
    faults.delay = 0.0
    final = ws.lossal(*argv)
    once, counts = each_item_once(out, ws.pool_ids)
    retryable = sum(bool(r.get("retryable")) for r in read_jsonl(os.path.join(out, "failures.jsonl")))
    return verdict(
        {"dead run failed items": dead_failures >= len(ws.pool_ids) - 1, "killed mid-way": killed_mid_way,
         "final exit 0": final.code == 0, "each item once": once, "no retryable failure left": retryable == 0},
        f"dead run {dead.describe()}, {dead_failures} failures; killed with {scored_when_killed} scored; final "
        f"{final.describe()}; {counts}; {retryable} retryable failure(s) left",
    )  # fmt: skip


def triage_everything(ws: Workspace) -> Command:
    """One `lossal triage` of the pool holding copies, a truncated PNG, a BMP and a GIF (shared by 6 probes)."""
    return ws.lossal("triage", ws.path("pool"), "--model", ws.path("models", "lossal"), "--output", ws.path("t1"),
                     "--top-k", "0", "--show", "30", "--dedupe")  # fmt: skip


def shared_triage(ws: Workspace) -> Command:
    return ws.shared("t1", lambda: triage_everything(ws))


@probe("A4", "failure reasons (11.4)",
       "the truncated PNG's failure reason carries the decoder's cause (names PNG), not 'Graph execution error'",
       weight=2)  # fmt: skip
def failure_reasons(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    reasons = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(ws.path("t1"), "failures.jsonl"))}
    reason = reasons.get("truncated.png", "(no failure recorded)")
    return verdict({"names PNG": "PNG" in reason, "no 'Graph execution error'": "Graph execution" not in reason},
                   f"{command.describe()}; reason {clip(reason, 150)!r}")  # fmt: skip


@probe("A5", "FIFO and directory named x.png in triage (11.5)",
       "`lossal triage` finishes; pipe.png (FIFO) and folder.png (directory) reported as not regular files, "
       "folder.png/inner.png scored", weight=2)  # fmt: skip
def fifo_in_triage(ws: Workspace) -> Outcome:
    folder = ws.path("pool_fifo")
    write_bytes(os.path.join(folder, "good.png"), png(gray_images(1, 7)[0]))
    write_bytes(os.path.join(folder, "folder.png", "inner.png"), png(gray_images(2, 7)[1]))
    os.mkfifo(os.path.join(folder, "pipe.png"))
    out = ws.path("a5_out")
    command = ws.lossal("triage", folder, "--model", ws.path("models", "lossal"), "--output", out)
    reasons = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(out, "failures.jsonl"))}
    scored, _ = triage_ids(out)
    return verdict(
        {"exit 0": command.code == 0, "FIFO reported": "not a regular file" in reasons.get("pipe.png", ""),
         "directory reported": "not a regular file" in reasons.get("folder.png", ""),
         "inner.png scored": "folder.png/inner.png" in scored},
        f"{command.describe()}; pipe.png: {clip(reasons.get('pipe.png', '-'), 60)!r}; folder.png: "
        f"{clip(reasons.get('folder.png', '-'), 60)!r}",
    )  # fmt: skip


@probe("A6", "`--top-k 0` (11.6)", "exit 0; the queue holds every scored item, ranked 1..n")
def top_k_zero(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    queue = read_jsonl(os.path.join(ws.path("t1"), "queue.jsonl"))
    scored, _ = triage_ids(ws.path("t1"))
    ranks = [record["rank"] for record in queue]
    return verdict({"exit 0": command.code == 0, "every scored item queued": len(queue) == len(scored) > 0,
                    "ranks 1..n": ranks == list(range(1, len(queue) + 1))},
                   f"{command.describe()}; queue {len(queue)} of {len(scored)} scored")  # fmt: skip


@probe("A7", "dead server (11.7)",
       "`--server grpc://localhost:1 --retries 0`: exit 3 after a few calls with one line, pool not walked; the "
       "same command against a live server then finishes with every item once", weight=2)  # fmt: skip
def dead_server(ws: Workspace) -> Outcome:
    out = ws.path("a7_out")
    argv = ["triage", ws.path("pool"), "--output", out, "--batch-size", "1", "--concurrency", "1"]
    dead = ws.lossal(*argv, "--server", "grpc://localhost:1", "--retries", "0", "--timeout", "2")
    failures = count_lines(os.path.join(out, "failures.jsonl"))
    target, _ = ws.grpc_standin()
    live = ws.lossal(*argv, "--server", f"grpc://{target}")
    once, counts = each_item_once(out, ws.pool_ids)
    return verdict(
        {"exit 3": dead.code == 3, "one line": len(dead.error_lines()) == 1 and "Traceback" not in dead.output,
         "stopped early": failures < len(ws.pool_ids) // 2, "resumed to the end": live.code == 0 and once},
        f"dead: {dead.describe()}, {failures} failures of {len(ws.pool_ids)} items; live: {live.describe()}; {counts}",
    )  # fmt: skip


@probe("A8", "BMP on a 1-channel export (11.8)", "the 24-bit photo.bmp is scored by the grayscale export")
def bmp_on_grayscale(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    scored, _ = triage_ids(ws.path("t1"))
    reasons = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(ws.path("t1"), "failures.jsonl"))}
    return verdict({"scored": "photo.bmp" in scored},
                   f"{command.describe()}; photo.bmp {'scored' if 'photo.bmp' in scored else 'failed: '}"
                   f"{clip(reasons.get('photo.bmp', ''), 120)}")  # fmt: skip


# Two variants of one strategy (random@recommended trains the head, so its joint loss differs from task_loss).
RUN_ARMS = ["random@recommended", "random"]


def run_protocol(ws: Workspace, *extra: str) -> Command:
    """`lossal run` on your images: resnet18_cifar width 4, initial 9 with batch 8 (odd batches 9, 5, 9)."""
    return ws.lossal(
        "run", "--dataset", ws.path("run_images"), "--strategies", ",".join(RUN_ARMS), "--cycles", "3",
        "--initial-size", "9", "--query-size", "4", "--subset-size", "0", "--batch-size", "8", "--backbone",
        "resnet18_cifar", "--width", "4", "--epochs", "1", "--lr", "0.01", "--out", ws.path("r1"), *extra,
        timeout=TRAIN_TIMEOUT,
    )  # fmt: skip


def shared_run(ws: Workspace) -> Command:
    return ws.shared("r1", lambda: run_protocol(ws))


def shared_changed_run(ws: Workspace) -> tuple[Command, bool]:
    """The same `lossal run` with one setting changed (`--epochs 2`): the command, and whether nothing changed."""

    def changed() -> tuple[Command, bool]:
        shared_run(ws)
        before = tree_digest(ws.path("r1"))
        command = run_protocol(ws, "--epochs", "2")
        return command, tree_digest(ws.path("r1")) == before and bool(before)

    return ws.shared("r1_changed", changed)


@probe("A9", "`lossal run` into a directory with one setting changed (11.9)",
       "exit 2 with one line; experiment.json and every state.json untouched")  # fmt: skip
def changed_setting(ws: Workspace) -> Outcome:
    command, untouched = shared_changed_run(ws)
    return verdict({"one-line refusal": command.is_one_line_refusal(), "files untouched": untouched},
                   f"{command.describe()}; files {'untouched' if untouched else 'CHANGED'}")  # fmt: skip


@probe("A10", "serving client (11.10)",
       "float64 inputs cast to the signature's float32 over gRPC (same scores); port 'localhost:85OO' refused "
       "when the client is built; a misspelled signature named 'unknown signature' with the available ones",
       kind="api")  # fmt: skip
def client_checks(ws: Workspace) -> Outcome:
    from keras_lossal.serving import TFServingClient

    target, _ = ws.grpc_standin()
    x = model_inputs(4, seed=3)
    with TFServingClient(target, "lossal", retries=0) as client:
        reference = client.score(x)["predicted_loss"]
        as_float64 = client.score(x.astype(np.float64))["predicted_loss"]
        try:
            client.score([png(gray_images(1, 3)[0])], signature="score_imge_bytes")
            misspelled = "accepted"
        except ValueError as error:
            misspelled = str(error)
    try:
        TFServingClient("localhost:85OO", "lossal").close()
        port = "accepted"
    except ValueError as error:
        port = str(error)
    return verdict(
        {"float64 cast": np.allclose(reference, as_float64, atol=1e-5), "port refused": port != "accepted",
         "unknown signature": "unknown signature" in misspelled and "score_image_bytes" in misspelled},
        f"float64 max |diff| {np.abs(reference - as_float64).max():.1e}; port: {clip(port, 70)!r}; signature: "
        f"{clip(misspelled, 90)!r}",
    )  # fmt: skip


@probe("A11", "labels out of range, float labels (11.11)",
       "ActiveLearningLoop refuses label 7 for a 3-class model naming it, and float labels, with a ValueError "
       "(not TensorFlow's 'Graph execution error')", kind="api")  # fmt: skip
def loop_labels(ws: Workspace) -> Outcome:
    import keras_lossal as kl

    x, y = gray_images(24, seed=4), np.arange(24) % 3
    observed, checks = [], {}
    for name, labels in (("label 7", np.where(np.arange(24) == 10, 7, y)), ("float labels", y.astype(np.float32))):
        try:
            config = kl.LoopConfig(initial_size=6, query_size=3, cycles=2, epochs=1, batch_size=4, verbose=0)
            loop = kl.ActiveLearningLoop(small_model, (x, labels), (x[:6], y[:6]), "random", config)
            loop.run()
            raised = "no error: trained"
        except ValueError as error:
            raised = f"ValueError: {error}"
        except Exception as error:  # noqa: BLE001 - TensorFlow's raw error is the defect being probed
            raised = f"{type(error).__name__}: {error}"
        checks[name] = raised.startswith("ValueError") and "Graph execution" not in raised
        if name == "label 7":
            checks[name] = checks[name] and "7" in raised
        observed.append(f"{name}: {clip(raised, 110)!r}")
    return verdict(checks, "; ".join(observed))


README_RETRY_CODES = ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")


@probe("A12", "the README's retry rule holds (11.12)",
       "the README names DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and HTTP 429 as retried, and the client "
       "retries each once injected (2 requests, then scores)", kind="api")  # fmt: skip
def readme_retries(ws: Workspace) -> Outcome:
    from keras_lossal.serving import TFServingClient

    readme = " ".join(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split())
    start_at = readme.find("retries transient failures")
    sentence = readme[start_at : start_at + 600] if start_at >= 0 else ""
    x = model_inputs(2, seed=6)
    retried = {}
    for protocol, codes in (("grpc", README_RETRY_CODES), ("rest", ("429",))):
        target, faults = ws.grpc_standin() if protocol == "grpc" else ws.rest_standin()
        for code in codes:
            faults.fail_next(1, code)
            before = faults.requests
            try:
                with TFServingClient(target, "lossal", protocol=protocol, retries=2, backoff=0.001) as client:
                    client.score(x)
                retried[code] = faults.requests - before == 2
            except Exception:  # noqa: BLE001 - a code not retried fails the score: that is the observation
                retried[code] = False
    named = [code for code in (*README_RETRY_CODES, "429") if code in sentence]
    return verdict({"README names them": len(named) == 4, "client retries them": all(retried.values())},
                   f"README names {named}; retried once and scored: "
                   f"{[code for code, ok in retried.items() if ok]}")  # fmt: skip


@probe("A13", "TensorFlow log lines on stderr (11.13)",
       "no TensorFlow/absl log line on the stderr of any `lossal` call this script made", kind="last")  # fmt: skip
def tensorflow_logs(ws: Workspace) -> Outcome:
    noisy = []
    for command in ws.calls:
        lines = [line for line in command.err.splitlines() if TF_LOG_LINE.search(line)]
        if lines:
            noisy.append(f"`lossal {command.argv[len(ws.lossal_argv)]}` ({len(lines)}: {clip(lines[0], 80)!r})")
    return verdict({"no log lines": not noisy}, f"{len(ws.calls)} calls; with log lines: {noisy[:3] or 'none'}")


@probe("A14", "identical images (11.14)",
       "`--dedupe`: of img_00.png and its two byte copies one is scored and queued, the others recorded as "
       "duplicates")  # fmt: skip
def dedupe(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    trio = {"img_00.png", "copy_a.png", "copy_b.png"}
    queued = trio & {record["id"] for record in read_jsonl(os.path.join(ws.path("t1"), "queue.jsonl"))}
    duplicates = trio & {r["id"] for r in read_jsonl(os.path.join(ws.path("t1"), "failures.jsonl")) if is_duplicate(r)}
    return verdict({"one queued": len(queued) == 1, "two duplicates": len(duplicates) == 2},
                   f"{command.describe()}; queued {sorted(queued)}, duplicates {sorted(duplicates)}")  # fmt: skip


@probe("A15", "silent rescaling (11.15)",
       "without a preprocessing, standardised float32 images stay unchanged and uint8 pixels are divided by 255; "
       "the dataset summary says which", kind="api")  # fmt: skip
def inferred_scaling(ws: Workspace) -> Outcome:
    from keras_lossal import data

    rng = np.random.default_rng(8)
    standardised = np.clip(rng.normal(0, 1.5, (30, 8, 8, 1)), -4, 4).astype(np.float32)
    pixels = rng.integers(0, 256, (30, 8, 8, 1)).astype(np.uint8)
    y = np.arange(30) % 3
    floats = data.from_arrays(standardised[:20], y[:20], standardised[20:], y[20:])
    uints = data.from_arrays(pixels[:20], y[:20], pixels[20:], y[20:])
    float_out = np.asarray(floats.preprocessing(standardised[:4]))
    uint_out = np.asarray(uints.preprocessing(pixels[:4]))
    return verdict(
        {"floats unchanged": np.allclose(float_out, standardised[:4]),
         "uint8 / 255": np.allclose(uint_out, pixels[:4] / 255.0, atol=1e-6),
         "summaries say so": "unchanged" in floats.summary() and "255" in uints.summary()},
        f"float32 range after {float_out.min():.2f}..{float_out.max():.2f}; summaries {clip(floats.summary(), 80)!r} "
        f"and {clip(uints.summary().split(';')[-1], 60)!r}",
    )  # fmt: skip


@probe("A16", "per-cycle log (11.16)",
       "`lossal run` per-cycle lines show task_loss (never the joint loss), each arm under its own label "
       "(random@recommended, random)")  # fmt: skip
def cycle_log(ws: Workspace) -> Outcome:
    command = shared_run(ws)
    lines = [line for line in command.out.splitlines() if re.match(r"^\[.+ seed 0\] cycle \d+:", line)]
    labels = sorted({re.match(r"^\[(.+) seed 0\]", line).group(1) for line in lines})
    task_loss = all("'task_loss'" in line and "'loss'" not in line for line in lines)
    return verdict({"task_loss in every line": bool(lines) and task_loss, "arms told apart": labels == sorted(RUN_ARMS)},
                   f"{command.describe()}; {len(lines)} cycle lines, labels {labels}; "
                   f"e.g. {clip(lines[0] if lines else '', 110)!r}")  # fmt: skip


# ============================================================================ issue 23: the new ones
ODD_BATCHES = [1, 3, 5, 7, 9, 33, 65, 127, 129]


def odd_batch_fits(ws: Workspace, width: int) -> Outcome:
    command = ws.python(_FIT_CHILD, width, ",".join(map(str, ODD_BATCHES)), "16x16x1", 0, "head,bare")
    done = fitted(command)
    finite = all(np.isfinite(loss) for _, _, loss in done)
    last = f"last fit {done[-1][:2]}" if done else "no fit finished"
    return verdict({"exit 0": command.code == 0, "18 fits": len(done) == 2 * len(ODD_BATCHES), "finite": finite},
                   f"{command.describe()}; {len(done)} of {2 * len(ODD_BATCHES)} fits, {last}")  # fmt: skip


@probe("B1a", "odd batches, width 4 (23.1)",
       "fit of resnet18_cifar width 4, with and without the head, on batches of 1,3,5,7,9,33,65,127,129 (one "
       "process): no abort or segfault, finite losses", weight=3)  # fmt: skip
def odd_batches_width_4(ws: Workspace) -> Outcome:
    return odd_batch_fits(ws, 4)


@probe("B1b", "odd batches, width 8 (23.1)",
       "the same at width 8: no abort or segfault, finite losses", weight=3)  # fmt: skip
def odd_batches_width_8(ws: Workspace) -> Outcome:
    return odd_batch_fits(ws, 8)


@probe("B1c", "odd batches, `lossal train` (23.1)",
       "`lossal train --data <3 classes x 12 images 32x32> --epochs 1 --width 8`: exit 0, training finished",
       weight=3)  # fmt: skip
def odd_batches_train(ws: Workspace) -> Outcome:
    out = ws.path("b1c_model")
    command = ws.lossal("train", "--data", ws.path("rgb32"), "--out", out, "--epochs", "1", "--width", "8",
                        timeout=TRAIN_TIMEOUT)  # fmt: skip
    record = os.path.join(out, "training.json")
    finished = os.path.exists(record) and json.load(open(record)).get("finished") is True
    return verdict({"exit 0": command.code == 0, "finished": finished}, command.describe())


@probe("B1d", "odd batches, `lossal run` (23.1)",
       "`lossal run ... --initial-size 9 --batch-size 8` (resnet18_cifar width 4, 2 arms x 3 cycles): exit 0, "
       "every run finished", weight=4)  # fmt: skip
def odd_batches_run(ws: Workspace) -> Outcome:
    command = shared_run(ws)
    finished = run_states_finished(ws.path("r1"), RUN_ARMS)
    return verdict({"exit 0": command.code == 0, "runs finished": finished}, command.describe())


@probe("B2", "two concurrent `lossal ingest` (23.2)",
       "3 tries of two ingests of 5,000 labels each (images present) started together into one manifest of 2: "
       "both exit 0 and 10,002 distinct ids, or one clear refusal and 5,002; never fewer")  # fmt: skip
def concurrent_ingests(ws: Workspace) -> Outcome:
    results, holds = [], True
    for attempt in range(3):
        folder = ws.path(f"b2_{attempt}")
        manifest = os.path.join(folder, "labeled.jsonl")
        first = ws.lossal("ingest", json_min_export(os.path.join(folder, "s.json"), "s", 2), "--manifest", manifest,
                          "--classes", "cat,dog", "--document-root", folder)  # fmt: skip
        exports = [json_min_export(os.path.join(folder, f"{prefix}.json"), prefix, 5000) for prefix in "ab"]
        commands = ws.lossal_together(*[["ingest", export, "--manifest", manifest, "--classes", "cat,dog",
                                         "--document-root", folder] for export in exports])  # fmt: skip
        ids = [record["id"] for record in read_jsonl(manifest)]
        codes = [command.code for command in commands]
        refused = [command for command in commands if command.code != 0]
        if codes == [0, 0]:
            good = len(ids) == len(set(ids)) == 10002
        else:
            good = len(refused) == 1 and refused[0].is_one_line_refusal() and len(set(ids)) == len(ids) == 5002
        holds = holds and good and first.code == 0
        results.append(f"exits {codes}, {len(ids)} lines ({len(set(ids))} ids)")
    return verdict({"no label lost": holds}, "; ".join(results))


@probe("B3", "image URLs past ingest's document root (23.3)",
       "file:///etc/passwd, ?d=../../etc/passwd, ?d=%2e%2e%2f..., and /etc/passwd rejected as 'image refused'; "
       "only the local-files item inside the root reaches the manifest; exit 3 (completed with rejects, as "
       "`lossal ingest --help` documents)")  # fmt: skip
def image_urls(ws: Workspace) -> Outcome:
    root = ws.path("b3_root")
    urls = {"ok": "/data/local-files/?d=pool/ok.png", "file": "file:///etc/passwd",
            "up": "/data/local-files/?d=../../etc/passwd",
            "encoded": "/data/local-files/?d=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "absolute": "/etc/passwd"}  # fmt: skip
    tasks = [label_studio_task(n, item, url, "cat") for n, (item, url) in enumerate(urls.items(), start=1)]
    write_labeling_pool(root, ["ok"])
    export = write_bytes(os.path.join(root, "export.json"), json.dumps(tasks).encode())
    manifest = os.path.join(root, "labeled.jsonl")
    command = ws.lossal("ingest", export, "--manifest", manifest, "--classes", "cat,dog", "--document-root", root)
    paths = {record["id"]: record["path"] for record in read_jsonl(manifest)}
    rejects = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(root, "export.json.rejects.jsonl"))}
    refused = sorted(item for item, reason in rejects.items() if reason.startswith("image refused"))
    return verdict(
        {"exit 3": command.code == 3, "only ok added": list(paths) == ["ok"],
         "4 refused": refused == sorted(set(urls) - {"ok"})},
        f"{command.describe()}; manifest {paths}; refused {refused}",
    )  # fmt: skip


def hardened_read(command: Command, folder: str, names: list[str]) -> Outcome:
    """A `lossal train`/`run` over unreadable files: no hang, exit 0, every file named, no traceback."""
    unnamed = [name for name in names if os.path.join(folder, name) not in command.output and name not in
               command.output]  # fmt: skip
    return verdict(
        {"no hang": not command.timed_out, "exit 0": command.code == 0, "no traceback": "Traceback" not in
         command.output, "every file named": not unnamed},
        f"{command.describe()}; not named: {unnamed or 'none'}",
    )  # fmt: skip


@probe("B4a", "FIFO in `lossal train`'s folder (23.4)",
       "a FIFO mid/pipe.png among the images: no hang, exit 0, the FIFO named as skipped", weight=2)  # fmt: skip
def train_fifo_folder(ws: Workspace) -> Outcome:
    folder = shutil.copytree(ws.path("gray"), ws.path("b4a_images"))
    os.mkfifo(os.path.join(folder, "mid", "pipe.png"))
    command = ws.lossal("train", "--data", folder, "--out", ws.path("b4a_model"), *TRAIN_FAST, timeout=HANG_TIMEOUT)
    return hardened_read(command, folder, ["mid/pipe.png"])


@probe("B4b", "FIFO in `lossal train`'s manifest (23.4)",
       "a manifest naming a FIFO beside real images: no hang, exit 0, the FIFO named as skipped", weight=2)  # fmt: skip
def train_fifo_manifest(ws: Workspace) -> Outcome:
    folder = ws.path("b4b")
    os.makedirs(folder)
    os.mkfifo(os.path.join(folder, "pipe.png"))
    records = [{"id": f"{label}/{name}", "path": os.path.join(ws.path("gray"), label, name), "label": label}
               for label in CLASSES for name in sorted(os.listdir(ws.path("gray", label)))]  # fmt: skip
    records.append({"id": "pipe", "path": os.path.join(folder, "pipe.png"), "label": "mid"})
    manifest = write_bytes(
        os.path.join(folder, "labeled.jsonl"), "".join(json.dumps(r) + "\n" for r in records).encode()
    )
    command = ws.lossal("train", "--data", manifest, "--out", ws.path("b4b_model"), *TRAIN_FAST, timeout=HANG_TIMEOUT)
    return hardened_read(command, folder, ["pipe.png"])


@probe("B4c", "corrupt files in `lossal train` (23.4)",
       "a truncated, a zero-byte and a text .png and a symlink loop among the images: exit 0, each named, no "
       "traceback", weight=2)  # fmt: skip
def train_corrupt_files(ws: Workspace) -> Outcome:
    folder = shutil.copytree(ws.path("gray"), ws.path("b4c_images"))
    names = add_bad_files(folder, fifo=False)
    command = ws.lossal("train", "--data", folder, "--out", ws.path("b4c_model"), *TRAIN_FAST, timeout=TRAIN_TIMEOUT)
    return hardened_read(command, folder, names)


@probe("B4d", "FIFO and corrupt files in `lossal run` (23.4)",
       "your images with a FIFO, a truncated, a zero-byte and a text .png and a symlink loop: no hang, exit 0, "
       "each named, no traceback", weight=2)  # fmt: skip
def run_bad_files(ws: Workspace) -> Outcome:
    folder = shutil.copytree(ws.path("run_images"), ws.path("b4d_images"))
    names = add_bad_files(folder, fifo=True)
    command = ws.lossal(
        "run", "--dataset", folder, "--strategies", "random", "--cycles", "1", "--initial-size", "9", "--query-size",
        "4", "--subset-size", "0", "--batch-size", "8", "--backbone", "small_cnn", "--width", "4", "--epochs", "1",
        "--out", ws.path("b4d_out"), timeout=HANG_TIMEOUT,
    )  # fmt: skip
    return hardened_read(command, folder, names)


def one_line_refusal(command: Command, out: str, *words: str) -> Outcome:
    named = [word for word in words if word in command.err]
    return verdict(
        {"one-line refusal": command.is_one_line_refusal(), "names it": len(named) == len(words),
         "nothing written": not os.path.exists(out)},
        command.describe(),
    )  # fmt: skip


@probe("B4e", "unknown dataset (23.4)",
       "`lossal run --dataset fashon_mnist`: exit 2, one line naming it and what exists (fashion_mnist)")  # fmt: skip
def unknown_dataset(ws: Workspace) -> Outcome:
    out = ws.path("b4e_out")
    return one_line_refusal(ws.lossal("run", "--dataset", "fashon_mnist", "--out", out), out, "fashon_mnist",
                            "fashion_mnist")  # fmt: skip


@probe("B4f", "missing folder for `lossal run` (23.4)", "`lossal run --dataset ./nope_dir`: exit 2, one line")
def missing_folder_run(ws: Workspace) -> Outcome:
    out = ws.path("b4f_out")
    return one_line_refusal(ws.lossal("run", "--dataset", "./nope_dir", "--out", out), out, "nope_dir")


@probe("B4g", "missing .npz for `lossal run` (23.4)", "`lossal run --dataset x.npz`: exit 2, one line")
def missing_npz_run(ws: Workspace) -> Outcome:
    out = ws.path("b4g_out")
    return one_line_refusal(ws.lossal("run", "--dataset", "x.npz", "--out", out), out, "x.npz")


@probe("B4h", "missing paths for `lossal train` (23.4)",
       "`lossal train --data ./nope_dir` and `--data x.npz`: exit 2, one line each")  # fmt: skip
def missing_paths_train(ws: Workspace) -> Outcome:
    outcomes = []
    for source in ("./nope_dir", "x.npz"):
        out = ws.path(f"b4h_{source.strip('./')}")
        outcomes.append(one_line_refusal(ws.lossal("train", "--data", source, "--out", out), out, source.strip("./")))
    return Outcome(all(o.passed for o in outcomes), "; ".join(o.observed for o in outcomes))


@probe("B5a", "export of an unfinished train directory (23.5)",
       "model.keras present, training.json finished false, preprocessing.json and classes.json missing: exit 2, "
       "one line, no version written")  # fmt: skip
def export_unfinished(ws: Workspace) -> Outcome:
    folder = ws.path("b5a_model")
    shutil.copytree(ws.path("model"), folder)
    record_path = os.path.join(folder, "training.json")
    record = json.load(open(record_path))
    write_bytes(record_path, json.dumps({**record, "finished": False}).encode())
    for name in ("preprocessing.json", "classes.json"):
        os.remove(os.path.join(folder, name))
    base = ws.path("b5a_base")
    command = ws.lossal("export", os.path.join(folder, "model.keras"), "--base-path", base)
    versions = os.listdir(base) if os.path.isdir(base) else []
    return verdict({"one-line refusal": command.is_one_line_refusal(), "no version": not versions},
                   f"{command.describe()}; versions written {versions}")  # fmt: skip


def training_finished(out: str) -> bool:
    path = os.path.join(out, "training.json")
    return os.path.exists(path) and json.load(open(path)).get("finished") is True


@probe("B5b", "`lossal train --lr nan` (23.5)",
       "refused (exit 2, one line naming --lr), nothing marked finished", weight=2)  # fmt: skip
def train_nan_rate(ws: Workspace) -> Outcome:
    out = ws.path("b5b_model")
    command = ws.lossal("train", "--data", ws.path("gray"), "--out", out, *TRAIN_FAST[:-2], "--lr", "nan",
                        timeout=TRAIN_TIMEOUT)  # fmt: skip
    return verdict({"one-line refusal": command.is_one_line_refusal(), "names --lr": "--lr" in command.err,
                    "not finished": not training_finished(out)}, command.describe())  # fmt: skip


@probe("B5c", "`lossal train --lr 1e9` (23.5)",
       "training stops when the loss turns NaN/inf: non-zero exit, one line, nothing marked finished (or, if the "
       "loss stays finite, weights finite: `lossal export` accepts the model)", weight=2)  # fmt: skip
def train_diverging(ws: Workspace) -> Outcome:
    out = ws.path("b5c_model")
    command = ws.lossal("train", "--data", ws.path("gray"), "--out", out, "--backbone", "small_cnn", "--width", "4",
                        "--epochs", "2", "--batch-size", "8", "--lr", "1e9", "--quiet", timeout=TRAIN_TIMEOUT)  # fmt: skip
    if command.code == 0:
        export = ws.lossal("export", os.path.join(out, "model.keras"), "--base-path", ws.path("b5c_base"))
        return verdict({"finite weights (export accepts)": export.code == 0},
                       f"train {command.describe()}; export {export.describe()}")  # fmt: skip
    lines = command.error_lines()
    stopped = command.code not in (None, 0) and 0 < len(lines) <= 3 and "Traceback" not in command.output
    return verdict({"stopped with one line": stopped, "not finished": not training_finished(out)},
                   command.describe())  # fmt: skip


@probe("B5d", "export of NaN weights (23.5)",
       "a LossLearningModel with one NaN kernel saved as .keras: `lossal export` exit 2, one line naming the "
       "variable, no version written", kind="api")  # fmt: skip
def export_nan_weights(ws: Workspace) -> Outcome:
    model = small_model()
    model.predict(model_inputs(2), verbose=0)
    kernel = next(variable for variable in model.weights if "kernel" in variable.path)
    first = np.arange(int(np.prod(kernel.shape))).reshape(kernel.shape) == 0
    kernel.assign(np.where(first, np.nan, kernel.numpy()).astype("float32"))
    path = os.path.join(ws.path("b5d"), "model.keras")
    os.makedirs(os.path.dirname(path))
    model.save(path)
    base = ws.path("b5d_base")
    command = ws.lossal("export", path, "--base-path", base)
    versions = os.listdir(base) if os.path.isdir(base) else []
    return verdict(
        {"one-line refusal": command.is_one_line_refusal(), "names the variable": kernel.path in command.err
         or kernel.name in command.err, "no version": not versions},
        f"{command.describe()}; versions written {versions}",
    )  # fmt: skip


@probe("B5e", "export base path that is a file (23.5)", "exit 2, one line, no traceback; the file untouched")
def export_base_is_file(ws: Workspace) -> Outcome:
    base = write_bytes(ws.path("b5e_base_file"), b"not a folder")
    command = ws.lossal("export", ws.path("model", "model.keras"), "--base-path", base)
    untouched = open(base, "rb").read() == b"not a folder"
    return verdict({"one-line refusal": command.is_one_line_refusal(), "file untouched": untouched},
                   command.describe())  # fmt: skip


@probe("B5f", "export over a published version (23.5)",
       "`lossal export --version 1` where version 1 is published: exit 2, one line saying what to do; version 1 "
       "unchanged")  # fmt: skip
def export_existing_version(ws: Workspace) -> Outcome:
    version = ws.path("models", "lossal", "1")
    before = digest(os.path.join(version, "saved_model.pb"))
    command = ws.lossal("export", ws.path("model", "model.keras"), "--base-path", ws.path("models", "lossal"),
                        "--version", "1")  # fmt: skip
    unchanged = digest(os.path.join(version, "saved_model.pb")) == before
    return verdict({"one-line refusal": command.is_one_line_refusal(), "version 1 unchanged": unchanged},
                   command.describe())  # fmt: skip


@probe("B6", "REST client and raw uint8 pixels (23.6)",
       "`TFServingClient(protocol='rest').score(uint8 pixels)` raises ValueError naming the dtype before any "
       "Predict, as gRPC does", kind="api")  # fmt: skip
def rest_uint8(ws: Workspace) -> Outcome:
    from keras_lossal.serving import TFServingClient

    pixels = gray_images(3, seed=9)
    observed, checks = [], {}
    for protocol in ("rest", "grpc"):
        target, faults = ws.rest_standin() if protocol == "rest" else ws.grpc_standin()
        before = faults.requests
        try:
            with TFServingClient(target, "lossal", protocol=protocol, retries=0) as client:
                scores = client.score(pixels)["predicted_loss"]
            raised = f"accepted: predicted loss {np.round(scores, 2).tolist()}"
        except ValueError as error:
            raised = f"ValueError: {error}"
        checks[f"{protocol} refuses"] = raised.startswith("ValueError") and "uint8" in raised
        checks[f"{protocol} sent nothing"] = faults.requests == before
        observed.append(f"{protocol}: {clip(raised, 100)!r}")
    return verdict(checks, "; ".join(observed))


@probe("B7a", "malformed Label Studio tasks (23.7)",
       "'result': 'cat' and 'annotations': {...} rejected as malformed tasks, the good task added, exit 3 "
       "(completed with rejects), no traceback")  # fmt: skip
def malformed_tasks(ws: Workspace) -> Outcome:
    folder = ws.path("b7a")
    tasks = [label_studio_task(n, item, f"/data/local-files/?d=pool/{item}.png", "cat") for n, item in
             enumerate("abc", start=1)]  # fmt: skip
    tasks[0]["annotations"][0]["result"] = "cat"
    tasks[1]["annotations"] = {"id": 4}
    write_labeling_pool(folder, ["a", "b", "c"])
    export = write_bytes(os.path.join(folder, "export.json"), json.dumps(tasks).encode())
    command = ws.lossal("ingest", export, "--manifest", os.path.join(folder, "m.jsonl"), "--classes", "cat,dog",
                        "--document-root", folder)  # fmt: skip
    added = [record["id"] for record in read_jsonl(os.path.join(folder, "m.jsonl"))]
    rejects = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(folder, "export.json.rejects.jsonl"))}
    malformed = sorted(item for item, reason in rejects.items() if reason.startswith("malformed task"))
    return verdict({"exit 3": command.code == 3, "no traceback": "Traceback" not in command.output,
                    "good one added": added == ["c"], "both malformed": malformed == ["a", "b"]},
                   f"{command.describe()}; added {added}; malformed {malformed}")  # fmt: skip


@probe("B7b", "`LossLearningModel.fit` with out-of-range labels (23.7)",
       "label 5 for 3 classes: a ValueError naming the label, not TensorFlow's InvalidArgumentError",
       kind="api")  # fmt: skip
def fit_labels_out_of_range(ws: Workspace) -> Outcome:
    model = small_model()
    x, y = model_inputs(8, seed=10), np.array([0, 1, 2, 5, 0, 1, 2, 0])
    try:
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        raised = "no error"
    except Exception as error:  # noqa: BLE001 - which error is raised is the observation
        raised = f"{type(error).__name__}: {' '.join(str(error).split())}"
    is_value_error = raised.startswith("ValueError")
    return verdict({"ValueError": is_value_error, "names label 5": "5" in raised,
                    "not 'Graph execution error'": "Graph execution" not in raised},
                   f"{clip(raised, 160)!r}")  # fmt: skip


@probe("B7c", "npz labels {0,1,2,5} (23.7)",
       "`lossal train --data gap.npz`: refused naming the gap (exit 2, one line), not silently 6 classes")  # fmt: skip
def npz_label_gap(ws: Workspace) -> Outcome:
    path = ws.path("gap.npz")
    np.savez(path, x=gray_images(16, seed=11), y=np.array([0, 1, 2, 5] * 4))
    out = ws.path("b7c_model")
    command = ws.lossal("train", "--data", path, "--out", out, *TRAIN_FAST, timeout=TRAIN_TIMEOUT)
    classes_path = os.path.join(out, "classes.json")
    classes = json.load(open(classes_path)) if os.path.exists(classes_path) else None
    return verdict({"one-line refusal": command.is_one_line_refusal(), "names label 5": "5" in command.err},
                   f"{command.describe()}; classes.json {classes}")  # fmt: skip


@probe("B7d", "retracing warnings in `lossal run` (23.7)",
       "no 'retracing' warning in the output of `lossal run` (2 arms x 3 cycles)")  # fmt: skip
def retracing(ws: Workspace) -> Outcome:
    command = shared_run(ws)
    lines = [line for line in command.output.splitlines() if "retracing" in line.lower()]
    return verdict(
        {"exit 0": command.code == 0, "no retracing": not lines},
        f"{command.describe()}; {len(lines)} retracing line(s) {clip(lines[0], 80) if lines else ''}",
    )


def printed_queue_lines(command: Command) -> list[str]:
    return [line for line in command.out.splitlines() if re.match(r"^\s*\d+\s+-?\d+\.\d{4}\s", line)]


@probe("B7e", "`triage --show 30` (23.7)", "prints 30 queue entries, or all of them when the queue holds fewer")
def triage_show(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    queue = read_jsonl(os.path.join(ws.path("t1"), "queue.jsonl"))
    printed = printed_queue_lines(command)
    return verdict({"exit 0": command.code == 0, "more than 10 to show": len(queue) > 10,
                    "min(30, queue) printed": len(printed) == min(30, len(queue))},
                   f"{command.describe()}; printed {len(printed)} of a queue of {len(queue)}")  # fmt: skip


@probe("B7f", "`triage --threshold nan` (23.7)", "refused: exit 2, one line, no queue written")
def triage_nan_threshold(ws: Workspace) -> Outcome:
    out = ws.path("b7f_out")
    command = ws.lossal("triage", ws.path("pool"), "--model", ws.path("models", "lossal"), "--output", out,
                        "--threshold", "nan")  # fmt: skip
    return verdict(
        {
            "one-line refusal": command.is_one_line_refusal(),
            "no queue": not os.path.exists(os.path.join(out, "queue.jsonl")),
        },
        command.describe(),
    )


@probe("B7g", ".gif files in a triage folder (23.7)",
       "counted as skipped by reason (printed and in summary.json), not silently dropped")  # fmt: skip
def gif_counted(ws: Workspace) -> Outcome:
    command = shared_triage(ws)
    summary_path = os.path.join(ws.path("t1"), "summary.json")
    skipped = json.load(open(summary_path)).get("skipped", {}) if os.path.exists(summary_path) else {}
    printed = [line for line in command.out.splitlines() if line.startswith("skipped")]
    gif = {reason: count for reason, count in skipped.items() if ".gif" in reason}
    return verdict(
        {"in summary.json": sum(gif.values()) == 1, "printed": any(".gif" in line for line in printed)},
        f"{command.describe()}; summary skipped {skipped}; printed {clip(' '.join(printed), 90)!r}",
    )


@probe("B7h", "`lossal train --quiet` (23.7)",
       "hides only the progress bars: the validation and 'wrote ...' lines are still printed")  # fmt: skip
def train_quiet(ws: Workspace) -> Outcome:
    lines = ws.train.out.splitlines()
    return verdict(
        {
            "prints the summary": any(line.startswith("wrote ") for line in lines),
            "no progress bars": "step" not in ws.train.out,
        },
        f"`lossal train ... --quiet` printed {len(lines)} line(s): {clip(' | '.join(lines), 120)!r}",
    )


@probe("B7i", "cuInit line with TF_CPP_MIN_LOG_LEVEL=2 (23.7)",
       "`TF_CPP_MIN_LOG_LEVEL=2 lossal export ...` (as the Makefile sets it) prints no cuInit line")  # fmt: skip
def cuinit_line(ws: Workspace) -> Outcome:
    lines = [line for line in ws.export.err.splitlines() if "cuInit" in line or TF_LOG_LINE.search(line)]
    return verdict(
        {"no cuInit or TF line": not lines},
        f"export {ws.export.describe()}; {len(lines)} such line(s) {clip(lines[0], 80) if lines else ''}",
    )


@probe("B7j", "resume advice (23.7)",
       "a refused resume of `lossal run` (--epochs changed) and of `lossal train` names --restart, not "
       "restart=True")  # fmt: skip
def resume_advice(ws: Workspace) -> Outcome:
    run_refusal, _ = shared_changed_run(ws)
    train_refusal = ws.lossal("train", "--data", ws.path("gray"), "--out", ws.path("model"), *TRAIN_FAST[:4],
                              "--epochs", "2", *TRAIN_FAST[6:], "--quiet")  # fmt: skip
    checks = {}
    for name, command in (("run", run_refusal), ("train", train_refusal)):
        checks[f"{name} names --restart"] = command.code == 2 and "--restart" in command.err
        checks[f"{name} without restart=True"] = "restart=True" not in command.err
    return verdict(checks, f"run: {run_refusal.describe()}; train: {train_refusal.describe()}")


# -------------------------------------------------------------------------------------- the runner
def safely(check: Callable[[Workspace], Outcome], ws: Workspace) -> tuple[Outcome, float]:
    """A probe's outcome; a probe that raises fails with the exception (it is a finding, not a crash of the run)."""
    started = time.monotonic()
    try:
        outcome = check(ws)
    except Exception as error:  # noqa: BLE001
        outcome = Outcome(False, f"the probe raised {type(error).__name__}: {clip(error, 200)}")
    return outcome, time.monotonic() - started


def run_probes(ws: Workspace, probes: list[Probe], jobs: int) -> dict[str, Outcome]:
    """Command-line probes in `jobs` threads while the API probes run here; then the probes that read them all."""
    outcomes: dict[str, Outcome] = {}

    def report(item: Probe, outcome: Outcome, seconds: float) -> None:
        outcomes[item.number] = outcome
        print(f"[{item.number}] {'pass' if outcome.passed else 'FAIL'} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    ordered = sorted(probes, key=lambda item: -item.weight)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(safely, item.check, ws): item for item in ordered if item.kind == "cli"}
        for item in ordered:
            if item.kind == "api":
                report(item, *safely(item.check, ws))
        for future in concurrent.futures.as_completed(futures):
            report(futures[future], *future.result())
    for item in ordered:
        if item.kind == "last":
            report(item, *safely(item.check, ws))
    return outcomes


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(probes: list[Probe], outcomes: dict[str, Outcome]) -> str:
    rows = ["| # | probe | expected | observed | verdict |", "|---|---|---|---|---|"]
    for item in probes:
        outcome = outcomes[item.number]
        verdict_text = "pass" if outcome.passed else "**FAIL**"
        rows.append(f"| {item.number} | {cell(item.name)} | {cell(item.expected)} | {cell(outcome.observed)} | "
                    f"{verdict_text} |")  # fmt: skip
    return "\n".join(rows)


def selected(only: str | None) -> list[Probe]:
    if not only:
        return list(PROBES)
    wanted = {number.strip() for number in only.split(",") if number.strip()}
    unknown = sorted(wanted - {item.number for item in PROBES})
    if unknown:
        raise SystemExit(f"Unknown probe(s) {unknown}; available: {[item.number for item in PROBES]}")
    return [item for item in PROBES if item.number in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated probe numbers, e.g. A5,B2")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    parser.add_argument("--jobs", type=int, default=3, help="command-line probes run side by side (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    probes = selected(args.only)
    if args.list:
        for item in probes:
            print(f"{item.number}\t{item.name}")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this process's own TensorFlow, not the probed commands'
    sys.path[:0] = [ROOT, TESTS]
    started = time.monotonic()
    ws = Workspace(tempfile.mkdtemp(prefix="lossal_probes_"))
    try:
        setup(ws)
        outcomes = run_probes(ws, probes, args.jobs)
    except SetupFailed as error:
        print(f"setup failed: {error}", file=sys.stderr)
        return 2
    finally:
        ws.close()
        if args.keep:
            print(f"work directory kept: {ws.root}", file=sys.stderr)
        else:
            shutil.rmtree(ws.root, ignore_errors=True)
    failed = [item.number for item in probes if not outcomes[item.number].passed]
    print(table(probes, outcomes))
    print(f"\n{len(probes) - len(failed)} of {len(probes)} probes pass"
          f"{'; failing: ' + ', '.join(failed) if failed else ''}; {time.monotonic() - started:.0f} s in all")  # fmt: skip
    if args.json:
        rows = [
            {
                "number": item.number,
                "probe": item.name,
                "expected": item.expected,
                "observed": outcomes[item.number].observed,
                "passed": outcomes[item.number].passed,
            }
            for item in probes
        ]
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
