"""`export_for_serving`: the SavedModel checked the way TF Serving's C++ path uses it."""

import json
import os
import struct
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import op_def_pb2  # noqa: F401 - registers OpDef protos
from tensorflow.python.framework import op_def_registry
from tensorflow_serving.apis import prediction_log_pb2

import keras_lossal as kl
from keras_lossal import export as export_lib
from keras_lossal.preprocessing import ImagePreprocessing

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import LABELS, PREP, SHAPE, lossal_export, make_model  # noqa: E402, F401
from tfserving_standin import SavedModelServable, SignatureError  # noqa: E402

SERVING_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "serving")


def random_images(n, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def png(image) -> bytes:
    return tf.io.encode_png(image).numpy()


def example(image_bytes: bytes, feature="image") -> bytes:
    feature_proto = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))
    return tf.train.Example(features=tf.train.Features(feature={feature: feature_proto})).SerializeToString()


@pytest.fixture(scope="module")
def exported(lossal_export):  # noqa: F811 - pytest fixture
    servable = SavedModelServable(lossal_export["path"])
    yield lossal_export["model"], lossal_export["path"], servable
    servable.close()


def reference(model, model_input):
    out = model.predict(model_input, verbose=0)
    logits = out["output"]
    probabilities = tf.nn.softmax(logits).numpy()
    return out["predicted_loss"], probabilities, probabilities.argmax(-1)


def penultimate_features(model, model_input):
    """The input of the backbone's last Dense layer: what the `embedding` output serves."""
    return np.asarray(kl.acquisition.models.embedding_model(model)(model_input, training=False)[0])


def assert_outputs(outputs, model, model_input):
    predicted_loss, probabilities, class_id = reference(model, model_input)
    np.testing.assert_allclose(outputs["predicted_loss"], predicted_loss, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(outputs["class_id"], class_id)
    np.testing.assert_allclose(outputs["embedding"], penultimate_features(model, model_input), atol=1e-5)
    assert outputs["predicted_loss"].dtype == np.float32 and outputs["predicted_loss"].shape == (len(model_input),)
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (len(model_input), 3)
    assert outputs["class_id"].dtype == np.int64
    assert outputs["embedding"].dtype == np.float32 and outputs["embedding"].shape == (len(model_input), 32)


def test_layout_and_config(exported):
    _, path, servable = exported
    assert os.path.basename(path) == "1"
    assert {"saved_model.pb", "variables", "assets.extra"} <= set(os.listdir(path))
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".tmp")]
    config = kl.export.read_export_config(os.path.dirname(path))
    assert ImagePreprocessing.from_config(config["preprocessing"]) == PREP
    assert config["labels"] == LABELS and config["task"] == "classification"
    assert set(servable.signatures) == {"serving_default", "score_image_bytes", "score_examples", "classify", "regress"}


def test_serving_default_matches_predict(exported):
    model, _, servable = exported
    x = PREP(random_images(5, seed=1)).numpy()
    outputs = servable.run("serving_default", {"images": x})
    assert_outputs(outputs, model, x)
    # Logits are not probabilities: softmax was applied in the graph.
    assert not np.allclose(outputs["probabilities"], model.predict(x, verbose=0)["output"], atol=1e-3)


def test_score_image_bytes_matches_training_preprocessing(exported):
    model, _, servable = exported
    images = random_images(4, seed=2)
    outputs = servable.run("score_image_bytes", {"image_bytes": np.array([png(image) for image in images], object)})
    assert_outputs(outputs, model, PREP(images).numpy())


def test_score_image_bytes_resizes_and_decodes_jpeg(exported):
    model, _, servable = exported
    large = random_images(2, seed=3, shape=(12, 10, 3))
    jpegs = [tf.io.encode_jpeg(image).numpy() for image in large]
    outputs = servable.run("score_image_bytes", {"image_bytes": np.array(jpegs, object)})
    decoded = np.stack([tf.io.decode_jpeg(data, channels=3).numpy() for data in jpegs])
    assert_outputs(outputs, model, PREP(decoded).numpy())


