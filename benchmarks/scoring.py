"""Scoring throughput against the floor: a bare compiled forward loop over the same model.

For each model, in one run and side by side, every method scores the same
in-memory pool and picks the top k by predicted loss:

- `floor`: a `tf.function` forward of the same `LossLearningModel` called on
  `--batch-size`-item slices of the NumPy pool, the outputs kept, and one host
  `argpartition` at the end. Nothing can score faster than this without
  changing the model.
- `floor, 8 batches per call`: the same forward, but each compiled call loops over 8 batches inside
  it, one at a time, as `select` does (the host's fixed cost per call is paid once per 8 batches).
  A reference: the headline ratio is against the first floor, a call per batch.
- `select`: `acquisition.get("learning_loss").select(model, pool, k, batch_size)`, the documented call,
  with a new strategy every round as a user writes it (the compiled step is cached on the model).
- `select (tf.data pool)`: the same on `tf.data.Dataset.from_tensor_slices(pool)`.
- `LossLearningModel.predict` + argpartition: Keras' own loop, for reference.

A round runs every method once over the whole pool, in a rotating order so
drifting background load hits all alike; after a warm-up (tracing), the
headline per method is the median over rounds of floor time / method time
(a throughput ratio: 1.0 is the floor's speed). Process CPU time is reported
beside wall time. The picks of every method are checked against the floor's.

Models (issue 13): a small CNN on 16x16x1 images, 30,000 items; and
`resnet18_cifar` width 8 on 28x28x1, 10,000 items. Target: select >= 0.9x.

Then the exported model (`export_for_serving` of the ResNet, PNG bytes in), at
`--export-batch-size` items per call on `--export-items` PNGs. The floor is
the SavedModel's `score_image_bytes` signature (decode, preprocessing and
forward, compiled) called on ready-made batches of the PNG bytes; beside it
`InProcessScorer.score` (what triage and Beam score with), the Beam
`LossalModelHandler.run_inference` on pool-item batches, and whole
`triage` runs over a folder of the same PNG files (file reads on
`--read-threads` threads, the records, the queue: not only scoring), with
the default queue selection (`budget_switch`: `badge` here, as this export
records no training), with the previous default `learning_loss_clusters`
(k-means of the candidates' embeddings), and with `selection="top_k"`, so
the selection's share shows. Targets: the
scorer and the handler >= 0.9x; a whole triage run >= 0.9x (issue 25).
In-process, triage keeps two scoring calls in flight (`InProcessScorer.concurrent_calls`),
so two more rows show what that is worth: the floor with two calls at once
(a second floor, printed as a ratio for each whole run) and the default
triage run with one call at a time.

Then a remote-like scorer, a stand-in for a TF Serving host on another machine: every call waits
`--remote-latency-ms` (the server's time, no local CPU) and returns the scores the exported model gave
those PNGs. Its floor is that waiting alone (latency x calls); beside it a whole triage run with it, and
the same run with no latency (the client's own work: reads, hashes, records, queue). Triage scores one
batch while it records the previous one, so with a remote server the client's work should hide behind
the server's time: the ratio should approach 1.0, against floor / (floor + client work) without overlap.

Run: `python benchmarks/scoring.py` (about 5 minutes on 2 cores), on a quiet machine;
`--models ""` measures the exported model, triage and the remote-like scorer only.
"""

import argparse
import concurrent.futures
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lossal as kl  # noqa: E402
from keras_lossal import acquisition  # noqa: E402
from keras_lossal.beam import LossalModelHandler  # noqa: E402
from keras_lossal.contracts import DEFAULT_READ_THREADS, DEFAULT_SELECTION  # noqa: E402
from keras_lossal.export import export_for_serving  # noqa: E402
from keras_lossal.preprocessing import ImagePreprocessing  # noqa: E402
from keras_lossal.serving import InProcessScorer, read_items, triage  # noqa: E402

TWO_CALLS_FLOOR = "floor, 2 calls at once"


