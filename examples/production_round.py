"""Two production rounds on Fashion-MNIST, end to end, with a simulated annotator.

A production round of keras-lossal is six commands:

    lossal train → lossal export → TF Serving → lossal triage → Label Studio → lossal ingest

and then `lossal train` again on the grown labeled set. This example runs that loop twice on
Fashion-MNIST (from Debian's `dataset-fashion-mnist`, as `examples/demo.py`), the way a team would run
it on its own data:

1. A labeled seed set (500 images, 50 per class) and an unlabeled pool (3,000 images) are written as
   PNG files under `production_out/images/`, plus the labeled-set manifest of the seed set
   (`production_out/labeled.jsonl`): the single source of truth for what is labeled.
2. Each round trains a model on the manifest (`lossal train`), publishes it as the next TF Serving
   version (`lossal export`), triages the pool's unlabeled images by predicted loss (`lossal triage`,
   300 a round, with Label Studio tasks), lets a simulated annotator label the queue (a Label Studio
   JSON export, in the layout a real Label Studio 1.23.2 writes), and adds those labels to the
   manifest (`lossal ingest`).
3. The Fashion-MNIST test set, never written to disk, measures each round's model.

The steps run through `keras_lossal.cli.main`, exactly what the `lossal` command runs, and each is
printed as the shell command it stands for. Re-running continues where a run stopped: a step whose
output exists is skipped (`--fresh` starts over).

Run: `python examples/production_round.py [--out production_out] [--rounds 2] [--epochs 20] [--fresh]`
(a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import shutil
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from keras_lossal import cli, data  # noqa: E402
from keras_lossal.commands.ingest import COMPLETED_WITH_REJECTS  # noqa: E402
from keras_lossal.files import atomic_open, atomic_write  # noqa: E402
from keras_lossal.labeling import manifest  # noqa: E402

CLASS_NAMES = list(data.FASHION_MNIST_CLASSES)
# What the simulated annotator types once instead of "T-shirt/top": Label Studio stores labels outside the
# label config as they are, so ingest must reject it.
BAD_LABEL = "T-shirt"


# Every step is a `lossal` command. It is printed as the shell line a person would type, then run
# through the real command line; its output is printed indented and returned.
def lossal(*arguments: str, done: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
    print(f"$ lossal {shlex.join(arguments)}", flush=True)
    if done is not None:
        print(f"    (done earlier: {done})")
        return ""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(list(arguments))
    output = buffer.getvalue().rstrip()
    if output:
        print("\n".join("    " + line for line in output.splitlines()), flush=True)
    if code not in ok:
        raise SystemExit(f"lossal {arguments[0]} failed with exit code {code}")
    return output


class Workspace:
    """Where each artifact of the rounds lives under `--out`."""

    def __init__(self, out: str):
        self.out = out
        self.images = os.path.join(out, "images")  # Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
        self.manifest = os.path.join(out, "labeled.jsonl")
        self.models = os.path.join(out, "models", "lossal")  # the TF Serving base path

    def round_dir(self, number: int) -> str:
        return os.path.join(self.out, "rounds", f"round_{number}")

    def model_dir(self, number: int) -> str:
        return os.path.join(self.out, "models", f"round_{number}")

    def version_dir(self, number: int) -> str:
        return os.path.join(self.models, str(number + 1))

    def unlabeled(self, number: int) -> str:
        return os.path.join(self.out, f"unlabeled_round_{number}.jsonl")

    def triage(self, number: int) -> str:
        return os.path.join(self.round_dir(number), "triage")

    def export(self, number: int) -> str:
        return os.path.join(self.round_dir(number), f"label_studio_export_round_{number}.json")


# --------------------------------------------------------------------------- the data, as it would arrive
# Your own data would already be files. Here the seed set is stratified (every class present, so the
# first model and its label config know all ten classes) and the pool is a random draw; the pool's
# true classes stay in memory as the simulated annotator's knowledge. File names are the images'
# positions in Fashion-MNIST's training set, so a re-run writes the same files.
def write_images(space: Workspace, fashion, seed_size: int, pool_size: int, seed: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    per_class = seed_size // len(CLASS_NAMES)
    seed_positions = np.concatenate(
        [rng.choice(np.flatnonzero(fashion.y_train == label), per_class, replace=False) for label in range(10)]
    )
    rest = np.setdiff1d(np.arange(len(fashion.y_train)), seed_positions)
    pool_positions = np.sort(rng.choice(rest, pool_size, replace=False))
    seed_records = [_write_png(space, "seed", position, fashion) for position in np.sort(seed_positions)]
    pool_records = [_write_png(space, "pool", position, fashion) for position in pool_positions]
    if not os.path.exists(space.manifest):
        manifest.write_manifest(space.manifest, seed_records)
    return {record["id"]: record["label"] for record in pool_records}


def _write_png(space: Workspace, folder: str, position: int, fashion) -> dict[str, str]:
    import tensorflow as tf

    item_id = f"{folder}/{position:05d}.png"
    path = os.path.join(space.images, item_id)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, binary=True) as handle:
            handle.write(tf.io.encode_png(fashion.x_train[position]).numpy())
    label = CLASS_NAMES[int(fashion.y_train[position])]
    return {"id": item_id, "path": manifest.relative_to_manifest(path, space.manifest), "label": label}


# --------------------------------------------------------------------------- one round
def run_round(number: int, space: Workspace, args, answers: dict[str, str], fashion) -> dict:
    record_path = os.path.join(space.round_dir(number), "round.json")
    if os.path.exists(record_path):
        with open(record_path) as stream:
            record = json.load(stream)
        print(f"\n== Round {number}: done earlier ==\n{_describe(record)}")
        return record
    print(f"\n== Round {number} ==", flush=True)
    labeled = train(number, space, args)
    accuracy = evaluate(number, space, fashion)
    print(f"round {number}: labeled set {labeled} images; test accuracy {accuracy:.4f} "
          f"(Fashion-MNIST test set, {len(fashion.y_test):,} images)")  # fmt: skip
    export(number, space)
    queue = triage(number, space, args)
    annotate(number, space, answers)
    summary = ingest(number, space)
    added = len(manifest.read_manifest(space.manifest)) - labeled
    record = {"round": number, "labeled": labeled, "version": number + 1, "accuracy": accuracy,
              "queued": queue, "added": added, "ingest": summary}  # fmt: skip
    os.makedirs(space.round_dir(number), exist_ok=True)
    atomic_write(record_path, json.dumps(record, indent=1) + "\n")
    return record


def _describe(record: dict) -> str:
    return (
        f"round {record['round']}: labeled set {record['labeled']} images; test accuracy {record['accuracy']:.4f}; "
        f"model version {record['version']}; queued {record['queued']}\n{record['ingest']}"
    )


# Train. A small CNN and 20 epochs (SGD, `lossal train`'s default optimiser) keep a round to a minute on
# a CPU. `lossal train` checkpoints every epoch and resumes, and refuses a finished directory with other
# data, so each round trains into its own directory (from scratch: the rounds differ only by the labels).
def train(number: int, space: Workspace, args) -> int:
    out = space.model_dir(number)
    record = _read_json(os.path.join(out, "training.json"))
    finished = record is not None and record.get("finished")
    lossal(
        "train", "--data", space.manifest, "--out", out, "--backbone", "small_cnn", "--width", "16",
        "--epochs", str(args.epochs), "--batch-size", "32", "--quiet",
        done=os.path.join(out, "model.keras") if finished else None,
    )  # fmt: skip
    record = _read_json(os.path.join(out, "training.json"))
    validation = record["validation"]
    print(f"    validation accuracy {validation['accuracy']:.4f}, head's ranking accuracy "
          f"{validation['ranking_accuracy']:.4f} (a tenth of each class held out)")  # fmt: skip
    return int(record["settings"]["num_items"])


# The held-out test set goes through the preprocessing `lossal train` wrote (uint8 pixels / 255), in the
# class order of `classes.json` (the model's output i is class i of that file, sorted by name).
def evaluate(number: int, space: Workspace, fashion) -> float:
    out = space.model_dir(number)
    stored = _read_json(os.path.join(out, "test_accuracy.json"))
    if stored is not None:
        return float(stored["accuracy"])
    import keras

    import keras_lossal.model  # noqa: F401 - registers LossLearningModel for loading

    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    preprocessing = data.preprocessing_from_config(_read_json(os.path.join(out, "preprocessing.json")))
    order = _read_json(os.path.join(out, "classes.json"))
    labels = np.array([order.index(CLASS_NAMES[label]) for label in fashion.y_test])
    metrics = model.evaluate(
        data.evaluation_pipeline(fashion.x_test, labels, preprocessing), verbose=0, return_dict=True
    )
    accuracy = float(metrics["accuracy"])
    atomic_write(os.path.join(out, "test_accuracy.json"), json.dumps({"accuracy": accuracy}) + "\n")
    return accuracy


# Export: round N is version N + 1 under the TF Serving base path. Versions are never overwritten, so
# the step is skipped when the version directory exists (export writes to a temporary name and
# renames, so an existing version directory is a complete one).
def export(number: int, space: Workspace) -> None:
    version_dir = space.version_dir(number)
    lossal(
        "export", os.path.join(space.model_dir(number), "model.keras"), "--base-path", space.models,
        "--version", str(number + 1), done=version_dir if os.path.isdir(version_dir) else None,
    )  # fmt: skip


# Triage the pool's images that are not labeled yet (a pool manifest: the labeled set is what the
# manifest says, not what a folder holds). In production TF Serving serves `models/lossal` and triage
# sends the images to it: `lossal triage ... --server grpc://localhost:8500` (serving/README.md). TF
# Serving's binary is not available here, so the example scores in-process from the same SavedModel
# version directory, running the same signature (`score_image_bytes`) the server would.
def triage(number: int, space: Workspace, args) -> int:
    labeled = {record["id"] for record in manifest.read_manifest(space.manifest)}
    pool_manifest = space.unlabeled(number)
    if not os.path.exists(pool_manifest):
        pool_dir = os.path.join(space.images, "pool")
        # Absolute paths: triage names Label Studio images from the paths as it reads them (see the report).
        lines = [
            json.dumps({"id": f"pool/{name}", "path": os.path.abspath(os.path.join(pool_dir, name))})
            for name in sorted(os.listdir(pool_dir))
            if f"pool/{name}" not in labeled
        ]
        atomic_write(pool_manifest, "\n".join(lines) + "\n")
    out = space.triage(number)
    finished = os.path.exists(os.path.join(out, "summary.json"))
    lossal(
        "triage", pool_manifest, "--model", space.version_dir(number), "--output", out,
        "--top-k", str(args.top_k), "--label-studio-document-root", space.images, "--show", "3",
        done=os.path.join(out, "label_studio_tasks.json") if finished else None,
    )  # fmt: skip
    return len(_read_json(os.path.join(out, "label_studio_tasks.json")))


# --------------------------------------------------------------------------- the simulated annotator
# People import `label_studio_tasks.json` into a Label Studio project whose labeling interface is
# triage's `label_config.xml`, label, and export JSON (docs/labeling.md). The simulated export has the
# layout a real Label Studio 1.23.2 writes (tests/data/labelstudio/export.json): tasks with `data`,
# `annotations[].result[].value.choices`, `completed_by`, `was_cancelled` and increasing ids. Annotator 1
# labels every task with its true class, except that they skip one task and type one label outside
# the class list; annotator 2 gives a second opinion on six tasks and disagrees on two of them.
SKIPPED, MISTYPED, SECOND_OPINIONS, DISAGREEMENTS = 0, 1, range(2, 8), (2, 3)


def annotate(number: int, space: Workspace, answers: dict[str, str]) -> None:
    path = space.export(number)
    print(f"(Label Studio: import {space.triage(number)}/label_studio_tasks.json, label, export JSON -> {path})")
    if os.path.exists(path):
        print(f"    (done earlier: {path})")
        return
    with open(os.path.join(space.triage(number), "label_studio_tasks.json")) as stream:
        tasks = json.load(stream)
    project = _Project(number + 1)
    exported = [project.task(task_id, task) for task_id, task in enumerate(tasks, start=1)]
    for position, task in enumerate(exported):
        truth = answers[task["data"]["item_id"]]
        choice = BAD_LABEL if position == MISTYPED else truth
        task["annotations"].append(project.annotation(task, user=1, choice=choice, cancelled=position == SKIPPED))
    for position in SECOND_OPINIONS:  # annotator 2 labels after annotator 1: higher annotation ids
        task = exported[position]
        truth = answers[task["data"]["item_id"]]
        other = CLASS_NAMES[(CLASS_NAMES.index(truth) + 1) % len(CLASS_NAMES)]
        task["annotations"].append(
            project.annotation(task, user=2, choice=other if position in DISAGREEMENTS else truth)
        )
    for task in exported:
        task["total_annotations"] = sum(not item["was_cancelled"] for item in task["annotations"])
        task["cancelled_annotations"] = sum(item["was_cancelled"] for item in task["annotations"])
    atomic_write(path, json.dumps(exported))
    print(f"    wrote {path}: {len(exported)} tasks, {sum(len(task['annotations']) for task in exported)} annotations")


class _Project:
    """Label Studio's bookkeeping for one project: task and annotation ids, timestamps, ids of users."""

    def __init__(self, project_id: int):
        self.project_id, self.annotation_id = project_id, 0
        self.timestamp = "2026-12-01T12:00:00.000000Z"

    def task(self, task_id: int, imported: dict) -> dict:
        # Predictions come back as imported (the fields Label Studio adds to them are not read by ingest).
        return {
            "id": task_id, "annotations": [], "drafts": [], "predictions": imported.get("predictions", []),
            "data": imported["data"], "meta": {}, "created_at": self.timestamp, "updated_at": self.timestamp,
            "allow_skip": True, "inner_id": task_id, "total_annotations": 0, "cancelled_annotations": 0,
            "total_predictions": len(imported.get("predictions", [])), "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": self.project_id,
            "updated_by": 1, "comment_authors": [],
        }  # fmt: skip

    def annotation(self, task: dict, user: int, choice: str, cancelled: bool = False) -> dict:
        self.annotation_id += 1
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
        unique = uuid.uuid5(uuid.NAMESPACE_URL, f"project/{self.project_id}/annotation/{self.annotation_id}")
        return {
            "id": self.annotation_id, "completed_by": user, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": self.timestamp, "updated_at": self.timestamp,
            "draft_created_at": None, "lead_time": None, "prediction": {}, "result_count": len(result),
            "unique_id": str(unique), "import_id": None, "last_action": None, "bulk_created": False,
            "task": task["id"], "project": self.project_id, "updated_by": user, "parent_prediction": None,
            "parent_annotation": None, "last_created_by": None,
        }  # fmt: skip


