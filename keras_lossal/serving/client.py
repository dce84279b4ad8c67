"""`TFServingClient`: score batches through TensorFlow Serving over gRPC or REST."""

from __future__ import annotations

import base64
import dataclasses
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any
from urllib.parse import urlparse

import numpy as np

from keras_lossal.contracts import check_integer

__all__ = [
    "DEFAULT_INPUT_NAMES",
    "Prediction",
    "RequestTooLargeError",
    "ServingError",
    "TFServingClient",
    "checked_inputs",
    "signature_input_dtypes",
]

# Input names of the signatures written by `export_for_serving`.
DEFAULT_INPUT_NAMES = {
    "serving_default": "images",
    "score_image_bytes": "image_bytes",
    "score_examples": "examples",
    "classify": "inputs",
    "regress": "inputs",
}
PROTOCOLS = ("grpc", "rest")
_RETRYABLE_GRPC = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")
_RETRYABLE_HTTP = (429, 500, 502, 503, 504)
# gRPC name-resolver targets (`dns:///host:8500`, `unix:/socket`) are passed through unchecked.
_RESOLVER_SCHEME = re.compile(r"^(dns|unix|unix-abstract|ipv4|ipv6|vsock):")


class ServingError(RuntimeError):
    """A request to TF Serving failed; names the model, signature and cause.

    Attributes:
        model_name: the model the request addressed.
        signature: the signature the request addressed.
        code: the gRPC status name (`"INVALID_ARGUMENT"`, ...) or `"HTTP <status>"`.
        retryable: whether the failure was transient (unavailable, timeout, 5xx).
        attempts: how many attempts were made.
    """

    def __init__(self, model_name: str, signature: str, code: str, cause: str, retryable: bool, attempts: int):
        self.model_name = model_name
        self.signature = signature
        self.code = code
        self.cause = cause
        self.retryable = retryable
        self.attempts = attempts
        super().__init__(
            f"TF Serving request failed for model={model_name!r} signature={signature!r} "
            f"after {attempts} attempt(s): {code}: {cause}"
        )

    @property
    def is_timeout(self) -> bool:
        return self.code in ("DEADLINE_EXCEEDED", "TIMEOUT", "HTTP 504")


class RequestTooLargeError(ValueError):
    """A request would exceed `max_message_bytes`; nothing was sent."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What `TFServingClient.predict` returns: the outputs and which model version answered each row.

    Attributes:
        outputs: NumPy arrays by output name, rows in input order.
        model_versions: per row, the served version that computed it (`None` if the server did not say).
    """

    outputs: dict[str, np.ndarray]
    model_versions: list[int | None]


class _Attempt(Exception):
    def __init__(self, code: str, cause: str, retryable: bool):
        super().__init__(cause)
        self.code, self.cause, self.retryable = code, cause, retryable