def small_cnn(input_shape=(16, 16, 1)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="small_cnn")


MODELS = {
    "small_cnn": (lambda: small_cnn((16, 16, 1)), (16, 16, 1), 30_000),
    "resnet18_cifar_w8": (
        lambda: kl.backbones.resnet18_cifar(input_shape=(28, 28, 1), num_classes=10, width=8),
        (28, 28, 1),
        10_000,
    ),
}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-scores, k - 1)[:k]


# `select` runs up to this many batches per compiled call (`IndexedPool.group_size`, for these models);
# the second floor does the same, to show what remains of select's own cost.
GROUP = 8


def runners(model, batch_size: int, k: int) -> dict:
    forward = tf.function(lambda x: model(x, training=False)["predicted_loss"])

    def floor(pool):
        parts = [forward(pool[start : start + batch_size]) for start in range(0, len(pool), batch_size)]
        return top_k(np.concatenate([part.numpy().reshape(-1) for part in parts]), k)

    group = GROUP

    @tf.function
    def grouped_forward(x):  # `group` batches per call, one at a time in a loop inside it
        def one(batch):
            return tf.reshape(model(batch, training=False)["predicted_loss"], [batch_size])

        scores = tf.map_fn(one, x, fn_output_signature=tf.TensorSpec([batch_size], tf.float32), parallel_iterations=1)
        return tf.reshape(scores, [-1])

    def floor_grouped(pool):
        step, full = group * batch_size, len(pool) // (group * batch_size) * (group * batch_size)
        parts = [
            grouped_forward(pool[s : s + step].reshape(group, batch_size, *pool.shape[1:]))
            for s in range(0, full, step)
        ]
        parts += [forward(pool[s : s + batch_size]) for s in range(full, len(pool), batch_size)]
        return top_k(np.concatenate([part.numpy().reshape(-1) for part in parts]), k)

    def predict(pool):
        return top_k(model.predict(pool, batch_size=batch_size, verbose=0)["predicted_loss"].reshape(-1), k)

    return {
        "floor": floor,
        f"floor, {group} batches per call": floor_grouped,
        "select": lambda pool: acquisition.get("learning_loss").select(model, pool, k=k, batch_size=batch_size).indices,
        "select (tf.data pool)": lambda pool: (
            acquisition.get("learning_loss")
            .select(model, tf.data.Dataset.from_tensor_slices(pool), k=k, batch_size=batch_size)
            .indices
        ),
        "LossLearningModel.predict": predict,
    }


def measure(name: str, args) -> dict:
    build, input_shape, items = MODELS[name]
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(build())
    pool = np.random.default_rng(0).random((items, *input_shape), dtype=np.float32)
    methods = runners(model, args.batch_size, args.k)
    names = list(methods)
    picks = {}
    for method in names:  # warm-up: tracing (the floor's last partial slice traces a second shape)
        picks[method] = set(methods[method](pool).tolist())
    for method in names[1:]:
        overlap = len(picks[method] & picks["floor"]) / args.k
        assert overlap >= 0.999, f"{method} picks differ from the floor's: overlap {overlap:.4f}"
    timings = interleaved({method: (lambda run=methods[method]: run(pool)) for method in names}, args.rounds)
    return {"items": items, "input_shape": input_shape, **timings}