def test_score_examples_classify_regress(exported):
    model, _, servable = exported
    images = random_images(3, seed=4)
    examples = np.array([example(png(image)) for image in images], object)
    model_input = PREP(images).numpy()
    assert_outputs(servable.run("score_examples", {"examples": examples}), model, model_input)
    predicted_loss, probabilities, _ = reference(model, model_input)
    classified = servable.run("classify", {"inputs": examples})
    assert classified["classes"].dtype == object and classified["classes"].shape == (3, 3)
    assert [label.decode() for label in classified["classes"][0]] == LABELS
    np.testing.assert_allclose(classified["scores"], probabilities, atol=1e-5)
    regressed = servable.run("regress", {"inputs": examples})
    np.testing.assert_allclose(regressed["outputs"], predicted_loss, atol=1e-5)
    assert servable.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert servable.signatures["regress"].method_name == "tensorflow/serving/regress"
    assert servable.signatures["serving_default"].method_name == "tensorflow/serving/predict"


def test_signature_dtypes_and_batch_dims(exported):
    _, _, servable = exported
    allowed = {tf.float32.as_datatype_enum, tf.int64.as_datatype_enum, tf.string.as_datatype_enum}
    for name, signature in servable.signatures.items():
        assert (
            set(signature.inputs)
            == {
                "serving_default": {"images"},
                "score_image_bytes": {"image_bytes"},
                "score_examples": {"examples"},
                "classify": {"inputs"},
                "regress": {"inputs"},
            }[name]
        )
        for key, info in [*signature.inputs.items(), *signature.outputs.items()]:
            assert info.dtype in allowed, (name, key, info.dtype)
            assert info.tensor_shape.dim[0].size == -1, (name, key)


def test_only_stock_ops_no_pyfunc_no_xla(exported):
    _, _, servable = exported
    graph_def = servable.meta_graph.graph_def
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    assert len(nodes) > 50
    forbidden = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    for node in nodes:
        assert op_def_registry.get(node.op) is not None, f"op {node.op} is not registered in stock TensorFlow"
        assert node.op not in forbidden and not node.op.startswith("Xla"), node.op
        assert not node.attr["_XlaMustCompile"].b, node.name
    for function in graph_def.library.function:
        assert not function.attr["_XlaMustCompile"].b, function.signature.name


def test_warmup_parses_and_replays(exported):
    _, path, servable = exported
    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    records = list(tf.compat.v1.io.tf_record_iterator(warmup))
    assert 0 < len(records) <= 1000
    kinds = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        kind = log.WhichOneof("log_type")
        kinds.add(kind)
        if kind == "predict_log":
            request = log.predict_log.request
            inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
            outputs = servable.run(request.model_spec.signature_name, inputs)
            assert np.all(np.isfinite(outputs["predicted_loss"]))
        else:
            request = getattr(log, kind).request
            examples = np.array([e.SerializeToString() for e in request.input.example_list.examples], object)
            outputs = servable.run(request.model_spec.signature_name, {"inputs": examples})
            assert len(next(iter(outputs.values()))) == len(examples)
    assert kinds == {"predict_log", "classify_log", "regress_log"}


def _png_header_only(height, width) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16


def test_decompression_bomb_and_corrupt_images_rejected(exported):
    _, _, servable = exported
    with pytest.raises(SignatureError, match="decompression-bomb"):
        servable.run("score_image_bytes", {"image_bytes": np.array([_png_header_only(100_000, 100_000)], object)})
    with pytest.raises(SignatureError, match="unsupported or corrupt"):
        servable.run("score_image_bytes", {"image_bytes": np.array([b"not an image at all, sorry"], object)})
    # A GIF whose header claims a 1x1 canvas may hold a huge frame: refused in the graph too.
    gif = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x00" * 40
    with pytest.raises(SignatureError, match="unsupported or corrupt"):
        servable.run("score_image_bytes", {"image_bytes": np.array([gif], object)})
    truncated = png(random_images(1, seed=5)[0])[:60]
    with pytest.raises(SignatureError):
        servable.run("score_image_bytes", {"image_bytes": np.array([truncated], object)})


def test_versions_never_overwritten_and_validated(exported, tmp_path):
    model, _, _ = exported
    base = tmp_path / "m"
    (base / "notes").mkdir(parents=True)  # a non-numeric directory is ignored
    (base / "7").mkdir()
    (base / "7" / "saved_model.pb").write_bytes(b"")
    path = kl.export.export_for_serving(model, str(base), warmup=False)
    assert os.path.basename(path) == "8"
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        kl.export.export_for_serving(model, str(base), version=8, warmup=False)
    for bad in ("v2", "../2", -1, True, 1.5):
        with pytest.raises(ValueError, match="version"):
            kl.export.export_for_serving(model, str(base), version=bad, warmup=False)
    assert sorted(os.listdir(base)) == ["7", "8", "notes"]
    assert export_lib.resolve_version_dir(str(base)) == str(base / "8")
    assert export_lib.resolve_version_dir(str(base / "8")) == str(base / "8")
    os.rename(base / "8", base / "8_copy")
    with pytest.raises(ValueError, match="not an integer version"):
        export_lib.resolve_version_dir(str(base / "8_copy"))