class TFServingClient:
    """Scores batches with a model served by TensorFlow Serving.

    Large batches are split into requests of `batch_size` rows, sent with at
    most `max_concurrency` requests in flight, and re-assembled in order.
    Transient failures (gRPC UNAVAILABLE / DEADLINE_EXCEEDED /
    RESOURCE_EXHAUSTED / ABORTED, HTTP 429/500/502/503/504, connection errors
    and timeouts) are retried with exponential backoff and jitter; anything
    else (e.g. INVALID_ARGUMENT, HTTP 400/404, a message over gRPC's size
    limit) fails at once with a `ServingError`.

    When it needs them the client reads the model's signatures from the
    server once (GetModelMetadata / the REST `metadata` endpoint): to find the
    input of a signature it has no default name for, and, over both
    protocols, to check numeric arrays against the input's dtype
    (`checked_inputs`: a float64 array is cast to a float32 input, uint8
    pixels for a float input are refused). An unknown signature name is then
    refused with the available ones. A server without metadata gets the
    request as it is.

    Args:
        target: `"host:8500"` / `"grpc://host:8500"` for gRPC or
            `"http://host:8501"` for REST.
        model_name: the model name in the server's config.
        protocol: `"grpc"` or `"rest"`; `None` infers it from `target`.
        signature: the signature to call (an `export_for_serving` signature
            name or any other).
        version: a specific model version, or `None` for the server's choice.
        label: a version label (`"stable"`), exclusive with `version`.
        timeout: per-request deadline in seconds.
        retries: retries after the first attempt for transient failures.
        batch_size: rows per request.
        max_concurrency: requests in flight at once.
        backoff: first retry delay in seconds (doubled per retry, capped at
            `max_backoff`, with jitter).
        max_backoff: the largest retry delay.
        input_name: input tensor name when `score` receives a bare array
            (default: the name `export_for_serving` gives that signature).
        max_message_bytes: request size limit (checked before sending; also
            the gRPC channel's limit).
        rest_format: REST body layout: `"inputs"` (columns, the default) or
            `"instances"` (one entry per row); TF Serving accepts both.

    Example:

    >>> client = TFServingClient("localhost:8500", "lossal", signature="score_image_bytes")  # doctest: +SKIP
    >>> client.score([open("cat.png", "rb").read()])["predicted_loss"]  # doctest: +SKIP
    array([0.73], dtype=float32)
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        protocol: str | None = "grpc",
        signature: str = "serving_default",
        version: int | None = None,
        label: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        batch_size: int = 64,
        max_concurrency: int = 4,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        input_name: str | None = None,
        max_message_bytes: int = 64 << 20,
        rest_format: str = "inputs",
    ):
        protocol, address = _parse_target(target, protocol)
        _check_options(version, label, timeout, retries, batch_size, max_concurrency, rest_format)
        self.target = target
        self.model_name = model_name
        self.protocol = protocol
        self.signature = signature
        self.version = None if version is None else int(version)
        self.label = label
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.batch_size = int(batch_size)
        self.max_concurrency = int(max_concurrency)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.input_name = input_name
        self.max_message_bytes = int(max_message_bytes)
        self.rest_format = rest_format
        self._executor: futures.ThreadPoolExecutor | None = None
        self._signature_inputs: dict[str, dict[str, np.dtype | None]] | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        if protocol == "grpc":
            self._channel, self._stub = self._connect_grpc(address)
        else:
            self._base_url = target.rstrip("/")

    def _connect_grpc(self, address: str):
        """The channel and PredictionService stub; the stubs import TensorFlow, so only a gRPC client loads it."""
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
            ],
        )
        return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)

    # ------------------------------------------------------------------ public
    def signatures(self) -> dict[str, dict[str, np.dtype | None]] | None:
        """`{signature: {input name: dtype}}` from the server's model metadata (cached); `None` if it has none.

        Transient failures are retried like requests; a server that still cannot answer raises
        `ServingError`.
        """
        with self._lock:
            if self._signature_inputs is not None:
                return self._signature_inputs
        try:
            fetched = self._with_retries(self._fetch_signatures, "(model metadata)")
        except ServingError as error:
            if error.retryable:
                raise
            return None  # no metadata (an old or partial server): the request itself says what is wrong
        with self._lock:
            self._signature_inputs = fetched
        return fetched

    def score(
        self, batch: Any, signature: str | None = None, output_filter: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Scores a batch; returns NumPy arrays by output name, rows in input order.

        Args:
            batch: a dict of input name -> array-like (rows first), or one
                array-like (a list of `bytes` for string inputs) for a
                single-input signature.
            signature: overrides the client's signature for this call.
            output_filter: only these outputs (gRPC Predict; all when empty).
        """
        return self._predict(batch, signature or self.signature, output_filter, self.version).outputs

    def predict(self, batch: Any, signature: str | None = None, output_filter: tuple[str, ...] = ()) -> Prediction:
        """Like `score`, and also says which model version answered each row.

        gRPC responses name the version (`model_spec.version`). REST responses do not, so over REST
        an unpinned client first asks the model status API (`GET /v1/models/<name>[/labels/<label>]`)
        which version is available and sends the batch to that version (`/versions/<n>:predict`):
        a rollout between the two requests then fails the request instead of mixing versions.
        """
        signature = signature or self.signature
        version = self.served_version() if self.protocol == "rest" else self.version
        return self._predict(batch, signature, output_filter, version)

    def served_version(self) -> int | None:
        """The version an unpinned request is answered by now (the pinned `version` if there is one).

        Over gRPC this asks GetModelMetadata, over REST the model status API (the highest AVAILABLE
        version, or the label's); `None` if the server cannot say. Transient failures raise `ServingError`.
        """
        if self.version is not None:
            return self.version
        try:
            return self._with_retries(self._fetch_served_version, "(model status)")
        except ServingError as error:
            if error.retryable:
                raise
            return None

    def _predict(self, batch: Any, signature: str, output_filter, version: int | None) -> Prediction:
        chunks = self._chunks(batch, signature)
        calls = [self._predict_call(chunk, signature, output_filter, version) for chunk in chunks]
        if len(chunks) == 1:
            results = [self._with_retries(calls[0], signature)]
        else:
            executor = self._pool()
            pending = [executor.submit(self._with_retries, call, signature) for call in calls]
            try:
                results = [future.result() for future in pending]
            finally:
                for future in pending:
                    future.cancel()
        outputs = {key: np.concatenate([result[0][key] for result in results], axis=0) for key in results[0][0]}
        versions = [answered for (_, answered), chunk in zip(results, chunks) for _ in range(_rows(chunk))]
        return Prediction(outputs, versions)

    def _chunks(self, batch: Any, signature: str) -> list[dict[str, np.ndarray]]:
        """The batch as requests of at most `batch_size` rows, each checked against `max_message_bytes`."""
        inputs = self._as_inputs(batch, signature)
        rows = _rows(inputs)
        if any(len(value) != rows for value in inputs.values()):
            raise ValueError(
                f"Expected all inputs to have the same number of rows. Received: "
                f"{ {key: len(value) for key, value in inputs.items()} }"
            )
        if rows == 0:
            raise ValueError("Expected a non-empty batch. Received 0 rows.")
        chunks = [
            {key: value[start : start + self.batch_size] for key, value in inputs.items()}
            for start in range(0, rows, self.batch_size)
        ]
        for chunk in chunks:
            size = sum(_payload_bytes(value) for value in chunk.values())
            if size > self.max_message_bytes:
                raise RequestTooLargeError(
                    f"A request to model={self.model_name!r} signature={signature!r} would carry {size} bytes, "
                    f"more than max_message_bytes={self.max_message_bytes}; lower batch_size (now {self.batch_size}) "
                    "or raise max_message_bytes (and the server's limit)."
                )
        return chunks

    def close(self) -> None:
        """Releases the channel / HTTP sessions and worker threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.protocol == "grpc":
            self._channel.close()

    def __enter__(self) -> TFServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TFServingClient(target={self.target!r}, model_name={self.model_name!r}, protocol={self.protocol!r}, "
            f"signature={self.signature!r}, version={self.version}, label={self.label!r})"
        )

    # ----------------------------------------------------------------- helpers
    def _pool(self) -> futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = futures.ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="tfserving")
            return self._executor

    def _as_inputs(self, batch: Any, signature: str) -> dict[str, np.ndarray]:
        if isinstance(batch, Mapping):
            inputs = {key: _as_array(value) for key, value in batch.items()}
        else:
            name = self.input_name or DEFAULT_INPUT_NAMES.get(signature) or self._only_input(signature)
            inputs = {name: _as_array(batch)}
        if all(value.dtype == object or value.dtype.kind in "SU" for value in inputs.values()):
            return inputs  # bytes only: nothing to check against a numeric input, and no metadata request
        expected = self._expected_inputs(signature)
        return inputs if expected is None else checked_inputs(inputs, expected, signature)

    def _expected_inputs(self, signature: str) -> dict[str, np.dtype] | None:
        signatures = self.signatures()
        if signatures is None:
            return None
        if signature not in signatures:
            raise ValueError(
                f"Expected a signature of model {self.model_name!r}. Received: signature={signature!r} (unknown "
                f"signature); available: {sorted(signatures)}"
            )
        return signatures[signature]

    def _only_input(self, signature: str) -> str:
        expected = self._expected_inputs(signature)
        if expected is not None and len(expected) == 1:
            return next(iter(expected))
        raise ValueError(
            f"Signature {signature!r} has no known input name; pass a dict {{input_name: batch}} or "
            "TFServingClient(input_name=...)." + ("" if expected is None else f" Its inputs: {sorted(expected)}")
        )

    def _predict_call(self, inputs, signature: str, output_filter, version: int | None) -> Callable[[], Any]:
        """A call returning `(outputs, version that answered)`; over REST `version` addresses the request."""
        if self.protocol == "grpc":
            return lambda: self._grpc_predict(inputs, signature, output_filter)
        return lambda: (self._rest_predict(inputs, signature, version), version)

    def _with_retries(self, call: Callable[[], Any], signature: str) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except _Attempt as failure:
                if not failure.retryable or attempt > self.retries:
                    raise ServingError(
                        self.model_name, signature, failure.code, failure.cause, failure.retryable, attempt
                    ) from None
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))

    def _grpc_predict(self, inputs, signature: str, output_filter) -> dict[str, np.ndarray]:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = self.version
        if self.label is not None:
            request.model_spec.version_label = self.label
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        request.output_filter.extend(output_filter)
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code().name if error.code() is not None else "UNKNOWN"
            details = error.details() or str(error)
            # gRPC also reports a message over the size limit as RESOURCE_EXHAUSTED: that never clears up.
            retryable = code in _RETRYABLE_GRPC and "larger than max" not in details
            raise _Attempt(code, details, retryable) from None
        answered = response.model_spec.version.value if response.model_spec.HasField("version") else self.version
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}, answered

    def _fetch_signatures(self) -> dict[str, dict[str, np.dtype | None]]:
        if self.protocol == "grpc":
            from google.protobuf import json_format
            from tensorflow_serving.apis import get_model_metadata_pb2

            signature_map = get_model_metadata_pb2.SignatureDefMap()
            self._grpc_metadata(pin_version=True).metadata["signature_def"].Unpack(signature_map)
            # As the REST metadata endpoint sends it, so both protocols read signatures the same way.
            definitions = json_format.MessageToDict(signature_map, preserving_proto_field_name=True)
        else:
            definitions = self._rest_get(self._rest_url(":predict", "/metadata"))["metadata"]["signature_def"]
        signatures = signature_input_dtypes(definitions)
        if not signatures:
            raise _Attempt("NO_METADATA", "the server sent no signatures", False)
        return signatures

    def _grpc_metadata(self, pin_version: bool):
        """GetModelMetadata (signature defs) for this model, at its pinned version when `pin_version`."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model_name
        if pin_version and self.version is not None:
            request.model_spec.version.value = self.version
        if self.label is not None:
            request.model_spec.version_label = self.label
        request.metadata_field.append("signature_def")
        try:
            return self._stub.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code().name if error.code() is not None else "UNKNOWN"
            raise _Attempt(code, error.details() or str(error), code in _RETRYABLE_GRPC) from None

    def _fetch_served_version(self) -> int | None:
        if self.protocol == "grpc":
            response = self._grpc_metadata(pin_version=False)
            return response.model_spec.version.value if response.model_spec.HasField("version") else None
        # The model status API: {"model_version_status": [{"version": "3", "state": "AVAILABLE", ...}, ...]}
        statuses = self._rest_get(self._rest_url(method="")).get("model_version_status", [])
        available = [int(status["version"]) for status in statuses if status.get("state") == "AVAILABLE"]
        return max(available, default=None)

    def _rest_get(self, url: str) -> dict:
        import requests

        try:
            response = self._session().get(url, timeout=self.timeout)
        except requests.Timeout as error:
            raise _Attempt("TIMEOUT", str(error), True) from None
        except requests.ConnectionError as error:
            raise _Attempt("UNAVAILABLE", str(error), True) from None
        if response.status_code != 200:
            status = response.status_code
            raise _Attempt(f"HTTP {status}", response.text[:2000], status in _RETRYABLE_HTTP)
        try:
            return response.json()
        except ValueError as error:
            raise _Attempt("HTTP 200", f"not JSON: {error}", False) from None

    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _rest_url(self, method: str = ":predict", suffix: str = "", version: int | None = None) -> str:
        url = f"{self._base_url}/v1/models/{self.model_name}"
        version = self.version if version is None else version
        if version is not None:
            url += f"/versions/{version}"
        elif self.label is not None:
            url += f"/labels/{self.label}"
        return url + (suffix or method)

    def _rest_predict(self, inputs, signature: str, version: int | None) -> dict[str, np.ndarray]:
        import requests

        columns = {key: _to_json(value) for key, value in inputs.items()}
        if self.rest_format == "inputs":
            body = {"signature_name": signature, "inputs": columns}
        elif len(columns) == 1:
            body = {"signature_name": signature, "instances": next(iter(columns.values()))}
        else:
            rows = len(next(iter(columns.values())))
            body = {
                "signature_name": signature,
                "instances": [{k: v[i] for k, v in columns.items()} for i in range(rows)],
            }
        try:
            response = self._session().post(self._rest_url(version=version), json=body, timeout=self.timeout)
        except requests.Timeout as error:
            raise _Attempt("TIMEOUT", str(error), True) from None
        except requests.ConnectionError as error:
            raise _Attempt("UNAVAILABLE", str(error), True) from None
        if response.status_code != 200:
            try:
                cause = response.json().get("error", response.text)
            except ValueError:
                cause = response.text
            status = response.status_code
            raise _Attempt(f"HTTP {status}", cause[:2000], status in _RETRYABLE_HTTP)
        payload = response.json()
        if "predictions" in payload:  # row format: a list of per-row dicts, or bare values for one output
            predictions = payload["predictions"]
            if predictions and isinstance(predictions[0], dict) and not set(predictions[0]) == {"b64"}:
                outputs = {key: [row[key] for row in predictions] for key in predictions[0]}
            else:
                outputs = {"outputs": predictions}
        else:
            outputs = payload["outputs"]
            if not isinstance(outputs, dict):  # TF Serving returns a single output unnamed
                outputs = {"outputs": outputs}
        return {key: _from_json(value) for key, value in outputs.items()}


