"""Helpers of the ML backend tests: fake round steps (fast, pausable), images, a backend over the shared export.

Run as a script, this module is a fake round step:

    python labelstudio_backend_helpers.py train OUT [--wait-for FILE]
    python labelstudio_backend_helpers.py export SOURCE_VERSION_DIR BASE VERSION [--wait-for FILE]

`train` writes `OUT/training.json` saying finished. `export` publishes like `lossal export`: it copies the
source version into a hidden staging directory under BASE, everything but `saved_model.pb` first, waits for
FILE (so a test can kill it half-way), copies `saved_model.pb` and renames the staging directory to BASE/VERSION.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CLASSES = ["cat", "dog", "bird"]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single">'
    + "".join(f'<Choice value="{name}"/>' for name in CLASSES)
    + "</Choices></View>"
)


def _wait(path: str | None) -> None:
    while path and not os.path.exists(path):
        time.sleep(0.1)


def _fake_step(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("train", "export"))
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--wait-for")
    args = parser.parse_args(argv)
    if args.step == "train":
        (out,) = args.paths
        _wait(args.wait_for)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "training.json"), "w") as handle:
            json.dump({"finished": True}, handle)
        return
    source, base, version = args.paths
    staging = os.path.join(base, f".tmp-export-{uuid.uuid4().hex}")
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("saved_model.pb"))
    _wait(args.wait_for)
    shutil.copy(os.path.join(source, "saved_model.pb"), staging)
    os.rename(staging, os.path.join(base, version))


def fake_commands(source_version_dir: str, wait_train: str | None = None, wait_export: str | None = None):
    """`RoundCommands` whose steps are this module's fake steps (the export copies `source_version_dir`)."""
    from keras_lossal.labelstudio_backend.retraining import RoundCommands

    script = os.path.abspath(__file__)

    class FakeCommands(RoundCommands):
        def train(self, round_):
            wait = ["--wait-for", wait_train] if wait_train else []
            return [sys.executable, script, "train", round_.path("train"), *wait]

        def export(self, round_, base_path):
            wait = ["--wait-for", wait_export] if wait_export else []
            return [sys.executable, script, "export", source_version_dir, base_path, str(round_.version), *wait]

    return FakeCommands()


def write_png(path: str, level: int, size: int = 8) -> str:
    """An RGB PNG of one brightness (with a little noise), written without TensorFlow."""
    import numpy as np

    pixels = np.clip(np.random.default_rng(level).normal(level, 10, (size, size, 3)), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(png)
    return path


if __name__ == "__main__":
    _fake_step(sys.argv[1:])


class RecordingProxy:
    """Forwards HTTP requests to the backend and records what Label Studio sent (secrets redacted).

    A Starlette app on uvicorn in a thread of the test process, between Label Studio and the backend:
    `recorded` holds `{"method", "path", "headers", "body", "status", "response"}` per request.
    """

    REDACTED = "<redacted>"

    def __init__(self, target: str, port: int):
        import threading

        import requests
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.target, self.port, self.url = target.rstrip("/"), port, f"http://127.0.0.1:{port}"
        self.recorded: list[dict] = []
        session = requests.Session()

        async def forward(request):
            body = await request.body()
            headers = {
                key: value for key, value in request.headers.items() if key.lower() not in ("host", "content-length")
            }
            answer = await _in_thread(session.request, request.method, self.target + request.url.path, data=body,
                                      headers=headers, timeout=300)  # fmt: skip
            self._record(request, headers, body, answer)
            return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

        app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        # log_config=None: uvicorn's default config binds logging handlers to the sys.stderr of the moment, which
        # under pytest is a capture stream closed at the end of the test (later log lines then kill the process).
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def _record(self, request, headers: dict, body: bytes, answer) -> None:
        kept = {key.lower(): (self.REDACTED if key.lower() in ("authorization", "x-lossal-secret") else value)
                for key, value in headers.items() if key.lower() in ("authorization", "x-lossal-secret", "content-type",
                                                                      "user-agent")}  # fmt: skip
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        try:
            response = answer.json()
        except ValueError:
            response = answer.text
        self.recorded.append({"method": request.method, "path": request.url.path, "headers": kept, "body": parsed,
                              "status": answer.status_code, "response": response})  # fmt: skip

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def _in_thread(function, *args, **kwargs):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args, **kwargs)