# --------------------------------------------------------------------------- ingest
# The export's labels join the manifest: each annotator's latest vote, the majority wins, and ties,
# labels outside the label config and ids triage never saw go to the rejects file, never into the
# labeled set. Ingesting the same export twice changes nothing. The simulated annotator plants rejects,
# so ingest ends with exit status 3 ("completed with rejects"), which a script can tell from a failure (2).
def ingest(number: int, space: Workspace) -> str:
    return lossal(
        "ingest", space.export(number), "--manifest", space.manifest,
        "--label-config", os.path.join(space.triage(number), "label_config.xml"),
        "--known-items", space.triage(number), "--rejects", os.path.join(space.round_dir(number), "rejects.jsonl"),
        ok=(0, COMPLETED_WITH_REJECTS),
    )  # fmt: skip


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as stream:
        return json.load(stream)


def print_table(records: list[dict]) -> None:
    print("\nround  labeled images  model version  test accuracy  added by ingest")
    for record in records:
        print(f"{record['round']:>5}  {record['labeled']:>14}  {record['version']:>13}  {record['accuracy']:>13.4f}  "
              f"{record['added']:>15}")  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Two production rounds on Fashion-MNIST with a simulated annotator.")
    parser.add_argument("--out", default="production_out")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory (default: Debian's package)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed-size", type=int, default=500, help="labeled seed images (a tenth per class)")
    parser.add_argument("--pool-size", type=int, default=3000, help="unlabeled pool images")
    parser.add_argument("--top-k", type=int, default=300, help="images triaged for labeling per round")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    if args.top_k <= max(SECOND_OPINIONS):
        parser.error(f"--top-k must be more than {max(SECOND_OPINIONS)} (the annotator's planted cases)")
    if args.fresh and os.path.isdir(args.out):
        shutil.rmtree(args.out)

    fashion = data.load_fashion_mnist(args.data_dir)
    space = Workspace(args.out)
    answers = write_images(space, fashion, args.seed_size, args.pool_size, args.seed)
    print(f"seed set: {space.manifest} ({args.seed_size} labeled images); pool: {space.images}/pool "
          f"({len(answers)} unlabeled images)")  # fmt: skip
    records = [run_round(number, space, args, answers, fashion) for number in range(args.rounds)]
    print_table(records)
    print(f"labeled set now: {len(manifest.read_manifest(space.manifest))} images in {space.manifest} "
          f"(the next `lossal train` starts round {args.rounds})")  # fmt: skip
    return {"rounds": records, "workspace": space}


if __name__ == "__main__":
    main()
