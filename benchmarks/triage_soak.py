"""Triage soak (reliability): kill -9 and a server restart mid-run must not lose, duplicate or misrank an item.

Builds a pool of images with a share of corrupt files of every kind triage must survive (garbage, a
truncated PNG, a decompression bomb, GIF, empty, over the byte limit, a FIFO and a directory named like
images, a symlink out of the folder, a corrupt JPEG, a 0x0 header, a truncated BMP), exports a small
LossLearningModel and serves it with the gRPC stand-in (`tests/tfserving_standin.py`) in its own process.
Then:

1. an uninterrupted `lossal triage --server ...` run gives the reference;
2. the same command on a fresh output directory is killed with SIGKILL at random moments (`--kills`
   times), the server is killed and restarted once mid-run, and the command is re-run until it exits 0;
3. checks: every item in exactly one of scored.jsonl / failures.jsonl, no id twice in either, the same
   scored and failed ids (and failure reasons) as the reference, and the same queue.

Run: `python benchmarks/triage_soak.py` (10,000 items, about 2 minutes on 2 shared cores), or
`--items 500 --kills 2` for a smoke run. Exit code 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, "tests", "tfserving_standin.py")
LABELS = [f"class_{index}" for index in range(10)]
SIZE = 16
MAX_IMAGE_BYTES = 100_000
CORRUPT_KINDS = (
    "garbage", "truncated_png", "bomb_png", "gif", "empty", "too_large", "fifo", "directory",
    "symlink_out", "corrupt_jpeg", "zero_size_png", "truncated_bmp",
)  # fmt: skip


# ----------------------------------------------------------------------------------------- the pool
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(height: int, width: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + b"\x00" * 16


def _bmp24(pixels) -> bytes:
    height, width, _ = pixels.shape
    row_bytes = (width * 3 + 3) // 4 * 4
    rows = b"".join(pixels[y, :, ::-1].tobytes().ljust(row_bytes, b"\x00") for y in range(height - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    return header + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0) + rows


def build_pool(folder: str, items: int, corrupt_fraction: float, seed: int) -> dict[str, str]:
    """Writes the pool; returns `{item id: kind}` ("png", "jpeg", "bmp" or a corrupt kind)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    corrupt_count = max(len(CORRUPT_KINDS), round(items * corrupt_fraction))
    kinds = ["png"] * items
    for position, index in enumerate(rng.choice(items, size=corrupt_count, replace=False)):
        kinds[index] = CORRUPT_KINDS[position % len(CORRUPT_KINDS)]
    for index in rng.choice([i for i, kind in enumerate(kinds) if kind == "png"], size=items // 20, replace=False):
        kinds[index] = "jpeg" if index % 2 else "bmp"
    os.makedirs(folder)
    outside = os.path.join(os.path.dirname(folder), "outside.png")
    pixels = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    with open(outside, "wb") as handle:
        handle.write(tf.io.encode_png(pixels).numpy())
    expected = {}
    for index, kind in enumerate(kinds):
        extension = {"jpeg": ".jpg", "corrupt_jpeg": ".jpg", "bmp": ".bmp", "truncated_bmp": ".bmp"}.get(kind, ".png")
        item_id = f"d{index % 100:02d}/item_{index:05d}{extension}"
        path = os.path.join(folder, item_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        expected[item_id] = kind
        image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        if kind == "fifo":
            os.mkfifo(path)
            continue
        if kind == "directory":
            os.mkdir(path)
            continue
        if kind == "symlink_out":
            os.symlink(outside, path)
            continue
        png = tf.io.encode_png(image).numpy()
        payload = {
            "png": png,
            "jpeg": tf.io.encode_jpeg(image).numpy(),
            "bmp": _bmp24(image),
            "garbage": rng.bytes(200),
            "truncated_png": png[: len(png) // 2],
            "bomb_png": _png_header_only(100_000, 100_000),
            "gif": b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00" * 40,
            "empty": b"",
            "too_large": png + b"\x00" * (MAX_IMAGE_BYTES + 1),
            "corrupt_jpeg": b"\xff\xd8\xff\xe0" + rng.bytes(300),
            "zero_size_png": _png_header_only(0, 0),
            "truncated_bmp": b"BM" + b"\x00" * 10,
        }[kind]
        with open(path, "wb") as handle:
            handle.write(payload)
    return expected


def export_model(base: str) -> None:
    import keras

    import keras_lossal as kl
    from keras_lossal.preprocessing import ImagePreprocessing

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    features = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(features)
    logits = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling2D()(features))
    model = kl.LossLearningModel(keras.Model(inputs, logits), head=kl.LossPredictionHead(units=8))
    preprocessing = ImagePreprocessing(SIZE, SIZE, 3, mean=(0.5,), std=(0.25,))
    kl.export_for_serving(model, base, preprocessing=preprocessing, labels=LABELS, warmup=False)


# --------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


class Server:
    """The gRPC stand-in in a process of its own, on a fixed port, so it can be killed and restarted."""

    def __init__(self, base: str, port: int):
        self.base, self.port, self.process = base, port, None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, STANDIN, self.base, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline()  # "ready localhost:PORT" once it serves
        if not line.startswith("ready"):
            raise RuntimeError(f"the gRPC stand-in did not start: {line!r}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


COMMIT_SECONDS = 0.2


def triage_command(pool: str, out: str, port: int, top_k: int) -> list[str]:
    return [
        sys.executable, "-m", "keras_lossal.cli", "triage", pool, "--server", f"grpc://localhost:{port}",
        "--output", out, "--top-k", str(top_k), "--batch-size", "32", "--concurrency", "2",
        "--max-image-bytes", str(MAX_IMAGE_BYTES), "--labels", ",".join(LABELS), "--show", "0",
        # Commits every 0.2 s (default 1 s): the logs then grow in steps the kills can be aimed at, on a pool
        # that scores in about 2 s, and each commit still holds several batches.
        "--commit-seconds", str(COMMIT_SECONDS),
    ]  # fmt: skip


def log_bytes(out: str) -> int:
    """How far a run got: the bytes in its two logs (cheap to poll)."""
    paths = [os.path.join(out, name) for name in ("scored.jsonl", "failures.jsonl")]
    return sum(os.path.getsize(path) for path in paths if os.path.exists(path))


def reference_run(command: list[str]) -> float:
    start = time.monotonic()
    completed = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"reference run failed ({completed.returncode}): {completed.stderr}")
    return time.monotonic() - start


def soak_run(command: list[str], out: str, server: Server, full_bytes: int, kills: int, rng) -> dict:
    """Re-runs `command` until it exits 0, after `kills` SIGKILLs and one server kill-and-restart.

    Scoring is fast next to start-up, so while work is left the moments are drawn in progress, not time:
    a launch is killed once its logs have grown by a random share (up to 60 %) of what is left of
    `full_bytes` (the uninterrupted run's logs); the server is killed and restarted likewise during the
    second launch (or the next one, if that launch finished first), which is not killed. Once little is left, kills come at a random time of a launch
    (start-up, resume bookkeeping, the final compaction and queue writes).
    """
    log = []
    kills_done, launch, restarted, idle_seconds = 0, 0, False, 8.0
    while True:
        before = log_bytes(out)
        left = full_bytes - before
        target = before + rng.uniform(0.0, 0.6) * left if left > 0.05 * full_bytes else None
        # The server restart comes in the second launch, or the first after it that did not get to it (the logs
        # grow in commits, so a launch can finish between two polls); such a launch is not killed.
        restart_due = launch >= 1 and not restarted
        restart_target = target if restart_due else None
        restart_time = rng.uniform(0.0, idle_seconds) if restart_due and target is None else None
        kill_target = target if kills_done < kills and not restart_due else None
        kill_time = (
            rng.uniform(0.0, idle_seconds) if kills_done < kills and not restart_due and target is None else None
        )
        event = {"launch": launch, "log_bytes_before": before}
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        start = time.monotonic()
        while process.poll() is None:
            grown, elapsed = log_bytes(out), time.monotonic() - start
            if (restart_target is not None and grown >= restart_target) or (
                restart_time is not None and elapsed >= restart_time
            ):
                server.kill()
                down = time.monotonic()
                time.sleep(0.5)
                server.start()
                restarted = True
                event["server_restart"] = {"at_log_bytes": grown, "down_seconds": round(time.monotonic() - down, 1)}
                restart_target = restart_time = None
            if (kill_target is not None and grown >= kill_target) or (kill_time is not None and elapsed >= kill_time):
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills_done += 1
                event["killed"] = {"at_log_bytes": grown, "after_seconds": round(elapsed, 2)}
            time.sleep(0.005)
        if process.returncode == 0 and target is None:
            idle_seconds = time.monotonic() - start  # what a launch with nothing left to score takes
        event["returncode"] = process.returncode
        event["log_bytes_after"] = log_bytes(out)
        if process.returncode not in (0, -signal.SIGKILL):
            event["stderr"] = process.stderr.read().strip()[-300:]
        log.append(event)
        launch += 1
        if process.returncode == 0 and kills_done >= kills and restarted:
            return {"launches": log, "kills": kills_done, "server_restarts": 1}
        if launch > kills + 20:
            raise RuntimeError(f"the soak did not finish: {log}")


# ------------------------------------------------------------------------------------------ checks
def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def check(out: str, reference_out: str, expected: dict[str, str]) -> dict:
    scored = read_jsonl(os.path.join(out, "scored.jsonl"))
    failures = read_jsonl(os.path.join(out, "failures.jsonl"))
    scored_ids = [record["id"] for record in scored]
    failed_ids = [record["id"] for record in failures]
    reference_scored = {r["id"]: r for r in read_jsonl(os.path.join(reference_out, "scored.jsonl"))}
    reference_failures = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(reference_out, "failures.jsonl"))}
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    reference_queue = read_jsonl(os.path.join(reference_out, "queue.jsonl"))
    loss_gap = max(
        (abs(record["predicted_loss"] - reference_scored[record["id"]]["predicted_loss"]) for record in scored),
        default=0.0,
    )
    summary = json.load(open(os.path.join(out, "summary.json")))
    results = {
        "items": len(expected),
        "scored": len(scored),
        "failed": len(failures),
        "corrupt_items": sum(kind in CORRUPT_KINDS for kind in expected.values()),
        "no_id_twice_in_scored": len(scored_ids) == len(set(scored_ids)),
        "no_id_twice_in_failures": len(failed_ids) == len(set(failed_ids)),
        "each_item_in_exactly_one_log": sorted(scored_ids + failed_ids) == sorted(expected),
        "retryable_failures_left": sum(bool(record.get("retryable")) for record in failures),
        "scored_ids_equal_reference": set(scored_ids) == set(reference_scored),
        "failure_reasons_equal_reference": {r["id"]: r["reason"] for r in failures} == reference_failures,
        "corrupt_items_all_failed": {i for i, k in expected.items() if k in CORRUPT_KINDS} == set(failed_ids),
        "queue_ids_equal_reference": [r["id"] for r in queue] == [r["id"] for r in reference_queue],
        "queue_length": len(queue),
        "max_predicted_loss_gap": loss_gap,
        "summary_totals": [summary["total_scored"], summary["total_failed"]],
    }
    checks = (
        "no_id_twice_in_scored",
        "no_id_twice_in_failures",
        "each_item_in_exactly_one_log",
        "scored_ids_equal_reference",
        "failure_reasons_equal_reference",
        "corrupt_items_all_failed",
        "queue_ids_equal_reference",
    )
    results["ok"] = all(results[name] for name in checks) and results["retryable_failures_left"] == 0
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--corrupt-fraction", type=float, default=0.01, help="share of corrupt files (all kinds)")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs of the triage process at random moments")
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="default: a temporary directory, removed at the end")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = args.work_dir or tempfile.mkdtemp(prefix="triage_soak_")
    pool, base = os.path.join(work, "pool"), os.path.join(work, "model")
    started = time.monotonic()
    expected = build_pool(pool, args.items, args.corrupt_fraction, args.seed)
    export_model(base)
    server = Server(base, free_port())
    server.start()
    try:
        reference_out, soak_out = os.path.join(work, "reference"), os.path.join(work, "soak")
        reference_seconds = reference_run(triage_command(pool, reference_out, server.port, args.top_k))
        print(f"reference (uninterrupted) run: {reference_seconds:.1f} s")
        command = triage_command(pool, soak_out, server.port, args.top_k)
        soak = soak_run(command, soak_out, server, log_bytes(reference_out), args.kills, random.Random(args.seed))
    finally:
        server.kill()
    results = {**check(soak_out, reference_out, expected), **soak, "reference_seconds": round(reference_seconds, 1)}
    results["total_seconds"] = round(time.monotonic() - started, 1)
    for event in soak["launches"]:
        print(json.dumps(event))
    for key, value in results.items():
        if key != "launches":
            print(f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    if not args.work_dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
