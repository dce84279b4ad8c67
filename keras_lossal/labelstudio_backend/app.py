"""The web layer: a Starlette app over `LabelStudioBackend`, served by uvicorn, with its limits and the shared secret.

Limits: a request body over `max_request_bytes` is answered 413 (checked
against `Content-Length`, then while reading), a body not received within
`body_timeout` 408; at most `max_concurrent_predictions` /predict requests
score at once, the others wait up to `queue_timeout` (then 503); uvicorn
serves at most `max_connections` connections (then 503). Scoring and label
merges run in worker threads, so `/health` answers while a batch is scored.

With a secret, every request must carry it: as the password of HTTP basic
auth (any user name; Label Studio 1.23's ML backend connection sends basic
auth, `auth_method: "BASIC_AUTH"`) or in the `X-Lossal-Secret` header (Label
Studio's webhooks send the extra headers of the webhook, set with
`PATCH /api/webhooks/{id}`). Anything else is answered 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keras_lossal.labelstudio_backend.config import SECRET_HEADER, BackendConfig
from keras_lossal.labelstudio_backend.protocol import ProtocolError
from keras_lossal.labelstudio_backend.service import LabelStudioBackend, RequestRefused
from keras_lossal.serving.client import ServingError

__all__ = ["create_app", "serve"]

logger = logging.getLogger("keras_lossal.labelstudio_backend")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(backend: LabelStudioBackend) -> Starlette:
    """The ASGI app: `/health`, `/setup`, `/predict`, `/webhook`, `/train`, `/versions` and `/status`.

    Example:

    >>> from starlette.testclient import TestClient  # doctest: +SKIP
    >>> TestClient(create_app(backend)).get("/health").json()  # doctest: +SKIP
    {'status': 'UP', 'model_class': 'keras_lossal.LossLearningModel'}
    """
    config = backend.config
    # A thread semaphore, not an asyncio one: the waiting happens in the worker thread, bound to no event loop.
    slots = threading.BoundedSemaphore(config.max_concurrent_predictions)

    def predict(body: Any) -> dict:
        if not slots.acquire(timeout=config.queue_timeout):
            raise _HTTPError(503, f"busy: {config.max_concurrent_predictions} prediction requests running")
        try:
            return backend.predict(body, time.monotonic() + config.predict_timeout)
        finally:
            slots.release()

    async def health(_) -> dict:
        return backend.health()

    routes = [
        _route("/health", "GET", config, health, with_body=False),
        _route("/", "GET", config, health, with_body=False),
        _route("/setup", "POST", config, lambda body: run_in_threadpool(backend.setup, body)),
        _route("/predict", "POST", config, lambda body: run_in_threadpool(predict, body)),
        _route("/webhook", "POST", config, lambda body: run_in_threadpool(backend.webhook, body)),
        _route("/train", "POST", config, lambda body: run_in_threadpool(backend.train, body)),
        _route("/versions", "GET", config, lambda _: run_in_threadpool(backend.versions), with_body=False),
        _route("/status", "GET", config, lambda _: run_in_threadpool(backend.status), with_body=False),
    ]
    return Starlette(routes=routes)


def _route(path: str, method: str, config: BackendConfig, handle: Callable, with_body: bool = True) -> Route:
    """A route that checks the secret, reads a bounded JSON body and maps the backend's errors to statuses."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            _check_secret(request, config.secret)
            body = await _json_body(request, config) if with_body else None
            return JSONResponse(await handle(body))
        except _HTTPError as error:
            headers = {"WWW-Authenticate": 'Basic realm="lossal"'} if error.status == 401 else None
            return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)
        except RequestRefused as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except ServingError as error:  # TF Serving cannot say which version it serves (/setup, /versions)
            return JSONResponse({"error": str(error)}, status_code=503)
        except ProtocolError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except Exception as error:  # noqa: BLE001 - one line in the answer, the traceback in the log
            logger.exception("%s %s failed", method, path)
            return JSONResponse({"error": f"{type(error).__name__}: {error}"}, status_code=500)

    return Route(path, endpoint, methods=[method])


def _check_secret(request: Request, secret: str | None) -> None:
    if secret is None:
        return
    expected = secret.encode()
    offered = request.headers.get(SECRET_HEADER)
    if offered is not None and hmac.compare_digest(offered.encode(), expected):
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if hmac.compare_digest(password.encode(), expected):
            return
    raise _HTTPError(401, f"Expected the shared secret (HTTP basic auth password or {SECRET_HEADER} header)")


async def _json_body(request: Request, config: BackendConfig) -> Any:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > config.max_request_bytes:
        raise _HTTPError(413, f"request of {declared} bytes, more than max_request_bytes={config.max_request_bytes}")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_request_bytes:
                raise _HTTPError(413, f"request larger than max_request_bytes={config.max_request_bytes}")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), config.body_timeout)
    except asyncio.TimeoutError:
        raise _HTTPError(408, f"request body not received within {config.body_timeout:g} s") from None
    try:
        return json.loads(b"".join(chunks) or b"null")
    except (ValueError, RecursionError) as error:
        raise _HTTPError(400, f"Expected a JSON body: {error}") from None


def serve(config: BackendConfig, ready: Callable[[LabelStudioBackend], None] | None = None) -> None:
    """Runs the backend until interrupted (uvicorn on `config.host:config.port`); stops the retraining worker after."""
    import uvicorn

    backend = LabelStudioBackend(config)
    try:
        if ready is not None:
            ready(backend)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(backend),
                host=config.host,
                port=config.port,
                limit_concurrency=config.max_connections,
                timeout_keep_alive=5,
                log_level="info",
                access_log=True,
            )
        )
        server.run()
    finally:
        backend.close()
