"""`TFServingClient` against the in-process gRPC and REST stand-ins for TF Serving."""

import os
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, prediction_service_pb2_grpc, regression_pb2

from keras_lossal.serving import ServingError, TFServingClient

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import LABELS, PREP, lossal_export  # noqa: E402, F401
from tfserving_standin import start_grpc_standin, start_rest_standin  # noqa: E402


@pytest.fixture(scope="module")
def served(lossal_export):  # noqa: F811 - pytest fixture
    model, base = lossal_export["model"], lossal_export["base"]
    grpc_server, grpc_target, grpc_service = start_grpc_standin(base, "lossal", labels={"stable": 1})
    rest_server, rest_target, rest_faults = start_rest_standin(base, "lossal", labels={"stable": 1})
    yield {
        "model": model,
        "grpc": (grpc_target, grpc_service.faults),
        "grpc_service": grpc_service,
        "rest": (rest_target, rest_faults),
    }
    grpc_server.stop(None)
    rest_server.shutdown()


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


def expected(model, pixels):
    out = model.predict(PREP(pixels).numpy(), verbose=0)
    return out["predicted_loss"], tf.nn.softmax(out["output"]).numpy()


@pytest.mark.parametrize("protocol,rest_format", [("grpc", "inputs"), ("rest", "inputs"), ("rest", "instances")])
def test_score_image_bytes_batched_and_ordered(served, protocol, rest_format):
    target, faults = served[protocol]
    pixels = images(11, seed=1)
    payloads = [tf.io.encode_png(image).numpy() for image in pixels]
    before = faults.requests
    with TFServingClient(
        target,
        "lossal",
        protocol=protocol,
        signature="score_image_bytes",
        batch_size=4,
        max_concurrency=3,
        rest_format=rest_format,
    ) as client:
        outputs = client.score(payloads)
    assert faults.requests - before == 3  # 11 rows in requests of 4
    predicted_loss, probabilities = expected(served["model"], pixels)
    np.testing.assert_allclose(outputs["predicted_loss"], predicted_loss, atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-5)
    assert outputs["predicted_loss"].dtype == np.float32 and outputs["class_id"].dtype == np.int64
    np.testing.assert_array_equal(outputs["class_id"], probabilities.argmax(-1))


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_serving_default_float_inputs_version_and_label(served, protocol):
    target, _ = served[protocol]
    x = PREP(images(3, seed=2)).numpy()
    reference = served["model"].predict(x, verbose=0)["predicted_loss"]
    for kwargs in ({"version": 1}, {"label": "stable"}, {}):
        with TFServingClient(target, "lossal", protocol=protocol, **kwargs) as client:
            np.testing.assert_allclose(client.score(x)["predicted_loss"], reference, atol=1e-5)
    with TFServingClient(target, "lossal", protocol=protocol, version=9, retries=0) as client:
        with pytest.raises(ServingError, match="NOT_FOUND|HTTP 404") as info:
            client.score(x)
    assert info.value.attempts == 1


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_retries_transient_failures_with_backoff(served, protocol):
    target, faults = served[protocol]
    code = "UNAVAILABLE" if protocol == "grpc" else "503"
    faults.fail_next(2, code)
    before = faults.requests
    started = time.perf_counter()
    with TFServingClient(target, "lossal", protocol=protocol, retries=3, backoff=0.05) as client:
        outputs = client.score(PREP(images(2)).numpy())
    assert outputs["predicted_loss"].shape == (2,)
    assert faults.requests - before == 3
    assert time.perf_counter() - started >= 0.05 * 0.5 + 0.1 * 0.5  # two backoff sleeps with jitter >= 0.5


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_gives_up_after_retries_and_names_model_signature_cause(served, protocol):
    target, faults = served[protocol]
    faults.fail_next(3, "UNAVAILABLE" if protocol == "grpc" else "503")
    before = faults.requests
    with TFServingClient(target, "lossal", protocol=protocol, retries=2, backoff=0.001) as client:
        with pytest.raises(ServingError) as info:
            client.score(PREP(images(2)).numpy())
    assert faults.requests - before == 3
    message = str(info.value)
    assert "model='lossal'" in message and "signature='serving_default'" in message and "injected fault" in message
    assert info.value.retryable and info.value.attempts == 3


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_no_retry_on_invalid_argument(served, protocol):
    target, faults = served[protocol]
    before = faults.requests
    with TFServingClient(target, "lossal", protocol=protocol, signature="score_image_bytes", retries=5) as client:
        with pytest.raises(ServingError, match="INVALID_ARGUMENT|HTTP 400") as info:
            client.score([b"definitely not a PNG file"])
    assert faults.requests - before == 1
    assert not info.value.retryable and "score_image_bytes" in str(info.value)
    faults.fail_next(1, "INVALID_ARGUMENT" if protocol == "grpc" else "400")
    before = faults.requests
    with TFServingClient(target, "lossal", protocol=protocol, retries=5) as client:
        with pytest.raises(ServingError):
            client.score(PREP(images(1)).numpy())
    assert faults.requests - before == 1