def interleaved(methods: dict, rounds: int) -> dict:
    """`{"wall": {method: [seconds per round]}, "cpu": {...}}`, the order rotating per round."""
    names = list(methods)
    wall = {method: [] for method in names}
    cpu = {method: [] for method in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for method in names[shift:] + names[:shift]:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            methods[method]()
            wall[method].append(time.perf_counter() - wall_start)
            cpu[method].append(time.process_time() - cpu_start)
    return {"wall": wall, "cpu": cpu}


def export_runners(args, workdir: str) -> tuple[dict, int, InProcessScorer, int]:
    """The exported model's methods (floor, scorer, Beam handler, whole triage runs), the items, the scorer, the calls per pass."""
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(MODELS["resnet18_cifar_w8"][0]())
    base = os.path.join(workdir, "models", "lossal")
    export_for_serving(model, base, preprocessing=ImagePreprocessing(28, 28, 1, mean=(0.3,), std=(0.3,)))
    pixels = np.random.default_rng(0).integers(0, 256, size=(args.export_items, 28, 28, 1), dtype=np.uint8)
    pngs = [tf.io.encode_png(image).numpy() for image in pixels]
    folder = os.path.join(workdir, "unlabeled")
    os.makedirs(folder)
    for index, png in enumerate(pngs):
        with open(os.path.join(folder, f"{index:06d}.png"), "wb") as handle:
            handle.write(png)
    size = args.export_batch_size
    batches = [pngs[start : start + size] for start in range(0, len(pngs), size)]
    tensors = [tf.constant(batch) for batch in batches]
    scorer = InProcessScorer(base)
    signature = tf.saved_model.load(scorer.version_dir).signatures["score_image_bytes"]
    (input_name,) = signature.structured_input_signature[1].keys()
    handler = LossalModelHandler(base, max_batch_size=size)
    handler_model = handler.load_model()
    items = [
        [{"id": f"{start + i}", "path": f"{start + i}.png", "kind": "image", "payload": png, "extra": None}
         for i, png in enumerate(batch)]
        for start, batch in zip(range(0, len(pngs), size), batches)
    ]  # fmt: skip
    pair = concurrent.futures.ThreadPoolExecutor(2)  # the floor with two calls in flight, as triage scores

    def floor_call(tensor):
        return signature(**{input_name: tensor})["predicted_loss"].numpy()

    methods = {
        "floor (score_image_bytes)": lambda: [floor_call(t) for t in tensors],
        TWO_CALLS_FLOOR: lambda: list(pair.map(floor_call, tensors)),
        "InProcessScorer.score": lambda: [scorer.score("image", batch) for batch in batches],
        "LossalModelHandler.run_inference": lambda: [list(handler.run_inference(b, handler_model)) for b in items],
    }
    # The default (budget_switch: badge here, the export records no training) and the previous default.
    runs = ((DEFAULT_SELECTION, None), ("learning_loss_clusters", None), ("top_k", None), (DEFAULT_SELECTION, 1))
    for selection, calls in runs:
        label = f"triage (whole run, {selection})" if calls is None else f"triage ({selection}, 1 call at a time)"
        methods[label] = lambda selection=selection, calls=calls: triage(
            read_items(folder),
            scorer,
            os.path.join(workdir, f"triage_{selection}_{calls}"),
            top_k=args.triage_top_k,
            batch_size=size,
            restart=True,
            selection=selection,
            read_threads=args.read_threads,
            scoring_calls=calls,
        )
    for method in methods.values():  # warm-up: tracing, first reads
        method()
    return methods, len(pngs), scorer, len(batches)


class RemoteLikeScorer:
    """A scorer standing in for a server on another machine: waits `latency` seconds per call, uses no CPU.

    It answers with the outputs `scorer` gave the same payloads (computed once, on first sight), so the
    triage records and queue are real; only the server's compute is replaced by waiting.
    """

    def __init__(self, scorer: InProcessScorer, latency: float):
        self.scorer, self.latency, self.answers = scorer, latency, {}
        for name in ("description", "version", "labels", "max_image_pixels", "max_image_bytes", "example_feature"):
            setattr(self, name, getattr(scorer, name))

    def score(self, kind: str, payloads: list[bytes]) -> dict:
        key = (kind, hash(tuple(payloads)))
        if key not in self.answers:
            self.answers[key] = self.scorer.score(kind, payloads)
        time.sleep(self.latency)
        return self.answers[key]


def remote_runners(args, workdir: str, scorer: InProcessScorer, calls: int) -> dict:
    """The remote-like scorer's floor (waiting alone) and whole triage runs with it, with and without latency."""
    folder = os.path.join(workdir, "unlabeled")
    remote = RemoteLikeScorer(scorer, args.remote_latency_ms / 1000)
    local = RemoteLikeScorer(scorer, 0.0)
    local.answers = remote.answers

    def run(with_scorer, name):
        return triage(
            read_items(folder), with_scorer, os.path.join(workdir, name), top_k=args.triage_top_k,
            batch_size=args.export_batch_size, restart=True, selection="top_k", read_threads=args.read_threads,
        )  # fmt: skip

    methods = {
        f"floor (server time: {calls} calls x {args.remote_latency_ms:g} ms)": lambda: [
            time.sleep(remote.latency) for _ in range(calls)
        ],
        "triage (whole run, top_k, remote-like scorer)": lambda: run(remote, "remote"),
        "triage, no latency (the client's own work)": lambda: run(local, "client"),
    }
    for method in methods.values():  # warm-up: the answers, first reads
        method()
    return methods


def paired_ratio(result: dict, reference: str, method: str) -> float:
    """The median over rounds of `reference`'s time / `method`'s time (the rounds pair them)."""
    wall = result["wall"]
    return statistics.median(r / m for r, m in zip(wall[reference], wall[method]))


def report(name: str, result: dict, rounds: int) -> None:
    wall, cpu, items = result["wall"], result["cpu"], result["items"]
    print(f"{name}: {items} items of {result['input_shape']}, median of {rounds} interleaved rounds")
    floor = next(iter(wall))
    for method in wall:
        ratios = [reference / mine for reference, mine in zip(wall[floor], wall[method])]
        cpu_ratio = statistics.median(f / m for f, m in zip(cpu[floor], cpu[method]))
        median = statistics.median(wall[method])
        print(
            f"    {method:44s} {items / median:8.0f} items/s  x floor {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})  CPU-time x floor {cpu_ratio:.3f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--export-items", type=int, default=2048)
    parser.add_argument("--export-batch-size", type=int, default=64)
    parser.add_argument("--triage-top-k", type=int, default=100, help="the triage runs' queue length")
    parser.add_argument("--read-threads", type=int, default=DEFAULT_READ_THREADS, help="the triage runs' readers")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--remote-latency-ms", type=float, default=20.0, help="the remote-like scorer's wait per call")
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; batch_size={args.batch_size} k={args.k}"
    )
    for name in filter(None, args.models.split(",")):  # --models "": the exported model and triage only
        report(name, measure(name, args), args.rounds)
    print("target: select >= 0.9x floor")
    if not args.skip_export:
        with tempfile.TemporaryDirectory(prefix="lossal_bench_scoring_") as workdir:
            methods, items, scorer, calls = export_runners(args, workdir)
            result = {"items": items, "input_shape": "PNG 28x28x1", **interleaved(methods, args.rounds)}
            report(f"exported resnet18_cifar_w8, batch {args.export_batch_size}", result, args.rounds)
            whole = [method for method in result["wall"] if method.startswith("triage (whole run")]
            print(
                "    whole triage runs x the floor with 2 calls at once (as triage scores in-process): "
                + ", ".join(f"{method[19:-1]} {paired_ratio(result, TWO_CALLS_FLOOR, method):.3f}" for method in whole)
            )
            print(
                f"triage: top_k={args.triage_top_k}, read_threads={args.read_threads}; "
                "target: InProcessScorer.score, LossalModelHandler.run_inference and a whole triage run >= 0.9x floor"
            )
            remote = remote_runners(args, workdir, scorer, calls)
            result = {"items": items, "input_shape": "PNG 28x28x1", **interleaved(remote, args.rounds)}
            report(f"remote-like scorer, {args.remote_latency_ms:g} ms per call", result, args.rounds)
            wall = {method: statistics.median(times) for method, times in result["wall"].items()}
            floor, _, client = wall.values()
            print(
                f"without overlap a triage run would take floor + client work: x floor {floor / (floor + client):.3f}"
            )


if __name__ == "__main__":
    main()
