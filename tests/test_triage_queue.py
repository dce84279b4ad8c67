"""`keras_lossal.serving.queue` through triage: the queue is the library's selection, bounded and resumable."""

import base64
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal import cli, contracts
from keras_lossal.contracts import SCORER_ATTRIBUTES
from keras_lossal.serving import InProcessScorer, read_items, triage
from keras_lossal.serving import queue as queue_lib
from keras_lossal.serving.queue import Candidates, QueueRule, ResumeWithoutFeaturesError
from keras_lossal.serving.scorers import KEPT_OUTPUTS, MissingOutputError

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import PREP, lossal_export  # noqa: E402, F401

N_ITEMS = 16
DIVERSE = ("learning_loss_clusters", "learning_loss_badge")  # candidates: the highest predicted losses
RESUMABLE = (*DIVERSE, "badge")  # badge's candidates: a uniform sample of the pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory, lossal_export):  # noqa: F811 - pytest fixture
    """16 PNGs `img_00.png`... and the model inputs they decode to."""
    folder = tmp_path_factory.mktemp("queue_pool")
    pixels = np.random.default_rng(5).integers(0, 256, size=(N_ITEMS, 8, 8, 3), dtype=np.uint8)
    ids = [f"img_{index:02d}.png" for index in range(N_ITEMS)]
    for item_id, image in zip(ids, pixels):
        (folder / item_id).write_bytes(tf.io.encode_png(image).numpy())
    inputs = dict(zip(ids, PREP(pixels).numpy()))
    return {"folder": str(folder), "inputs": inputs, "model": lossal_export["model"], "base": lossal_export["base"]}


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def ids(records):
    return [record["id"] for record in records]


def ranked_candidates(out, count):
    """The `count` scored ids with the highest predicted loss, ties to the earlier item: triage's candidates."""
    scored = read_jsonl(os.path.join(out, "scored.jsonl"))
    scored.sort(key=lambda record: (-record["predicted_loss"], record["input_index"]))
    return ids(scored[:count])