def _parse_target(target: str, protocol: str | None) -> tuple[str, str]:
    """`(protocol, address)` of a target; `None` infers the protocol from the scheme (`http(s)://`: REST)."""
    scheme, _, rest = target.partition("://") if "://" in target else ("", "", target)
    if protocol is None:
        protocol = "rest" if scheme in ("http", "https") else "grpc"
    if protocol not in PROTOCOLS:
        raise ValueError(f"Expected protocol in {PROTOCOLS}. Received: protocol={protocol!r}")
    if protocol == "grpc" and scheme not in ("", "grpc"):
        raise ValueError(f"Expected a gRPC target like 'host:8500' or 'grpc://host:8500'. Received: {target!r}")
    if protocol == "rest" and scheme not in ("http", "https"):
        raise ValueError(f"Expected a REST target like 'http://host:8501'. Received: target={target!r}")
    address = rest if scheme else target
    _check_address(target, address, scheme)
    return protocol, address


def _check_options(version, label, timeout, retries, batch_size, max_concurrency, rest_format) -> None:
    if version is not None and label is not None:
        raise ValueError(f"Pass either version or label, not both. Received: version={version}, label={label!r}")
    if version is not None and (isinstance(version, bool) or int(version) < 0 or int(version) != version):
        raise ValueError(f"Expected version to be a non-negative integer. Received: version={version!r}")
    for name, value in (("batch_size", batch_size), ("max_concurrency", max_concurrency)):
        check_integer(name, value, 1, integral_floats=True)
    if int(retries) < 0 or float(timeout) <= 0:
        raise ValueError(f"Expected retries >= 0 and timeout > 0. Received: retries={retries}, timeout={timeout}")
    if rest_format not in ("inputs", "instances"):
        raise ValueError(f"Expected rest_format 'inputs' or 'instances'. Received: rest_format={rest_format!r}")


