"""Triage with several scoring calls in flight (keras_lossal/serving/triage.py `scoring_calls`): records in input
order whatever order the calls finish in, the same outputs as one call at a time, and a kill mid-run resumes."""

import json
import os
import random
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal.contracts import SCORER_ATTRIBUTES
from keras_lossal.serving import InProcessScorer, read_items, triage
from keras_lossal.serving.scorers import ServerScorer

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import lossal_export  # noqa: E402, F401

N_ITEMS = 40


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipelining_pool")
    pixels = np.random.default_rng(11).integers(0, 256, size=(N_ITEMS, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        (folder / f"img_{index:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    return str(folder)


class Jittery:
    """Scores like `scorer`, each call sleeping a random 0-20 ms first, so concurrent calls finish out of order.

    Counts the calls in flight at once; `kill_on` raises on that call, as a kill would stop the run.
    """

    def __init__(self, scorer, kill_on=None, seed=0):
        for name in SCORER_ATTRIBUTES:
            setattr(self, name, getattr(scorer, name))
        self.scorer, self.kill_on, self.calls, self.running, self.most = scorer, kill_on, 0, 0, 0
        self.random, self.lock = random.Random(seed), threading.Lock()

    def score(self, kind, payloads):
        with self.lock:
            self.calls += 1
            call, self.running = self.calls, self.running + 1
            self.most = max(self.most, self.running)
            pause = self.random.uniform(0, 0.02)
        try:
            time.sleep(pause)
            if call == self.kill_on:
                raise KeyboardInterrupt("simulated kill mid-run")
            return self.scorer.score(kind, payloads)
        finally:
            with self.lock:
                self.running -= 1


def lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_in_process_scoring_keeps_two_calls_in_flight_and_a_server_one(lossal_export):  # noqa: F811
    assert InProcessScorer(lossal_export["base"]).concurrent_calls == 2
    assert getattr(ServerScorer, "concurrent_calls", 1) == 1


@pytest.mark.parametrize("calls", [2, 3])
def test_records_keep_input_order_and_equal_one_call_at_a_time(lossal_export, pool, tmp_path, calls):  # noqa: F811
    options = {"top_k": 5, "batch_size": 3, "candidates_factor": 2, "seed": 1, "commit_seconds": 0}
    reference = triage(read_items(pool), InProcessScorer(lossal_export["base"]), str(tmp_path / "one"),
                       scoring_calls=1, **options)  # fmt: skip
    jittery = Jittery(InProcessScorer(lossal_export["base"]))
    result = triage(read_items(pool), jittery, str(tmp_path / "many"), scoring_calls=calls, **options)
    assert jittery.most == calls  # the calls really overlapped
    scored = lines(tmp_path / "many" / "scored.jsonl")
    assert [record["input_index"] for record in scored] == list(range(N_ITEMS))
    expected = lines(tmp_path / "one" / "scored.jsonl")
    assert [record["id"] for record in scored] == [record["id"] for record in expected]
    np.testing.assert_allclose([r["predicted_loss"] for r in scored], [r["predicted_loss"] for r in expected],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert [record["id"] for record in result.queue] == [record["id"] for record in reference.queue]


def test_a_kill_with_calls_in_flight_resumes_to_the_uninterrupted_queue(lossal_export, pool, tmp_path):  # noqa: F811
    options = {"top_k": 4, "batch_size": 4, "candidates_factor": 2, "seed": 2, "scoring_calls": 3}
    reference = triage(read_items(pool), InProcessScorer(lossal_export["base"]), str(tmp_path / "ref"), **options)
    out = str(tmp_path / "out")
    killed = Jittery(InProcessScorer(lossal_export["base"]), kill_on=6)
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(pool), killed, out, **options)
    assert killed.most == 3
    recorded = lines(os.path.join(out, "scored.jsonl"))
    # Only whole batches, in input order, and never the killed one or those after it.
    assert [record["input_index"] for record in recorded] == list(range(len(recorded)))
    assert len(recorded) % 4 == 0 and len(recorded) <= 5 * 4
    assert len(recorded) == 5 * 4  # batches 1-5; the 6th raised when its turn came, 7-9 were in flight
    resumed = triage(read_items(pool), InProcessScorer(lossal_export["base"]), out, **options)
    assert resumed.resumed == len(recorded) and resumed.scored == N_ITEMS - len(recorded)
    assert [record["id"] for record in resumed.queue] == [record["id"] for record in reference.queue]


def test_scoring_calls_is_checked(lossal_export, pool, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="Expected scoring_calls to be an integer >= 1. Received: scoring_calls=0"):
        triage(read_items(pool), InProcessScorer(lossal_export["base"]), str(tmp_path / "o"), top_k=2,
               scoring_calls=0)  # fmt: skip


def test_the_default_follows_the_scorers_concurrent_calls(lossal_export, pool, tmp_path):  # noqa: F811
    jittery = Jittery(InProcessScorer(lossal_export["base"]))
    triage(read_items(pool), jittery, str(tmp_path / "one"), top_k=3, batch_size=4)
    assert jittery.most == 1  # a scorer that does not say it takes concurrent calls gets one at a time
    jittery = Jittery(InProcessScorer(lossal_export["base"]))
    jittery.concurrent_calls = 2
    triage(read_items(pool), jittery, str(tmp_path / "two"), top_k=3, batch_size=4)
    assert jittery.most == 2


def test_a_copy_does_not_take_the_bytes_of_an_owner_whose_batch_was_dropped(lossal_export, tmp_path):  # noqa: F811
    folder = tmp_path / "pool"
    folder.mkdir()
    pixels = np.random.default_rng(4).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        (folder / f"img_{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    for copy in ("copy_a.png", "copy_b.png"):  # sorted first: copy_a owns img_2's bytes, copy_b is its copy
        (folder / copy).write_bytes((folder / "img_2.png").read_bytes())
    out = str(tmp_path / "out")
    options = {"top_k": None, "threshold": -1e9, "batch_size": 1, "dedupe": True, "scoring_calls": 2}
    # copy_a's call dies after copy_b was logged as its copy: copy_a's batch is dropped, copy_b's failure stays.
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(str(folder)), Jittery(InProcessScorer(lossal_export["base"]), kill_on=1), out, **options)
    assert [record["id"] for record in lines(os.path.join(out, "failures.jsonl"))] == ["copy_b.png"]
    resumed = triage(read_items(str(folder)), InProcessScorer(lossal_export["base"]), out, **options)
    scored = lines(os.path.join(out, "scored.jsonl"))
    # The bytes are scored once, by their first item; the two copies fail as its duplicates.
    assert sorted(record["id"] for record in scored) == ["copy_a.png", "img_0.png", "img_1.png"]
    failures = lines(os.path.join(out, "failures.jsonl"))
    assert sorted(record["id"] for record in failures) == ["copy_b.png", "img_2.png"]
    assert all(record["duplicate_of"] == "copy_a.png" for record in failures)
    assert (resumed.scored, resumed.failed) == (3, 2)  # copy_b is handled again, as a copy of copy_a


def test_the_command_line_takes_scoring_calls(lossal_export, pool, tmp_path, capsys, monkeypatch):  # noqa: F811
    import keras_lossal.serving as serving
    from keras_lossal import cli

    seen = []
    monkeypatch.setattr(serving, "triage", lambda *a, **k: seen.append(k["scoring_calls"]) or triage(*a, **k))
    argv = ["triage", pool, "--model", lossal_export["base"], "--top-k", "2", "--show", "0"]
    assert cli.main([*argv, "--output", str(tmp_path / "a"), "--scoring-calls", "1"]) == 0
    assert cli.main([*argv, "--output", str(tmp_path / "b")]) == 0
    assert seen == [1, None]  # None: the scorer's own (2 in-process)
    capsys.readouterr()
    assert cli.main([*argv, "--output", str(tmp_path / "c"), "--scoring-calls", "0"]) == 2
    assert "expected --scoring-calls >= 1. Received: 0" in capsys.readouterr().err
