"""A small in-process stand-in for TensorFlow Serving, for tests and benchmarks only.

The real `tensorflow_model_server` cannot be installed here, so this module
serves a SavedModel the way the C++ server does: it loads each integer
version with the TF1 loader into a `tf.compat.v1.Session` and runs
SignatureDefs by their tensor names. It implements the gRPC
`PredictionService` (Predict, Classify, Regress, GetModelMetadata) and a
tiny REST API with TF Serving's documented JSON (`:predict`, `/metadata` and
the model status `GET /v1/models/<name>[/versions/<n>|/labels/<label>]`).
`ModelRepository.poll` loads versions that appear later (a rollout). Faults can
be injected to test client retries. Never shipped as product code.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)


class SignatureError(ValueError):
    """A request that does not fit the signature (maps to INVALID_ARGUMENT / HTTP 400)."""


class SavedModelServable:
    """One SavedModel version, loaded with the TF1 loader and run by SignatureDef tensor names."""

    def __init__(self, export_dir: str, version: int | None = None):
        self.export_dir = export_dir
        self.version = version
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], export_dir)
        self.signatures = {
            name: signature for name, signature in self.meta_graph.signature_def.items() if not name.startswith("__")
        }

    def signature(self, name: str):
        name = name or "serving_default"
        if name not in self.signatures:
            raise SignatureError(f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def run(self, signature_name: str, inputs: dict, output_filter=()) -> dict[str, np.ndarray]:
        signature = self.signature(signature_name)
        if set(inputs) != set(signature.inputs):
            raise SignatureError(
                f"input keys {sorted(inputs)} do not match signature inputs {sorted(signature.inputs)}"
            )
        feed = {signature.inputs[key].name: value for key, value in inputs.items()}
        names = list(output_filter) or list(signature.outputs)
        missing = [name for name in names if name not in signature.outputs]
        if missing:
            raise SignatureError(f"output_filter {missing} not in signature outputs {sorted(signature.outputs)}")
        fetch = {name: signature.outputs[name].name for name in names}
        try:
            return self.session.run(fetch, feed_dict=feed)
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            raise SignatureError(getattr(error, "message", str(error))) from error

    def close(self):
        self.session.close()


class ModelRepository:
    """All integer versions under a base path (plus optional version labels)."""

    def __init__(self, model_name: str, base_path: str, labels: dict[str, int] | None = None):
        self.model_name = model_name
        self.base_path = base_path
        self.servables: dict[int, SavedModelServable] = {}
        self.poll(latest_only=False)
        if not self.servables:
            raise FileNotFoundError(f"no integer version directories under {base_path!r}")
        self.labels = dict(labels or {})

    def poll(self, latest_only: bool = False) -> list[int]:
        """Loads versions that appeared under the base path, as TF Serving's file-system poll does.

        With `latest_only` (TF Serving's default `latest` version policy) older versions are unloaded
        once a newer one is loaded: a rollout. Returns the versions now served.
        """
        for entry in sorted(os.listdir(self.base_path)):
            path = os.path.join(self.base_path, entry)
            if re.fullmatch(r"[0-9]+", entry) and int(entry) not in self.servables:
                if os.path.exists(os.path.join(path, "saved_model.pb")):
                    self.servables[int(entry)] = SavedModelServable(path, int(entry))
        if latest_only and self.servables:
            newest = max(self.servables)
            for version in [version for version in self.servables if version != newest]:
                self.servables.pop(version).close()
        return sorted(self.servables)

    def get(self, name: str, version: int | None = None, label: str | None = None) -> SavedModelServable:
        if name != self.model_name:
            raise KeyError(f"Servable not found for request: Latest({name})")
        if label:
            if label not in self.labels:
                raise KeyError(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            version = max(self.servables)
        if version not in self.servables:
            raise KeyError(f"Servable not found for request: Specific({name}, {version})")
        return self.servables[version]

    def close(self):
        for servable in self.servables.values():
            servable.close()


class FaultInjector:
    """Counts requests and makes the next ones fail with chosen codes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: collections.deque = collections.deque()
        self.requests = 0
        self.items = 0
        self.delay = 0.0  # seconds each request takes extra, to observe concurrency
        self.in_flight = 0
        self.max_in_flight = 0

    def enter(self):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.delay:
            time.sleep(self.delay)

    def leave(self):
        with self.lock:
            self.in_flight -= 1

    def fail_next(self, count: int, code: str = "UNAVAILABLE"):
        with self.lock:
            self.pending.extend([code] * count)

    def take(self, items: int = 0) -> str | None:
        with self.lock:
            self.requests += 1
            self.items += items
            return self.pending.popleft() if self.pending else None


def _spec_version(model_spec) -> tuple[int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return version, (model_spec.version_label or None)


class StandinPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC `PredictionService` over a `ModelRepository`."""

    def __init__(self, repository: ModelRepository, faults: FaultInjector | None = None):
        self.repository = repository
        self.faults = faults or FaultInjector()

    def _servable(self, model_spec, context):
        try:
            return self.repository.get(model_spec.name, *_spec_version(model_spec))
        except KeyError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error.args[0]))

    def _fault(self, context, items: int):
        code = self.faults.take(items)
        if code is not None:
            context.abort(getattr(grpc.StatusCode, code), f"injected fault: {code}")

    def _fill_spec(self, response_spec, request_spec, servable):
        response_spec.name = request_spec.name
        response_spec.signature_name = request_spec.signature_name or "serving_default"
        response_spec.version.value = servable.version

    def Predict(self, request, context):  # noqa: N802 - gRPC method name
        self.faults.enter()
        try:
            return self._predict(request, context)
        finally:
            self.faults.leave()

    def _predict(self, request, context):
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        self._fault(context, items=len(next(iter(inputs.values()), [])))
        servable = self._servable(request.model_spec, context)
        try:
            outputs = servable.run(request.model_spec.signature_name, inputs, request.output_filter)
        except SignatureError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec, request.model_spec, servable)
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _examples(self, request, context) -> np.ndarray:
        if request.input.WhichOneof("kind") != "example_list":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only example_list inputs are supported by the stand-in")
        return np.array([example.SerializeToString() for example in request.input.example_list.examples], object)

    def _checked_signature(self, servable, request, method, outputs, context):
        name = request.model_spec.signature_name or "serving_default"
        try:
            signature = servable.signature(name)
        except SignatureError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if signature.method_name != method or set(signature.inputs) != {"inputs"}:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expected signature method_name to be {method} with one input 'inputs'. Was: "
                f"{signature.method_name} with inputs {sorted(signature.inputs)}",
            )
        if not set(signature.outputs) <= set(outputs) or not signature.outputs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected outputs {sorted(signature.outputs)}")
        return name

    def Classify(self, request, context):  # noqa: N802
        self._fault(context, items=len(request.input.example_list.examples))
        servable = self._servable(request.model_spec, context)
        name = self._checked_signature(servable, request, "tensorflow/serving/classify", {"classes", "scores"}, context)
        try:
            outputs = servable.run(name, {"inputs": self._examples(request, context)})
        except SignatureError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = classification_pb2.ClassificationResponse()
        self._fill_spec(response.model_spec, request.model_spec, servable)
        scores, classes = outputs.get("scores"), outputs.get("classes")
        rows = len(scores if scores is not None else classes)
        for row in range(rows):
            classifications = response.result.classifications.add()
            width = (scores if scores is not None else classes).shape[1]
            for column in range(width):
                entry = classifications.classes.add()
                if classes is not None:
                    entry.label = classes[row, column].decode()
                if scores is not None:
                    entry.score = float(scores[row, column])
        return response

    def Regress(self, request, context):  # noqa: N802
        self._fault(context, items=len(request.input.example_list.examples))
        servable = self._servable(request.model_spec, context)
        name = self._checked_signature(servable, request, "tensorflow/serving/regress", {"outputs"}, context)
        try:
            outputs = servable.run(name, {"inputs": self._examples(request, context)})
        except SignatureError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = regression_pb2.RegressionResponse()
        self._fill_spec(response.model_spec, request.model_spec, servable)
        for value in np.reshape(outputs["outputs"], [-1]):
            response.result.regressions.add().value = float(value)
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        servable = self._servable(request.model_spec, context)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec, request.model_spec, servable)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in servable.signatures.items():
            signature_map.signature_def[name].CopyFrom(signature)
        response.metadata["signature_def"].Pack(signature_map)
        return response


def start_grpc_standin(
    base_path: str, model_name: str, labels: dict[str, int] | None = None, max_workers: int = 4, port: int = 0
) -> tuple[grpc.Server, str, StandinPredictionService]:
    """Starts the gRPC stand-in on localhost (`port` 0: a free one); returns `(server, "localhost:PORT", service)`."""
    repository = ModelRepository(model_name, base_path, labels)
    service = StandinPredictionService(repository)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"localhost:{port}")
    server.start()
    return server, f"localhost:{port}", service


# ------------------------------------------------------------------------------------------ REST
_REST_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:predict$")
_REST_METADATA_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?/metadata$")
_REST_STATUS_PATH = re.compile(r"^/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?$")


def _decode_json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, dict):
        return {key: _decode_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json_value(item) for item in value]
    return value


def _to_array(value, dtype) -> np.ndarray:
    dtype = tf.as_dtype(dtype)
    if dtype == tf.string:
        return np.array(value, dtype=object)
    return np.array(value, dtype=dtype.as_numpy_dtype)


def _encode_json_value(value: np.ndarray, name: str):
    if value.dtype == object:
        return [_encode_json_value(item, name) for item in value] if value.ndim else _encode_scalar(value.item(), name)
    return value.tolist()


def _encode_scalar(item, name: str):
    if isinstance(item, bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(item).decode()}
        return item.decode("utf-8", "replace")
    return item


def _encode_output(value: np.ndarray, name: str):
    if value.dtype == object:
        return np.vectorize(lambda item: _encode_scalar(item, name), otypes=[object])(value).tolist()
    return value.tolist()


class _RestHandler(BaseHTTPRequestHandler):
    repository: ModelRepository
    faults: FaultInjector

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, status: int, payload: dict):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, match):
        """The model status API: every loaded version (or the one addressed) with its state, as TF Serving's JSON."""
        name, version, label = match.group(1), match.group(2), match.group(3)
        try:
            if version or label:
                versions = [self.repository.get(name, int(version) if version else None, label).version]
            else:
                self.repository.get(name)
                versions = sorted(self.repository.servables)
        except KeyError as error:
            return self._reply(404, {"error": str(error.args[0])})
        ok = {"error_code": "OK", "error_message": ""}
        statuses = [{"version": str(number), "state": "AVAILABLE", "status": ok} for number in versions]
        return self._reply(200, {"model_version_status": statuses})

    def do_GET(self):  # noqa: N802 - model status, and metadata as TF Serving's JSON of a SignatureDefMap
        from google.protobuf import json_format

        if _REST_STATUS_PATH.match(self.path):
            return self._status(_REST_STATUS_PATH.match(self.path))
        match = _REST_METADATA_PATH.match(self.path)
        if not match:
            return self._reply(404, {"error": f"Malformed request: GET {self.path}"})
        name, version, label = match.group(1), match.group(2), match.group(3)
        try:
            servable = self.repository.get(name, int(version) if version else None, label)
        except KeyError as error:
            return self._reply(404, {"error": str(error.args[0])})
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for signature_name, signature in servable.signatures.items():
            signature_map.signature_def[signature_name].CopyFrom(signature)
        spec = {"name": name, "signature_name": "", "version": str(servable.version)}
        return self._reply(
            200, {"model_spec": spec, "metadata": {"signature_def": json_format.MessageToDict(signature_map)}}
        )

    def do_POST(self):  # noqa: N802
        match = _REST_PATH.match(self.path)
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if not match:
            return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
        code = self.faults.take()
        if code is not None:
            return self._reply(int(code) if code.isdigit() else 503, {"error": f"injected fault: {code}"})
        name, version, label = match.group(1), match.group(2), match.group(3)
        try:
            servable = self.repository.get(name, int(version) if version else None, label)
        except KeyError as error:
            return self._reply(404, {"error": str(error.args[0])})
        try:
            body = json.loads(raw)
            signature = servable.signature(body.get("signature_name", "serving_default"))
            if ("instances" in body) == ("inputs" in body):
                raise SignatureError("Request must contain exactly one of 'instances' or 'inputs'")
            if "instances" in body:
                rows = _decode_json_value(body["instances"])
                if len(signature.inputs) == 1 and not (rows and isinstance(rows[0], dict)):
                    columns = {next(iter(signature.inputs)): rows}
                else:
                    columns = {key: [row[key] for row in rows] for key in signature.inputs}
            else:
                columns = _decode_json_value(body["inputs"])
                if not isinstance(columns, dict):
                    columns = {next(iter(signature.inputs)): columns}
            inputs = {
                key: _to_array(value, signature.inputs[key].dtype if key in signature.inputs else tf.float32)
                for key, value in columns.items()
            }
            outputs = servable.run(body.get("signature_name", "serving_default"), inputs)
        except (SignatureError, KeyError, TypeError, ValueError) as error:
            return self._reply(400, {"error": str(error)})
        encoded = {key: _encode_output(value, key) for key, value in outputs.items()}
        if "instances" in body:
            count = len(next(iter(outputs.values())))
            if len(encoded) == 1:
                predictions = next(iter(encoded.values()))
            else:
                predictions = [{key: value[row] for key, value in encoded.items()} for row in range(count)]
            return self._reply(200, {"predictions": predictions})
        return self._reply(200, {"outputs": next(iter(encoded.values())) if len(encoded) == 1 else encoded})


def start_rest_standin(
    base_path: str, model_name: str, labels: dict[str, int] | None = None
) -> tuple[ThreadingHTTPServer, str, FaultInjector]:
    """Starts the REST stand-in on a free localhost port; returns `(server, "http://localhost:PORT", faults)`."""
    repository = ModelRepository(model_name, base_path, labels)
    faults = FaultInjector()
    handler = type("Handler", (_RestHandler,), {"repository": repository, "faults": faults})
    server = ThreadingHTTPServer(("localhost", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://localhost:{server.server_address[1]}", faults


def main(argv=None) -> int:
    """Serves a base path over gRPC until killed (a separate process, so benchmarks can kill and restart it)."""
    import argparse

    parser = argparse.ArgumentParser(description="gRPC stand-in for TensorFlow Serving (tests and benchmarks only)")
    parser.add_argument("base_path")
    parser.add_argument("--model-name", default="lossal")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server, target, _ = start_grpc_standin(args.base_path, args.model_name, port=args.port)
    print(f"ready {target}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