def test_concurrency_is_bounded(served):
    target, faults = served["grpc"]
    faults.delay, faults.max_in_flight = 0.4, 0
    try:
        with TFServingClient(target, "lossal", batch_size=1, max_concurrency=2) as client:
            outputs = client.score(PREP(images(6)).numpy())
    finally:
        faults.delay = 0.0
    assert outputs["predicted_loss"].shape == (6,)
    assert faults.max_in_flight == 2


def test_unreachable_server_is_unavailable_and_retried():
    with TFServingClient("localhost:1", "lossal", retries=1, backoff=0.001, timeout=2) as client:
        with pytest.raises(ServingError, match="UNAVAILABLE") as info:
            client.score(np.zeros((1, 8, 8, 3), np.float32))
    assert info.value.attempts == 2 and info.value.retryable


def test_classify_and_regress_apis_over_grpc(served):
    import grpc

    target, _ = served["grpc"]
    pixels = images(2, seed=3)
    example = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(p).numpy()]))}
            )
        )
        for p in pixels
    ]
    predicted_loss, probabilities = expected(served["model"], pixels)
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = "lossal", "classify"
        request.input.example_list.examples.extend(example)
        response = stub.Classify(request, timeout=10)
        classes = response.result.classifications
        assert [c.label for c in classes[0].classes] == LABELS
        np.testing.assert_allclose([[c.score for c in row.classes] for row in classes], probabilities, atol=1e-5)
        request = regression_pb2.RegressionRequest()
        request.model_spec.name, request.model_spec.signature_name = "lossal", "regress"
        request.input.example_list.examples.extend(example)
        response = stub.Regress(request, timeout=10)
        np.testing.assert_allclose([r.value for r in response.result.regressions], predicted_loss, atol=1e-5)


def test_bad_client_arguments():
    with pytest.raises(ValueError, match="protocol"):
        TFServingClient("localhost:8500", "m", protocol="thrift")
    with pytest.raises(ValueError, match="REST target"):
        TFServingClient("localhost:8501", "m", protocol="rest")
    with pytest.raises(ValueError, match="gRPC target"):
        TFServingClient("http://localhost:8500", "m", protocol="grpc")
    with pytest.raises(ValueError, match="either version or label"):
        TFServingClient("localhost:8500", "m", version=1, label="stable")
    assert TFServingClient("http://h:8501", "m", protocol=None).protocol == "rest"
    client = TFServingClient("localhost:1", "m", signature="score_image_bytes", max_message_bytes=1000, batch_size=2)
    with pytest.raises(ValueError, match="max_message_bytes=1000"):
        client.score([b"x" * 600, b"y" * 600])