def test_crash_during_export_leaves_no_version(exported, tmp_path, monkeypatch):
    model, _, _ = exported
    written = []

    def crash(signatures):
        written.extend(os.listdir(os.path.join(tmp_path, "m", os.listdir(tmp_path / "m")[0])))
        raise RuntimeError("simulated crash after the SavedModel was written")

    monkeypatch.setattr(export_lib.savedmodel, "validate_signatures", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        kl.export.export_for_serving(model, str(tmp_path / "m"))
    assert "saved_model.pb" in written  # the crash hit a half-finished export...
    assert os.listdir(tmp_path / "m") == []  # ...which never became a version directory


def test_non_classifier_with_float_examples(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = kl.backbones.resnet18_cifar(SHAPE, num_classes=1, width=2)
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4))
    path = kl.export.export_for_serving(model, str(tmp_path / "r"), preprocessing=PREP, example_encoding="float")
    servable = SavedModelServable(path)
    assert set(servable.signatures) == {"serving_default", "score_image_bytes", "score_examples", "regress"}
    pixels = random_images(3, seed=7)
    x = PREP(pixels).numpy()
    expected = model.predict(x, verbose=0)
    outputs = servable.run("serving_default", {"images": x})
    assert set(outputs) == {"predicted_loss", "output", "embedding"}
    np.testing.assert_allclose(outputs["output"], expected["output"], atol=1e-5)
    np.testing.assert_allclose(outputs["embedding"], penultimate_features(model, x), atol=1e-5)
    np.testing.assert_allclose(outputs["predicted_loss"], expected["predicted_loss"], atol=1e-5)
    examples = []
    for image in pixels:
        values = tf.train.Feature(float_list=tf.train.FloatList(value=image.astype(np.float32).ravel().tolist()))
        examples.append(tf.train.Example(features=tf.train.Features(feature={"image": values})).SerializeToString())
    from_examples = servable.run("score_examples", {"examples": np.array(examples, object)})
    np.testing.assert_allclose(from_examples["predicted_loss"], expected["predicted_loss"], atol=1e-5)
    np.testing.assert_allclose(from_examples["output"], expected["output"], atol=1e-5)
    regressed = servable.run("regress", {"inputs": np.array(examples, object)})
    np.testing.assert_allclose(regressed["outputs"], expected["predicted_loss"], atol=1e-5)
    with pytest.raises(ValueError, match="task='classification'"):
        kl.export.export_for_serving(model, str(tmp_path / "r"), task="classification")
    servable.close()


def test_mixed_precision_model_exports_float32_outputs(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    backbone = kl.backbones.resnet18_cifar(SHAPE, num_classes=3, width=2)
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4))
    path = kl.export.export_for_serving(model, str(tmp_path / "m"), warmup=False)
    keras.mixed_precision.set_global_policy("float32")
    servable = SavedModelServable(path)
    x = PREP(random_images(2, seed=8)).numpy()
    outputs = servable.run("serving_default", {"images": x})
    assert outputs["probabilities"].dtype == np.float32 and outputs["predicted_loss"].dtype == np.float32
    signature = servable.signatures["serving_default"]
    assert {info.dtype for info in signature.outputs.values()} <= {
        tf.float32.as_datatype_enum,
        tf.int64.as_datatype_enum,
    }
    np.testing.assert_allclose(outputs["predicted_loss"], model.predict(x, verbose=0)["predicted_loss"], atol=1e-3)
    servable.close()


def test_bad_arguments_name_the_value(exported, tmp_path):
    model, _, _ = exported
    with pytest.raises(ValueError, match="Expected 3 labels"):
        kl.export.export_for_serving(model, str(tmp_path), labels=["a"])
    with pytest.raises(ValueError, match="does not match the backbone input"):
        kl.export.export_for_serving(model, str(tmp_path), preprocessing=ImagePreprocessing(4, 4, 3))
    with pytest.raises(ValueError, match="task"):
        kl.export.export_for_serving(model, str(tmp_path), task="detection")