def _check_address(target: str, address: str, scheme: str) -> None:
    """Refuses a target whose port is not a number in 1..65535 (a typo would be retried as UNAVAILABLE)."""
    if scheme in ("http", "https"):
        try:
            parsed = urlparse(target)
            port = parsed.port
        except ValueError as error:
            raise ValueError(
                f"Expected a REST target like 'http://host:8501'. Received: target={target!r} ({error})"
            ) from None
        if not parsed.hostname:
            raise ValueError(f"Expected a REST target like 'http://host:8501'. Received: target={target!r} (no host)")
        if port is not None and port == 0:
            raise ValueError(f"Expected a port in 1..65535. Received: target={target!r}")
        return
    if _RESOLVER_SCHEME.match(address):
        return
    host, colon, port = address.rpartition(":") if not address.endswith("]") else (address, "", "")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"Expected a gRPC target 'host:port' with a port in 1..65535, like 'localhost:8500'. Received: "
            f"target={target!r}"
        )


# TensorFlow's DataType names, as signature metadata spells them, to NumPy dtypes (strings are `bytes` objects).
_NUMPY_DTYPES = {
    "DT_FLOAT": "float32", "DT_DOUBLE": "float64", "DT_HALF": "float16",
    "DT_INT8": "int8", "DT_INT16": "int16", "DT_INT32": "int32", "DT_INT64": "int64",
    "DT_UINT8": "uint8", "DT_UINT16": "uint16", "DT_UINT32": "uint32", "DT_UINT64": "uint64",
    "DT_BOOL": "bool", "DT_STRING": "object",
}  # fmt: skip