def test_oversized_request_is_split_down_to_the_large_item():
    from keras_lossal.serving import Item, ServerScorer
    from keras_lossal.serving.client import Prediction, RequestTooLargeError
    from keras_lossal.serving.scorers import score_isolating

    class FakeClient:
        protocol, model_name, version, label = "grpc", "m", None, None

        def predict(self, payloads, signature):
            if sum(len(p) for p in payloads) > 100:
                raise RequestTooLargeError("would carry too many bytes")
            return Prediction({"predicted_loss": np.arange(len(payloads), dtype=np.float32)}, [7] * len(payloads))

    scorer = ServerScorer(FakeClient())
    batch = [(Item(f"id{i}", f"p{i}", "image"), b"x" * (150 if i == 2 else 10)) for i in range(5)]
    scored, failed = score_isolating(scorer, "image", batch, labels=None)
    assert sorted(record["id"] for record in scored) == ["id0", "id1", "id3", "id4"]
    assert {record["model_version"] for record in scored} == {7}
    assert [record["id"] for record in failed] == ["id2"] and "too many bytes" in failed[0]["reason"]
    assert failed[0]["retryable"] is False


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_numeric_inputs_are_checked_against_the_signature_over_both_protocols(served, protocol):
    target, faults = served[protocol]
    x = PREP(images(3, seed=4)).numpy()
    reference = served["model"].predict(x, verbose=0)["predicted_loss"]
    before = faults.requests
    with TFServingClient(target, "lossal", protocol=protocol, retries=0) as client:
        outputs = client.score(x.astype(np.float64))
        assert client.signatures()["serving_default"] == {"images": np.dtype(np.float32)}
        # Raw pixels would skip the preprocessing: REST used to send them and return wrong scores, silently.
        with pytest.raises(ValueError, match=r"as float32 .*Received dtype uint8"):
            client.score(images(3, seed=4))
        with pytest.raises(ValueError, match=r"within float32's range .*Received values in \[-1.9\d*, 1e\+300\]"):
            client.score(np.concatenate([x[:1], np.full((1, 8, 8, 3), 1e300)]))  # would be inf as float32
        with pytest.raises(ValueError, match=r"Expected the inputs \['images'\] .*Received: \['pixels'\]"):
            client.score({"pixels": x})
    np.testing.assert_allclose(outputs["predicted_loss"], reference, atol=1e-5)
    assert faults.requests - before == 1  # every refusal before a Predict was sent


def test_both_protocols_validate_with_the_one_shared_function(served, monkeypatch):
    from keras_lossal.serving import client as client_lib

    calls = []
    real = client_lib.checked_inputs
    monkeypatch.setattr(client_lib, "checked_inputs", lambda *args: calls.append(args[2]) or real(*args))
    x = PREP(images(2, seed=5)).numpy()
    for protocol in ("grpc", "rest"):
        with TFServingClient(served[protocol][0], "lossal", protocol=protocol, retries=0) as client:
            client.score(x)
    assert calls == ["serving_default", "serving_default"]


def test_signature_dtypes_from_metadata_json_and_range_checks():
    from keras_lossal.serving.client import checked_inputs, signature_input_dtypes

    metadata = {"signatureDef": {"s": {"inputs": {"ids": {"dtype": "DT_INT32"}, "bf": {"dtype": "DT_BFLOAT16"}}}}}
    assert signature_input_dtypes(metadata) == {"s": {"ids": np.dtype(np.int32), "bf": None}}
    expected = signature_input_dtypes(metadata)["s"]
    bf = np.ones((2, 1), np.float64)  # no NumPy dtype to check against: sent as given
    checked = checked_inputs({"ids": np.array([1, 2**31 - 1]), "bf": bf}, expected, "s")
    assert checked["ids"].dtype == np.int32 and checked["ids"].tolist() == [1, 2**31 - 1] and checked["bf"] is bf
    with pytest.raises(ValueError, match=r"within int32's range .*Received values in \[1, 2147483648\]"):
        checked_inputs({"ids": np.array([1, 2**31]), "bf": bf}, expected, "s")  # would wrap to -2**31


@pytest.mark.parametrize(
    "target", ["localhost:85OO", "localhost:0", "localhost:65536", "localhost", "grpc://:8500", "http://localhost:85OO"]
)
def test_a_bad_port_is_refused_when_the_client_is_built(target):
    with pytest.raises(ValueError, match="Received: target="):
        TFServingClient(target, "lossal", protocol=None)