def _batching_parameters_message():
    """TF Serving's `BatchingParameters` (session_bundle_config.proto), which the pip package does not ship.

    Text format parses by field name, so unknown or misspelled fields still fail the test.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(
        name="lossal_test_batching.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    label, optional = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ]
    for name, number, type_name in fields:
        message.field.add(name=name, number=number, label=optional, type=label.TYPE_MESSAGE, type_name=type_name)
    message.field.add(name="allowed_batch_sizes", number=6, label=label.LABEL_REPEATED, type=label.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=optional, type=label.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))()


def test_serving_configs_parse():
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(SERVING_DIR, "models.config")) as handle:
        config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    assert [model.name for model in models] == ["lossal"]
    assert models[0].base_path == "/models/lossal" and models[0].model_platform == "tensorflow"
    assert models[0].model_version_policy.WhichOneof("policy_choice")
    assert dict(models[0].version_labels)
    with open(os.path.join(SERVING_DIR, "batching_parameters.txt")) as handle:
        batching = text_format.Parse(handle.read(), _batching_parameters_message())
    assert batching.max_batch_size.value >= 1 and batching.batch_timeout_micros.value >= 0
    assert list(batching.allowed_batch_sizes)[-1] == batching.max_batch_size.value
    with open(os.path.join(SERVING_DIR, "docker-compose.yml")) as handle:
        compose = handle.read()
    assert "tensorflow/serving" in compose and "8500" in compose and "8501" in compose


def test_lossal_json_is_plain_json(exported):
    _, path, _ = exported
    with open(os.path.join(path, "assets.extra", "lossal.json")) as handle:
        config = json.load(handle)
    assert config["signatures"]["serving_default"]["inputs"]["images"] == {"dtype": "float32", "shape": [None, 8, 8, 3]}


def test_softmax_output_is_not_softmaxed_twice(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    backbone = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(pooled))
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4))
    path = kl.export.export_for_serving(model, str(tmp_path / "s"), preprocessing=PREP)
    assert json.load(open(os.path.join(path, "assets.extra", "lossal.json")))["from_logits"] is False
    servable = SavedModelServable(path)
    x = PREP(random_images(4, seed=9)).numpy()
    outputs = servable.run("serving_default", {"images": x})
    np.testing.assert_allclose(outputs["probabilities"], model.predict(x, verbose=0)["output"], atol=1e-5)
    servable.close()


def bmp24(pixels: np.ndarray) -> bytes:
    """A 24-bit BMP (bottom-up rows, BGR, 4-byte row padding) of `pixels` (H, W, 3) uint8."""
    height, width, _ = pixels.shape
    row_bytes = (width * 3 + 3) // 4 * 4
    rows = b"".join(pixels[y, :, ::-1].tobytes().ljust(row_bytes, b"\x00") for y in range(height - 1, -1, -1))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return header + info + rows


def test_bmp_is_scored_by_a_grayscale_export(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(inputs)
    backbone = keras.Model(
        inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(features))
    )
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4))
    gray_prep = ImagePreprocessing(8, 8, 1, mean=(0.5,), std=(0.25,))
    path = kl.export.export_for_serving(model, str(tmp_path / "gray"), preprocessing=gray_prep, warmup=False)
    servable = SavedModelServable(path)
    gray = random_images(2, seed=10, shape=(8, 8, 1))
    payloads = [bmp24(np.repeat(image, 3, axis=-1)) for image in gray] + [png(image) for image in gray]
    outputs = servable.run("score_image_bytes", {"image_bytes": np.array(payloads, object)})
    expected = model.predict(gray_prep(gray).numpy(), verbose=0)["predicted_loss"]
    np.testing.assert_allclose(outputs["predicted_loss"], np.concatenate([expected, expected]), atol=1e-5)
    servable.close()


def test_bmp_is_scored_like_the_same_png_by_an_rgb_export(exported):
    model, _, servable = exported
    pixels = random_images(2, seed=11)
    payloads = np.array([bmp24(image) for image in pixels] + [png(image) for image in pixels], object)
    outputs = servable.run("score_image_bytes", {"image_bytes": payloads})
    expected = reference(model, PREP(pixels).numpy())[0]
    np.testing.assert_allclose(outputs["predicted_loss"], np.concatenate([expected, expected]), atol=1e-5)