def signature_input_dtypes(definitions: Mapping[str, Any]) -> dict[str, dict[str, np.dtype | None]]:
    """`{signature: {input name: dtype}}` from a `SignatureDefMap` as JSON (TF Serving's metadata).

    `None` stands for a dtype NumPy has no name for (e.g. bfloat16): such an input is sent unchecked.

    Example:

    >>> signature_input_dtypes({"signature_def": {"serving_default": {"inputs": {"images": {"dtype": "DT_FLOAT"}}},
    ...                                           "__saved_model_init_op": {"outputs": {}}}})
    {'serving_default': {'images': dtype('float32')}}
    """
    signatures = definitions.get("signature_def", definitions.get("signatureDef", {}))  # proto or JSON field name
    return {
        name: {key: _numpy_dtype(info.get("dtype")) for key, info in definition.get("inputs", {}).items()}
        for name, definition in signatures.items()
        if not name.startswith("__")
    }


def _numpy_dtype(name: str | None) -> np.dtype | None:
    return np.dtype(_NUMPY_DTYPES[name]) if name in _NUMPY_DTYPES else None


def checked_inputs(
    inputs: Mapping[str, np.ndarray], expected: Mapping[str, np.dtype | None], signature: str
) -> dict[str, np.ndarray]:
    """`inputs` checked against a signature's `{input name: dtype}` and cast to it, for gRPC and REST alike.

    Numbers are cast within their kind only (float64 -> float32), and only when every value fits the
    input's dtype; another kind is refused: uint8 pixels sent to a float input would skip the
    preprocessing the model expects and return wrong scores without an error.

    Example:

    >>> checked_inputs({"images": np.zeros((1, 2), np.float64)}, {"images": np.dtype("float32")}, "s")["images"].dtype
    dtype('float32')
    >>> checked_inputs({"images": np.zeros((1, 2), np.uint8)}, {"images": np.dtype("float32")}, "s")
    Traceback (most recent call last):
    ...
    ValueError: Expected input 'images' of signature 's' as float32 (any 'f'-kind dtype is cast). Received dtype uint8
    """
    if set(inputs) != set(expected):
        raise ValueError(
            f"Expected the inputs {sorted(expected)} of signature {signature!r}. Received: {sorted(inputs)}"
        )
    return {key: _cast(value, expected[key], key, signature) for key, value in inputs.items()}


