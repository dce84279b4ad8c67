"""`LossLearningModel.fit` under `tf.distribute.MultiWorkerMirroredStrategy`: two worker processes on localhost.

What "the same update" means. Under any `tf.distribute` strategy each replica
computes the joint loss on its own slice of the global batch (B / replicas
items): the task loss is the slice's mean, the ranking loss pairs items within
the slice only (the paper's disjoint pairs (i, b-1-i) of the b local items, or
all b(b-1)/2 pairs of the slice), and BatchNormalization normalises with the
slice's statistics; the step follows the mean of the replicas' joint losses.
One device training on the whole global batch pairs other items, so it is not
the reference. The reference is the same model, from the same weights, on the
same global batches, split over the same two replicas, in one process:

- a `MirroredStrategy` over two logical CPUs, trained by the same `fit`; and
- the update computed by hand on one device (`update_by_hand` in
  `tests/multiworker_worker.py`): each global batch split into its two halves,
  one joint loss per half, an SGD step on their mean.

Checked: after one epoch (two steps) both workers hold the reference's trainable
weights (rtol 1e-5, atol 1e-6), and the same ones; pairing the ranking loss
across the whole global batch would have given other weights (so the check can
tell); each worker's BatchNormalization statistics are those of the replica it
plays (they differ between workers); the logs are the mean over replicas on
both workers; and the recipes of `docs/scaling.md` for `keras_lossal.training.train`
and `ActiveLearningLoop` give both workers what one process with two replicas
gets (the loop's models use synchronized BatchNormalization there, so that
every worker scores the pool with the same statistics).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).with_name("multiworker_worker.py")
WORKERS = 2
RECIPES = ("paper", "recommended")
TIMEOUT_SECONDS = 480
RTOL, ATOL = 1e-5, 1e-6
STDERR_TAIL = 3000


def free_ports(count: int) -> list[int]:
    """Ports free on localhost now (held together while choosing, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def commands(out: Path) -> dict[str, tuple[list[str], dict]]:
    """Each process's arguments and environment: the workers of one cluster, and the one-process reference."""
    base = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    base.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(WORKERS)]}
    runs = {"reference": (["reference", str(out)], base)}
    for index in range(WORKERS):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        runs[f"worker_{index}"] = (["worker", str(out)], {**base, "TF_CONFIG": config})
    return runs


def run_side_by_side(runs: dict[str, tuple[list[str], dict]], out: Path) -> None:
    """Runs every process at once; any failure or the timeout stops them all (a lone worker would wait forever)."""
    processes = {}
    try:
        for name, (arguments, env) in runs.items():
            with open(out / f"{name}.stdout", "w") as stdout, open(out / f"{name}.stderr", "w") as stderr:
                command = [sys.executable, str(WORKER_SCRIPT), *arguments]
                processes[name] = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while any(process.poll() is None for process in processes.values()) and time.monotonic() < deadline:
            if any(process.poll() not in (None, 0) for process in processes.values()):
                break
            time.sleep(0.5)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
    failed = {name: process.returncode for name, process in processes.items() if process.returncode != 0}
    assert not failed, failure_report(failed, out)


def failure_report(failed: dict[str, int], out: Path) -> str:
    lines = [
        f"processes failed, or were stopped when another failed or after {TIMEOUT_SECONDS} s "
        f"(a negative code is the signal that stopped them): {failed}"
    ]
    for name in failed:
        lines.append(f"--- {name} stderr (tail) ---\n{(out / f'{name}.stderr').read_text()[-STDERR_TAIL:]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """Each process's `(weights, logs)`, by name: `reference`, `worker_0`, `worker_1`."""
    out = tmp_path_factory.mktemp("multiworker")
    runs = commands(out)
    run_side_by_side(runs, out)
    return {name: written(out, name) for name in runs}


def written(out: Path, name: str) -> tuple[dict, dict]:
    with np.load(out / f"{name}.npz") as stored:
        arrays = dict(stored)
    return arrays, json.loads((out / f"{name}.json").read_text())


def weights(arrays: dict, prefix: str) -> list[np.ndarray]:
    count = sum(key.rsplit(".", 1)[0] == prefix for key in arrays)
    assert count, f"no weights named {prefix}.*"
    return [arrays[f"{prefix}.{i}"] for i in range(count)]


def max_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    assert len(first) == len(second)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(first, second))


def assert_close(got: list[np.ndarray], expected: list[np.ndarray], what: str, rtol=RTOL, atol=ATOL) -> None:
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{what}, weight {i}")