def uniform_hash(seed, item_id):
    """The reference of `badge`'s sample key: 53 bits of BLAKE2b of "seed:id" as a number in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53


def hash_sample(records, count, seed):
    """The `badge` candidates: the `count` records with the largest hash, then by predicted loss (tie rule)."""
    sample = sorted(records, key=lambda record: uniform_hash(seed, record["id"]), reverse=True)[:count]
    return sorted(sample, key=lambda record: (-record["predicted_loss"], record["input_index"]))


class CrashingScorer:
    """Scores like `scorer` until call `crash_on_call`, which raises as a kill would stop the run."""

    def __init__(self, scorer, crash_on_call=None):
        self.scorer, self.crash_on_call, self.calls = scorer, crash_on_call, 0
        for name in SCORER_ATTRIBUTES:
            setattr(self, name, getattr(scorer, name))

    def score(self, kind, payloads):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated kill mid-run")
        return self.scorer.score(kind, payloads)


# ------------------------------------------------------------------------------------------ the selection
@pytest.mark.parametrize("selection", DIVERSE)
def test_queue_is_the_strategys_selection_on_the_same_candidates(pool, tmp_path, selection):
    out = str(tmp_path / "out")
    result = triage(
        read_items(pool["folder"]), InProcessScorer(pool["base"]), out, top_k=4, batch_size=5,
        selection=selection, candidates_factor=3, seed=7,
    )  # fmt: skip
    candidates = ranked_candidates(out, 12)
    # The library's strategy, in memory on the Keras model, over the same candidates in the same (ranked) order.
    chosen = kl.acquisition.get(selection).select(
        pool["model"], np.stack([pool["inputs"][item_id] for item_id in candidates]), k=4, seed=7
    )
    assert ids(result.queue) == [candidates[position] for position in sorted(chosen.indices)]
    assert ids(read_jsonl(os.path.join(out, "queue.jsonl"))) == ids(result.queue)
    losses = [record["predicted_loss"] for record in result.queue]
    assert losses == sorted(losses, reverse=True) and [record["rank"] for record in result.queue] == [1, 2, 3, 4]
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        tasks = json.load(handle)
    assert [task["predictions"][0]["score"] for task in tasks] == losses  # the score stays the predicted loss
    # The queue's records are the scored records with a rank: no embedding or other selection feature.
    scored = {record["id"]: record for record in read_jsonl(os.path.join(out, "scored.jsonl"))}
    assert all(record == {**scored[record["id"]], "rank": record["rank"]} for record in result.queue)


def test_badge_queue_is_badge_on_a_hash_sample_of_the_pool(pool, tmp_path):
    out = str(tmp_path / "out")
    result = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), out, top_k=3, batch_size=5,
                    selection="badge", candidates_factor=3, seed=7)  # fmt: skip
    candidates = ids(hash_sample(read_jsonl(os.path.join(out, "scored.jsonl")), 9, seed=7))
    assert candidates != ranked_candidates(out, 9)  # a sample of the pool, not the highest predicted losses
    # The library's `Badge`, in memory on the Keras model, over the same candidates in the same (ranked) order.
    chosen = kl.acquisition.get("badge").select(
        pool["model"], np.stack([pool["inputs"][item_id] for item_id in candidates]), k=3, seed=7
    )
    assert ids(result.queue) == [candidates[position] for position in sorted(chosen.indices)]
    losses = [record["predicted_loss"] for record in result.queue]
    assert losses == sorted(losses, reverse=True) and [record["rank"] for record in result.queue] == [1, 2, 3]
    scored = {record["id"]: record for record in read_jsonl(os.path.join(out, "scored.jsonl"))}
    assert all(record == {**scored[record["id"]], "rank": record["rank"]} for record in result.queue)
    # Fewer scored items than the queue's length: all of them, by predicted loss.
    everything = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), str(tmp_path / "all"),
                        top_k=20, selection="badge")  # fmt: skip
    assert ids(everything.queue) == ranked_candidates(str(tmp_path / "all"), N_ITEMS)


def test_badge_queue_does_not_depend_on_the_input_order_or_batches(pool, tmp_path):
    options = {"top_k": 3, "selection": "badge", "candidates_factor": 2, "seed": 11}
    scorer = InProcessScorer(pool["base"])
    reference = triage(read_items(pool["folder"]), scorer, str(tmp_path / "ref"), batch_size=5, **options)
    items = list(read_items(pool["folder"]))
    np.random.default_rng(0).shuffle(items)
    shuffled = triage(items, scorer, str(tmp_path / "shuffled"), batch_size=3, **options)
    assert ids(shuffled.queue) == ids(reference.queue)
    other_seed = triage(read_items(pool["folder"]), scorer, str(tmp_path / "seed"), batch_size=5,
                        **{**options, "seed": 12})  # fmt: skip
    assert ids(other_seed.queue) != ids(reference.queue)  # the seed draws another sample


def test_the_default_queue_spreads_over_clusters_not_the_top_k(pool, tmp_path):
    scorer = InProcessScorer(pool["base"])
    options = {"top_k": 4, "batch_size": 5, "candidates_factor": 4}
    default = triage(read_items(pool["folder"]), scorer, str(tmp_path / "default"), **options)
    again = triage(read_items(pool["folder"]), scorer, str(tmp_path / "again"), **options)
    top_k = triage(read_items(pool["folder"]), scorer, str(tmp_path / "top_k"), selection="top_k", **options)
    assert ids(default.queue) == ids(again.queue)  # deterministic: the same seed, items and model
    assert ids(default.queue) != ids(top_k.queue)  # this pool's k-means picks are not the plain top-4
    assert set(ids(default.queue)) <= set(ranked_candidates(str(tmp_path / "default"), 16))


def test_top_k_selection_keeps_todays_queue_without_embeddings(pool, tmp_path):
    out = str(tmp_path / "out")
    result = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), out, top_k=5, selection="top_k")
    assert ids(result.queue) == ranked_candidates(out, 5)
    assert not os.path.exists(os.path.join(out, "candidates.jsonl"))
    # The same with no queue limit: every item above the threshold, ranked, whatever the selection.
    threshold = sorted(record["predicted_loss"] for record in result.queue)[0]
    unlimited = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), str(tmp_path / "all"),
                       top_k=None, threshold=threshold)  # fmt: skip
    assert ids(unlimited.queue) == ids(result.queue)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_the_queue_through_tf_serving_equals_the_in_process_queue(pool, tmp_path, protocol):
    from tfserving_standin import start_grpc_standin, start_rest_standin

    from keras_lossal.serving import ServerScorer, TFServingClient

    options = {"top_k": 3, "batch_size": 4, "selection": "learning_loss_badge", "candidates_factor": 3}
    local = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), str(tmp_path / "local"), **options)
    if protocol == "grpc":
        server, target, _ = start_grpc_standin(pool["base"], "lossal")
        stop = lambda: server.stop(None)  # noqa: E731
    else:
        server, target, _ = start_rest_standin(pool["base"], "lossal")
        stop = server.shutdown
    try:
        with TFServingClient(target, "lossal", protocol=protocol, rest_format="instances") as client:
            remote = triage(read_items(pool["folder"]), ServerScorer(client), str(tmp_path / "remote"), **options)
    finally:
        stop()
    assert ids(remote.queue) == ids(local.queue)


# ----------------------------------------------------------------------------------------------- memory
def test_candidates_held_never_exceed_factor_times_k(pool, tmp_path, monkeypatch):
    instances = []

    class Recorded(Candidates):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            instances.append(self)

    # The module, not the function `triage` that shares its name in `keras_lossal.serving`.
    monkeypatch.setattr(sys.modules["keras_lossal.serving.triage"], "Candidates", Recorded)
    out = str(tmp_path / "out")
    triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), out, top_k=2, candidates_factor=3, batch_size=3)
    (candidates,) = instances
    assert candidates.rule.max_candidates == 6 and candidates.peak == 6  # of 16 scored
    assert sum(features is not None for _, features in candidates.ranked()) == 6


def synthetic_records(count, seed=0):
    rng = np.random.default_rng(seed)
    losses = rng.normal(size=count).round(1)  # rounding makes ties
    embeddings = rng.normal(size=(count, 4)).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(3), size=count).astype(np.float32)
    return [
        {"id": f"i{index}", "predicted_loss": float(losses[index]), "input_index": index,
         KEPT_OUTPUTS: {"embedding": embeddings[index], "probabilities": probabilities[index]}}
        for index in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize("selection", DIVERSE)
def test_a_long_stream_holds_the_bound_and_queues_what_the_whole_top_would(tmp_path, selection):
    rule = QueueRule(top_k=5, selection=selection, candidates_factor=3, seed=1)
    path = str(tmp_path / "candidates.jsonl")
    candidates = Candidates(rule, path)
    candidates.restore_features(str(tmp_path))
    records = synthetic_records(2000)
    longest_log = 0
    for start in range(0, len(records), 7):
        batch = [dict(record, **{KEPT_OUTPUTS: dict(record[KEPT_OUTPUTS])}) for record in records[start : start + 7]]
        candidates.add(batch, [record["input_index"] for record in batch])
        assert len(candidates) <= rule.max_candidates == 15
        longest_log = max(longest_log, len(read_jsonl(path)))
    candidates.close()
    assert candidates.peak == 15 and longest_log <= 4 * 15  # the features file is compacted, not O(pool)
    # The whole pool, sorted by the tie rule: its top 15 are the candidates, and the queue is their selection.
    best = sorted(records, key=lambda record: (-record["predicted_loss"], record["input_index"]))[:15]
    expected = rule.select([(record, rule.features(record[KEPT_OUTPUTS])) for record in best])
    assert ids(candidates.queue()) == ids(expected)
    # A resume rebuilds the same candidates from the scores and reads their features back from the file.
    resumed = Candidates(rule, path)
    for record in records:
        resumed.push({key: value for key, value in record.items() if key != KEPT_OUTPUTS}, record["input_index"])
    resumed.restore_features(str(tmp_path))
    resumed.close()
    assert ids(resumed.queue()) == ids(expected)


def badge_features(records):
    """Residual and embedding arrays of synthetic records, as `QueueRule.features` computes them."""
    probabilities = np.stack([record[KEPT_OUTPUTS]["probabilities"] for record in records])
    residuals = probabilities - np.eye(probabilities.shape[1], dtype=np.float32)[probabilities.argmax(axis=1)]
    return residuals, np.stack([record[KEPT_OUTPUTS]["embedding"] for record in records])


def without_outputs(record):
    """A synthetic record as `scored.jsonl` holds it (what a resume pushes)."""
    return {key: value for key, value in record.items() if key != KEPT_OUTPUTS}


def stream(candidates, records, batch_size):
    """Offers `records` to `candidates` as triage does, `batch_size` at a time, committing after each batch."""
    for start in range(0, len(records), batch_size):
        batch = [
            dict(record, **{KEPT_OUTPUTS: dict(record[KEPT_OUTPUTS])}) for record in records[start : start + batch_size]
        ]
        candidates.add(batch, [record["input_index"] for record in batch])
        candidates.sync()  # triage's commit (about once a second): the log is written, compacted past its bound


def test_a_long_badge_stream_samples_by_hash_whatever_the_order_and_resumes(tmp_path):
    from keras_lossal.acquisition import diversity

    rule = QueueRule(top_k=5, selection="badge", candidates_factor=4, seed=3)
    records = synthetic_records(2000)
    # The NumPy reference: the 20 records with the largest hash, ranked by predicted loss, then BADGE's k-means++.
    sample = hash_sample(records, 20, seed=3)
    chosen, _ = diversity.kmeans_plus_plus_gradients(*badge_features(sample), 5, 3)
    expected = [sample[position]["id"] for position in sorted(chosen)]
    # Scored in input order, or shuffled (each record keeps its input_index), in batches of 7, 64 or 1.
    for shuffle_seed, batch_size in ((None, 7), (1, 64), (2, 1)):
        arrival = np.arange(2000) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(2000)
        path = str(tmp_path / f"candidates_{shuffle_seed}.jsonl")
        candidates = Candidates(rule, path)
        candidates.restore_features(str(tmp_path))
        stream(candidates, [records[index] for index in arrival], batch_size)
        candidates.close()
        assert candidates.peak == 20 and len(read_jsonl(path)) <= 4 * 20  # bounded, and the log compacted
        assert ids(record for record, _ in candidates.ranked()) == ids(sample)
        assert ids(candidates.queue()) == expected
    # A resume rebuilds the same sample from the scores and reads its features back from the (last) file.
    resumed = Candidates(rule, path)
    for record in records:
        resumed.push(without_outputs(record), record["input_index"])
    resumed.restore_features(str(tmp_path))
    resumed.close()
    assert ids(resumed.queue()) == expected
    # Another seed's sample lacks features in this file: refused, naming the seed.
    other = Candidates(QueueRule(top_k=5, selection="badge", candidates_factor=4, seed=4), path)
    for record in records:
        other.push(without_outputs(record), record["input_index"])
    with pytest.raises(ResumeWithoutFeaturesError, match="for badge or typiclust, another --seed"):
        other.restore_features(str(tmp_path))


def test_badge_candidates_are_a_uniform_sample_across_predicted_losses():
    records = synthetic_records(2000, seed=4)
    for index, record in enumerate(records):
        record["predicted_loss"] = float(index) / 2000  # distinct losses, so deciles have 200 items each
    chosen = {}
    for selection in ("badge", "learning_loss_badge"):
        candidates = Candidates(QueueRule(top_k=20, selection=selection, candidates_factor=10, seed=0))
        for record in records:
            candidates.push(without_outputs(record), record["input_index"])
        losses = np.array([record["predicted_loss"] for record, _ in candidates.ranked()])
        chosen[selection] = np.bincount((losses * 10).astype(int), minlength=10)
    # 200 of 2,000: about 20 per decile (binomial sd ~4); the learning-loss candidates are all the top decile.
    assert chosen["badge"].sum() == 200 and chosen["badge"].min() >= 10 and chosen["badge"].max() <= 30
    assert chosen["learning_loss_badge"].tolist() == [0] * 9 + [200]
    # With a threshold, only items at or above it are sampled: the 500 highest losses here.
    candidates = Candidates(QueueRule(top_k=20, threshold=0.75, selection="badge", candidates_factor=10, seed=0))
    for record in records:
        candidates.push(without_outputs(record), record["input_index"])
    above = [record for record in records if record["predicted_loss"] >= 0.75]
    assert ids(record for record, _ in candidates.ranked()) == ids(hash_sample(above, 200, seed=0))


# ----------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("selection", RESUMABLE)
def test_resume_after_a_kill_gives_the_uninterrupted_queue(pool, tmp_path, selection):
    options = {"top_k": 2, "batch_size": 4, "selection": selection, "candidates_factor": 2, "seed": 3}
    reference = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), str(tmp_path / "ref"), **options)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(pool["folder"]), CrashingScorer(InProcessScorer(pool["base"]), crash_on_call=3), out,
               **options)  # fmt: skip
    assert len(read_jsonl(os.path.join(out, "scored.jsonl"))) == 8
    # A kill while appending leaves partial last lines; resume drops them.
    for name in ("candidates.jsonl", "scored.jsonl"):
        with open(os.path.join(out, name), "a") as handle:
            handle.write('{"id": "img_00.png", "embed')
    resumed = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), out, **options)
    assert resumed.resumed == 8 and resumed.scored == 8
    assert ids(resumed.queue) == ids(reference.queue)

    # What was persisted is what the export served: bit for bit what the uninterrupted run stored from the same
    # batches, and the item's own embedding. A batch of one may differ from triage's batches of 4 in the last
    # bit on some CPUs (oneDNN chooses kernels by batch size), so that comparison allows 1e-6.
    def stored(folder):
        lines = {line["id"]: line for line in read_jsonl(os.path.join(folder, "candidates.jsonl"))}
        return np.frombuffer(base64.b64decode(lines[item_id]["embedding"]), "<f4")

    item_id = resumed.queue[0]["id"]
    with open(os.path.join(pool["folder"], item_id), "rb") as handle:
        served = InProcessScorer(pool["base"]).score("image", [handle.read()])["embedding"][0]
    np.testing.assert_array_equal(stored(out), stored(str(tmp_path / "ref")))
    np.testing.assert_allclose(stored(out), served, rtol=1e-6, atol=1e-6)
    rerun = triage(read_items(pool["folder"]), InProcessScorer(pool["base"]), out, **options)
    assert rerun.scored == 0 and ids(rerun.queue) == ids(reference.queue)


def test_resume_with_candidates_scored_without_features_is_refused_with_the_ways_out(pool, tmp_path, capsys):
    out = str(tmp_path / "out")
    scorer = InProcessScorer(pool["base"])
    triage(read_items(pool["folder"]), scorer, out, top_k=2, candidates_factor=2)
    with pytest.raises(ResumeWithoutFeaturesError, match="a smaller --top-k or --candidates-factor"):
        triage(read_items(pool["folder"]), scorer, out, top_k=2, candidates_factor=5)
    assert ids(triage(read_items(pool["folder"]), scorer, out, top_k=2, selection="top_k").queue) == (
        ranked_candidates(out, 2)
    )
    # From the command line: one line naming the flags; --restart scores everything again.
    args = ["triage", pool["folder"], "--model", pool["base"], "--output", out, "--top-k", "2"]
    capsys.readouterr()
    assert cli.main([*args, "--candidates-factor", "5"]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "--selection top_k" in error and "--restart" in error
    assert cli.main([*args, "--candidates-factor", "5", "--restart"]) == 0


class WithoutEmbedding:
    """An export from before `embedding` was served."""

    def __init__(self, scorer):
        self.scorer = scorer
        for name in SCORER_ATTRIBUTES:
            setattr(self, name, getattr(scorer, name))

    def score(self, kind, payloads):
        return {key: value for key, value in self.scorer.score(kind, payloads).items() if key != "embedding"}


def test_an_export_without_embedding_is_refused_naming_the_fix(pool, tmp_path):
    scorer = WithoutEmbedding(InProcessScorer(pool["base"]))
    with pytest.raises(MissingOutputError, match=r"return \['embedding'\].*export the model again"):
        triage(read_items(pool["folder"]), scorer, str(tmp_path / "out"), top_k=2)
    result = triage(read_items(pool["folder"]), scorer, str(tmp_path / "top_k"), top_k=2, selection="top_k")
    assert result.queued == 2


# ------------------------------------------------------------------------------------------- the settings
@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"selection": "coreset"},
            r"Expected selection in \['learning_loss_clusters', 'learning_loss_badge', 'top_k', 'badge', 'typiclust', "
            r"'budget_switch'\]",
        ),
        ({"candidates_factor": 0}, "Expected candidates_factor to be an integer >= 1. Received: candidates_factor=0"),
        ({"seed": -1}, "Expected seed to be an integer >= 0"),
        ({"top_k": 0}, "Expected top_k to be an integer >= 1 or None. Received: top_k=0"),
        ({"top_k": None}, "Expected top_k and/or threshold"),
    ],
)
def test_queue_rule_refuses_bad_settings_naming_them(settings, message):
    with pytest.raises(ValueError, match=message):
        QueueRule(**settings)


@pytest.mark.parametrize("command", ["triage", "beam-score"])
def test_the_command_line_refuses_a_bad_selection_listing_them_all(command, capsys):

    argv = [command, "pool", "--model", "m", "--output", "o", "--selection", "coreset"]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv if command == "triage" else [*argv[:1], "--input", *argv[1:]])
    error = capsys.readouterr().err.splitlines()[-1]
    assert stopped.value.code == 2 and "invalid choice: 'coreset'" in error
    listed = contracts.TRIAGE_SELECTIONS  # both commands: the resolved selections and budget_switch
    assert listed == contracts.SELECTIONS + (contracts.BUDGET_SELECTION,)
    assert error.endswith(f"(choose from {', '.join(repr(name) for name in listed)})")
    assert len(contracts.SELECTIONS) == 5 and contracts.SELECTIONS[-1] == "typiclust"


def test_the_names_the_command_line_lists_are_the_rules():

    assert set(contracts.SELECTIONS) == {"learning_loss_clusters", "learning_loss_badge", "top_k", "badge", "typiclust"}
    # The commands' default is the recommended budget_switch, resolved before a rule is built; a rule's default is
    # the learning-loss selection.
    assert contracts.DEFAULT_SELECTION == contracts.RECOMMENDED_STRATEGY == contracts.BUDGET_SELECTION
    assert QueueRule().selection == "learning_loss_clusters"
    assert QueueRule(top_k=3).max_candidates == 3 * contracts.DEFAULT_CANDIDATES_FACTOR
    assert QueueRule(top_k=3, selection="top_k").max_candidates == 3 and queue_lib.QueueRule is QueueRule