def _cast(value: np.ndarray, dtype: np.dtype | None, name: str, signature: str) -> np.ndarray:
    """`value` as the signature input's dtype: numbers of the same kind are cast, strings stay bytes."""
    if dtype is None:
        return value
    if dtype.kind == "O":
        if value.dtype != object and value.dtype.kind not in "SU":
            raise ValueError(
                f"Expected bytes for the string input {name!r} of signature {signature!r}. Received dtype {value.dtype}"
            )
        return value
    if value.dtype == dtype:
        return value
    # Only within a kind (float64 -> float32): uint8 pixels to a float input would skip the preprocessing.
    if value.dtype.kind != dtype.kind:
        raise ValueError(
            f"Expected input {name!r} of signature {signature!r} as {dtype} (any {dtype.kind!r}-kind dtype is cast). "
            f"Received dtype {value.dtype}"
        )
    _check_range(value, dtype, name, signature)
    return value.astype(dtype)


def _check_range(value: np.ndarray, dtype: np.dtype, name: str, signature: str) -> None:
    """Refuses values a cast to `dtype` would change: integers that wrap, finite floats that overflow to inf."""
    if not value.size or dtype.kind not in "iuf":
        return
    if dtype.kind == "f":
        finite = value[np.isfinite(value)]
        low, high = (finite.min(), finite.max()) if finite.size else (0, 0)
        limits = np.finfo(dtype)
    else:
        low, high, limits = value.min(), value.max(), np.iinfo(dtype)
    if low < limits.min or high > limits.max:
        raise ValueError(
            f"Expected input {name!r} of signature {signature!r} within {dtype}'s range [{limits.min}, {limits.max}]. "
            f"Received values in [{low}, {high}]"
        )


def _as_array(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
        return np.array([item.encode() if isinstance(item, str) else item for item in value], dtype=object)
    return np.asarray(value)


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def _payload_bytes(value: np.ndarray) -> int:
    if value.dtype == object:
        return sum(len(item) if isinstance(item, (bytes, str)) else 8 for item in value.ravel())
    return int(value.nbytes)


def _to_json(value: np.ndarray):
    if value.dtype == object or value.dtype.kind in "SU":
        return np.vectorize(_b64, otypes=[object])(value).tolist() if value.ndim else _b64(value.item())
    return value.tolist()


def _b64(item) -> dict[str, str]:
    data = item.encode() if isinstance(item, str) else bytes(item)
    return {"b64": base64.b64encode(data).decode("ascii")}


def _from_json(value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind in "UO":
        return np.vectorize(_from_json_scalar, otypes=[object])(np.asarray(value, dtype=object))
    return array


def _from_json_scalar(item):
    if isinstance(item, dict) and "b64" in item:
        return base64.b64decode(item["b64"])
    return item.encode() if isinstance(item, str) else item