def assert_equal(got: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    assert_close(got, expected, what, rtol=0, atol=0)


def workers(results) -> list[tuple[dict, dict]]:
    return [results[f"worker_{index}"] for index in range(WORKERS)]


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_workers_make_the_update_of_one_process_with_two_replicas(results, recipe):
    reference, _ = results["reference"]
    for index, (arrays, _) in enumerate(workers(results)):
        assert_equal(weights(arrays, f"{recipe}.initial"), weights(reference, f"{recipe}.initial"), "initial weights")
        trained = weights(arrays, f"{recipe}.trainable")
        assert_close(trained, weights(reference, f"{recipe}.trainable"), f"worker {index} vs MirroredStrategy")
        assert_close(trained, weights(reference, f"{recipe}.by_hand"), f"worker {index} vs the update by hand")
        # Pairs across the whole global batch move the weights far more than the tolerance: the check can tell.
        assert max_difference(trained, weights(reference, f"{recipe}.paired_across_replicas")) > 1000 * ATOL


@pytest.mark.parametrize("recipe", RECIPES)
def test_workers_share_trainable_weights_and_keep_their_replicas_batch_norm_statistics(results, recipe):
    reference, _ = results["reference"]
    (first, _), (second, _) = workers(results)
    assert_equal(weights(first, f"{recipe}.trainable"), weights(second, f"{recipe}.trainable"), "the workers' weights")
    for index, (arrays, _) in enumerate(workers(results)):
        statistics = weights(arrays, f"{recipe}.non_trainable.0")  # a worker's one replica
        assert_close(statistics, weights(reference, f"{recipe}.non_trainable.{index}"), f"worker {index} statistics")
    # Moving statistics are per replica (not synchronized): each worker's come from its own slices.
    assert max_difference(weights(first, f"{recipe}.non_trainable.0"), weights(second, f"{recipe}.non_trainable.0")) > 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_logs_are_the_mean_over_replicas_on_every_worker(results, recipe):
    _, reference_logs = results["reference"]
    (_, first), (_, second) = workers(results)
    assert first[recipe] == second[recipe]
    assert sorted(first[recipe]) == sorted(reference_logs[recipe])
    for name, expected in reference_logs[recipe].items():
        np.testing.assert_allclose(first[recipe][name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


def test_a_global_batch_is_split_in_consecutive_slices_one_per_replica(results):
    slices = [[list(range(start, start + 8)) for start in (step * 16, step * 16 + 8)] for step in range(2)]
    _, reference_logs = results["reference"]
    assert reference_logs["replica_items"] == slices
    for index, (_, logs) in enumerate(workers(results)):
        assert logs["replica_items"] == [[step[index]] for step in slices]


def test_train_recipe_gives_both_workers_the_model_of_one_process_with_two_replicas(results):
    reference, reference_logs = results["reference"]
    (first, first_logs), (second, second_logs) = workers(results)
    assert_equal(weights(first, "train.trainable"), weights(second, "train.trainable"), "each worker's model.keras")
    assert_close(weights(first, "train.trainable"), weights(reference, "train.trainable"), "vs MirroredStrategy")
    assert first_logs["train_recipe"] == second_logs["train_recipe"]
    for part in ("history", "validation"):  # fit's logs, validation included, and the final evaluate
        expected = reference_logs["train_recipe"][part]
        assert sorted(first_logs["train_recipe"][part]) == sorted(expected)
        for name, value in expected.items():
            got = first_logs["train_recipe"][part][name]
            np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=f"{part} {name}")


def test_loop_recipe_labels_on_both_workers_what_one_process_with_two_replicas_labels(results):
    reference, reference_logs = results["reference"]
    (first, first_logs), (second, second_logs) = workers(results)
    labeled = reference_logs["loop_recipe"]["labeled"]
    assert len(labeled) == len(set(labeled)) == 16 + 8
    assert first_logs["loop_recipe"]["labeled"] == second_logs["loop_recipe"]["labeled"] == labeled
    # Synchronized BatchNormalization: every weight, statistics included, is the same on both workers.
    assert_equal(weights(first, "loop.weights"), weights(second, "loop.weights"), "the last cycle's model")
    assert_close(weights(first, "loop.weights"), weights(reference, "loop.weights"), "vs MirroredStrategy")


def test_acquisition_inside_the_scope_scores_the_whole_pool_on_every_worker(results):
    # A distributed dataset would give each worker half of the pool; scoring runs on each worker's own device instead.
    _, reference_logs = results["reference"]
    expected = reference_logs["select_in_scope"]
    for name in ("learning_loss", "coreset"):
        assert expected[name]["num_scored"] == 40 and len(set(expected[name]["indices"])) == 5
    for index, (_, logs) in enumerate(workers(results)):
        assert logs["select_in_scope"] == expected, f"worker {index}"