def test_good_targets_are_accepted():
    for target in ("localhost:8500", "grpc://10.0.0.1:8500", "[::1]:8500", "unix:/tmp/tfserving.sock"):
        TFServingClient(target, "lossal").close()
    assert TFServingClient("http://localhost", "lossal", protocol=None).protocol == "rest"


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_misspelled_signature_names_the_available_ones(served, protocol):
    target, faults = served[protocol]
    payload = tf.io.encode_png(images(1)[0]).numpy()
    before = faults.requests
    with TFServingClient(target, "lossal", protocol=protocol, retries=0) as client:
        with pytest.raises(ValueError, match="unknown signature") as info:
            client.score([payload], signature="score_imge_bytes")
    message = str(info.value)
    assert "signature='score_imge_bytes'" in message and "'score_image_bytes'" in message
    assert "'serving_default'" in message and faults.requests == before  # refused before any Predict


def test_readme_states_the_retry_rule_the_client_applies():
    from keras_lossal.serving import client as client_lib

    root = os.path.dirname(os.path.dirname(__file__))
    for readme in ("README.md", os.path.join("serving", "README.md")):
        text = " ".join(open(os.path.join(root, readme), encoding="utf-8").read().split())
        start = text.index("retries transient failures")
        sentence = text[start : start + 600]
        for code in client_lib._RETRYABLE_GRPC + tuple(str(status) for status in client_lib._RETRYABLE_HTTP):
            assert code in sentence, (readme, code)
        assert "5xx only" not in text and "UNAVAILABLE/5xx" not in text


def test_rest_client_loads_no_tensorflow_or_keras():
    import subprocess

    script = (
        "import sys\n"
        "import keras_lossal.serving.client\n"
        "before = sorted(sys.modules)\n"
        "client = keras_lossal.serving.client.TFServingClient('http://localhost:8501', 'lossal', protocol=None)\n"
        "import keras_lossal.serving\n"
        "assert client.protocol == 'rest', client\n"
        "print(' '.join(before))\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    after_import, after_construction = (set(line.split()) for line in result.stdout.splitlines())
    heavy = {"tensorflow", "keras", "keras_lossal.export", "tensorflow_serving", "grpc"}
    assert "keras_lossal.serving.client" in after_import
    assert not heavy & after_import
    assert not heavy & after_construction


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_names_the_version_that_answered_before_and_after_a_rollout(lossal_export, tmp_path, protocol):  # noqa: F811
    import shutil

    base = tmp_path / "lossal"
    for version in (1, 2):
        shutil.copytree(os.path.join(lossal_export["base"], "1"), base / str(version))
    if protocol == "grpc":
        server, target, service = start_grpc_standin(str(base), "lossal", labels={"stable": 1})
        repository, stop = service.repository, lambda: server.stop(None)
    else:
        server, target, _ = start_rest_standin(str(base), "lossal", labels={"stable": 1})
        repository, stop = server.RequestHandlerClass.repository, server.shutdown
    payloads = [tf.io.encode_png(image).numpy() for image in images(5, seed=3)]
    try:
        answered = {}
        for name, kwargs in (("latest", {}), ("pinned", {"version": 1}), ("label", {"label": "stable"})):
            with TFServingClient(target, "lossal", protocol=protocol, signature="score_image_bytes", batch_size=2,
                                 **kwargs) as client:  # fmt: skip
                prediction = client.predict(payloads)
                answered[name] = (client.served_version(), prediction.model_versions)
                np.testing.assert_array_equal(prediction.outputs["class_id"], client.score(payloads)["class_id"])
        assert answered == {"latest": (2, [2] * 5), "pinned": (1, [1] * 5), "label": (1, [1] * 5)}
        shutil.copytree(base / "1", base / "3")
        assert repository.poll(latest_only=True) == [3]  # TF Serving's default policy: the newest version only
        with TFServingClient(target, "lossal", protocol=protocol, signature="score_image_bytes") as client:
            assert client.served_version() == 3 and client.predict(payloads).model_versions == [3] * 5
    finally:
        stop()
