"""Triage's budget-aware queue (keras_lossal/serving/queue.py, serving/triage.py, commands/triage.py): the
`typiclust` selection on a uniform sample with the labeled items' embeddings, `embed_items`, and
`--selection budget_switch`, which picks typiclust or badge by the labels per class, as the strategy does."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal import cli
from keras_lossal.acquisition import diversity
from keras_lossal.contracts import Item, labels_are_scarce
from keras_lossal.labeling.manifest import labeled_items
from keras_lossal.serving import InProcessScorer, read_items, triage
from keras_lossal.serving.queue import QueueRule, ResumeWithoutFeaturesError, sample_key
from keras_lossal.serving.triage import embed_items

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import LABELS, PREP, lossal_export  # noqa: E402, F401

N_ITEMS = 24


@pytest.fixture(scope="module")
def pool(tmp_path_factory, lossal_export):  # noqa: F811 - pytest fixture
    """24 PNGs in `pool/`, 4 more in `labeled/` with `labeled.jsonl`, and the model inputs they decode to."""
    folder = tmp_path_factory.mktemp("budget_pool")
    pixels = np.random.default_rng(9).integers(0, 256, size=(N_ITEMS + 4, 8, 8, 3), dtype=np.uint8)
    (folder / "pool").mkdir()
    (folder / "labeled").mkdir()
    ids = [f"img_{index:02d}.png" for index in range(N_ITEMS)]
    for item_id, image in zip(ids, pixels):
        (folder / "pool" / item_id).write_bytes(tf.io.encode_png(image).numpy())
    lines = []
    for index, image in enumerate(pixels[N_ITEMS:]):
        (folder / "labeled" / f"l{index}.png").write_bytes(tf.io.encode_png(image).numpy())
        lines.append(json.dumps({"id": f"l{index}", "path": f"labeled/l{index}.png", "label": LABELS[index % 3]}))
    (folder / "labeled.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "folder": folder,
        "inputs": dict(zip(ids, PREP(pixels[:N_ITEMS]).numpy())),
        "labeled_inputs": PREP(pixels[N_ITEMS:]).numpy(),
        "model": lossal_export["model"],
        "base": lossal_export["base"],
    }


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def ids(records):
    return [record["id"] for record in records]


def sample_by_loss(out, count, seed):
    """Triage's sampled candidates: the `count` largest `sample_key`, then by predicted loss (the tie rule)."""
    scored = read_jsonl(os.path.join(out, "scored.jsonl"))
    sample = sorted(scored, key=lambda record: sample_key(seed, record["id"]), reverse=True)[:count]
    return ids(sorted(sample, key=lambda record: (-record["predicted_loss"], record["input_index"])))


# ------------------------------------------------------------------------------------------- the rule
def blobs(rng, centers, per_blob):
    return np.concatenate([rng.normal(center, 0.05, size=(per_blob, 2)) for center in centers]).astype(np.float32)


def ranked(embeddings):
    return [({"id": f"i{index}", "predicted_loss": 1.0 - index / 1000}, {"embedding": row})
            for index, row in enumerate(embeddings)]  # fmt: skip


def test_typiclust_fills_the_clusters_the_labeled_items_leave_uncovered():
    rng = np.random.default_rng(0)
    centers = [(0.0, 0.0), (5.0, 0.0), (0.0, 5.0)]
    embeddings = blobs(rng, centers, per_blob=20)  # rows 0-19, 20-39, 40-59
    rule = QueueRule(top_k=2, selection="typiclust", candidates_factor=30, seed=0)
    blob_of = {f"i{index}": index // 20 for index in range(60)}
    # L labeled items and k picks make L + k clusters: here the three blobs.
    # One labeled item in blob 0: the two picks go to blobs 1 and 2.
    labeled = blobs(rng, centers[:1], per_blob=1)
    assert sorted(blob_of[record["id"]] for record in rule.select(ranked(embeddings), labeled)) == [1, 2]
    labeled = blobs(rng, centers[1:], per_blob=1)  # now blobs 1 and 2 are covered
    rule = QueueRule(top_k=1, selection="typiclust", candidates_factor=60, seed=0)
    assert [blob_of[record["id"]] for record in rule.select(ranked(embeddings), labeled)] == [0]
    # Each pick is its blob's most typical item: the one nearest the blob's dense middle.
    (pick,) = rule.select(ranked(embeddings), labeled)
    members = embeddings[:20]
    assert np.linalg.norm(embeddings[int(pick["id"][1:])] - np.median(members, axis=0)) < 0.05
    # A NaN labeled row is left out; a labeled array of another width is refused, naming both.
    with_nan = np.concatenate([labeled, [[np.nan, 0.0]]]).astype(np.float32)
    assert ids(rule.select(ranked(embeddings), with_nan)) == ids(rule.select(ranked(embeddings), labeled))
    with pytest.raises(ValueError, match=r"an \(L, 2\) array.*Received shape \(3, 5\)"):
        rule.select(ranked(embeddings), np.zeros((3, 5), np.float32))


def test_typiclust_queue_equals_the_rule_on_the_same_arrays():
    embeddings = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    labeled = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    queue = QueueRule(top_k=6, selection="typiclust", candidates_factor=10, seed=4).select(ranked(embeddings), labeled)
    positions, _ = diversity.typiclust_picks(embeddings, labeled, 6, seed=4)
    assert ids(queue) == [f"i{position}" for position in sorted(positions)]
    assert QueueRule(top_k=6, selection="typiclust").outputs == ("embedding",)


def test_the_switch_rule_counts_labels_per_class():
    assert [labels_are_scarce(count, 3) for count in (0, 29, 30, 31)] == [True, True, False, False]
    assert labels_are_scarce(5, 3, labels_per_class=2) and not labels_are_scarce(6, 3, labels_per_class=2)


# ------------------------------------------------------------------------------------------ triage
def test_typiclust_triage_is_the_strategy_on_the_sample_with_the_labeled_items(pool, tmp_path):
    scorer = InProcessScorer(pool["base"])
    items = labeled_items([str(pool["folder"] / "labeled.jsonl")])
    labeled, failures, versions = embed_items(items, scorer, batch_size=3)
    assert (
        failures == []
        and versions == {1}
        and labeled.shape == (4, int(scorer.score("image", [items[0].load()])["embedding"].shape[1]))
    )
    out = str(tmp_path / "out")
    result = triage(read_items(str(pool["folder"] / "pool")), scorer, out, top_k=3, batch_size=5,
                    selection="typiclust", candidates_factor=4, seed=7, labeled_embeddings=labeled)  # fmt: skip
    candidates = sample_by_loss(out, 12, seed=7)
    # The library's TypiClust, in memory on the Keras model, over the same candidates and labeled items.
    chosen = kl.acquisition.get("typiclust").select(
        pool["model"], np.stack([pool["inputs"][item_id] for item_id in candidates]), k=3, seed=7,
        labeled=pool["labeled_inputs"],
    )  # fmt: skip
    assert ids(result.queue) == [candidates[position] for position in sorted(chosen.indices)]
    losses = [record["predicted_loss"] for record in result.queue]
    assert losses == sorted(losses, reverse=True) and [record["rank"] for record in result.queue] == [1, 2, 3]
    # Without the labeled items the clusters are others (the labeled ones are what TypiClust fills around).
    alone = kl.acquisition.get("typiclust").select(
        pool["model"], np.stack([pool["inputs"][item_id] for item_id in candidates]), k=3, seed=7
    )
    unlabeled = triage(read_items(str(pool["folder"] / "pool")), scorer, str(tmp_path / "alone"), top_k=3,
                       selection="typiclust", candidates_factor=4, seed=7)  # fmt: skip
    assert ids(unlabeled.queue) == [candidates[position] for position in sorted(alone.indices)]
    assert ids(unlabeled.queue) != ids(result.queue)  # the labeled items moved the picks
    # A threshold applies first: only items at or above it are sampled.
    cut = float(np.median([record["predicted_loss"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))]))
    above = triage(read_items(str(pool["folder"] / "pool")), scorer, str(tmp_path / "cut"), top_k=3, threshold=cut,
                   selection="typiclust", candidates_factor=4, seed=7, labeled_embeddings=labeled)  # fmt: skip
    assert above.queued == 3 and all(record["predicted_loss"] >= cut for record in above.queue)
    with pytest.raises(ValueError, match=r"an \(L, D\) array.*Received shape \(4, 2, 8\)"):
        triage(read_items(str(pool["folder"] / "pool")), scorer, str(tmp_path / "bad"), top_k=3,
               selection="typiclust", labeled_embeddings=np.zeros((4, 2, 8)))  # fmt: skip


def test_a_resume_that_switches_from_typiclust_to_badge_is_refused(pool, tmp_path):
    scorer = InProcessScorer(pool["base"])
    out = str(tmp_path / "out")
    options = {"top_k": 2, "candidates_factor": 3, "seed": 1}
    triage(read_items(str(pool["folder"] / "pool")), scorer, out, selection="typiclust", **options)
    with pytest.raises(ResumeWithoutFeaturesError, match="used another selection"):
        triage(read_items(str(pool["folder"] / "pool")), scorer, out, selection="badge", **options)
    # The same sample, so typiclust resumes from it (nothing scored again).
    again = triage(read_items(str(pool["folder"] / "pool")), scorer, out, selection="typiclust", **options)
    assert again.scored == 0 and again.queued == 2
    # badge stores what typiclust needs too (the same sample's embeddings): that resume gives the fresh queue.
    other = str(tmp_path / "badge_first")
    triage(read_items(str(pool["folder"] / "pool")), scorer, other, selection="badge", **options)
    resumed = triage(read_items(str(pool["folder"] / "pool")), scorer, other, selection="typiclust", **options)
    assert resumed.scored == 0 and ids(resumed.queue) == ids(again.queue)


def test_embed_items_fails_a_corrupt_image_alone_and_keeps_the_rest_in_order(pool, tmp_path):
    scorer = InProcessScorer(pool["base"])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good = labeled_items([str(pool["folder"] / "labeled.jsonl")])
    bad = Item("bad", str(tmp_path / "bad.png"), "image", lambda: (tmp_path / "bad.png").read_bytes())
    missing = Item("missing", str(tmp_path / "nope.png"), "image", lambda: (tmp_path / "nope.png").read_bytes())
    embeddings, failures, _ = embed_items([good[0], bad, good[1], missing, *good[2:]], scorer, batch_size=8)
    reference = embed_items(good, scorer, batch_size=1).embeddings
    np.testing.assert_allclose(embeddings, reference, rtol=1e-5, atol=1e-6)
    assert [failure["id"] for failure in failures] == ["bad", "missing"]
    assert all(failure["reason"] for failure in failures)


# ------------------------------------------------------------------------------------- the command line
def run_triage(capsys, *argv):
    capsys.readouterr()
    code = cli.main(["triage", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_budget_switch_picks_typiclust_below_the_point_and_badge_from_it(pool, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pool["folder"])
    argv = ["pool", "--model", pool["base"], "--top-k", "3", "--candidates-factor", "4", "--seed", "7",
            "--show", "0", "--selection", "budget_switch", "--exclude-labeled", "labeled.jsonl"]  # fmt: skip
    # 4 labeled items, 3 classes: 4 < 2 * 3, so typiclust, filling around the 4 labeled items.
    code, out, err = run_triage(capsys, *argv, "--labels-per-class", "2", "--output", str(tmp_path / "low"))
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == [
        "selection budget_switch: 4 labeled item(s) in the --exclude-labeled manifests, 3 classes, switch at 2 per "
        "class -> typiclust",
        "typiclust: embedded 4 labeled item(s) to fill around",
    ]
    scorer = InProcessScorer(pool["base"])
    labeled = embed_items(labeled_items(["labeled.jsonl"]), scorer).embeddings
    direct = triage(read_items("pool"), scorer, str(tmp_path / "direct_low"), top_k=3, candidates_factor=4,
                    seed=7, selection="typiclust", labeled_embeddings=labeled)  # fmt: skip
    assert ids(read_jsonl(tmp_path / "low" / "queue.jsonl")) == ids(direct.queue)
    # 4 >= 1 * 3: badge.
    code, out, _ = run_triage(capsys, *argv, "--labels-per-class", "1", "--output", str(tmp_path / "high"))
    assert code == 0 and out.splitlines()[0].endswith("switch at 1 per class -> badge")
    direct = triage(read_items("pool"), scorer, str(tmp_path / "direct_high"), top_k=3, candidates_factor=4,
                    seed=7, selection="badge")  # fmt: skip
    assert ids(read_jsonl(tmp_path / "high" / "queue.jsonl")) == ids(direct.queue)


def test_budget_switch_without_a_manifest_counts_the_exports_training_items(pool, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(pool["folder"])
    models = tmp_path / "models"
    shutil.copytree(pool["base"], models)
    config_path = models / "1" / "assets.extra" / "lossal.json"
    argv = ["pool", "--model", str(models), "--top-k", "2", "--show", "0", "--selection", "budget_switch"]
    # An export without a training record, and no manifest: the labeled count is unknown, so the switch takes
    # badge (its side past the switch point) and says so, with what would tell it the count.
    code, out, err = run_triage(capsys, *argv, "--output", str(tmp_path / "a"))
    assert (code, err) == (0, "")
    assert out.splitlines()[:2] == [
        "selection budget_switch: the number of labeled items is not known -> badge (the switch past 10 per class)",
        "  (pass the labeled-set manifests with --exclude-labeled, which also keeps them out of the queue, or score "
        "an export of a `lossal train` output, whose lossal.json records training.num_items)",
    ]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["selection"] == "badge" and summary["selection_reason"].endswith(
        "-> badge (the switch past 10 per class)"
    )
    badge = triage(read_items(str(pool["folder"] / "pool")), InProcessScorer(str(models)), str(tmp_path / "direct"),
                   top_k=2, selection="badge")  # fmt: skip
    assert ids(read_jsonl(tmp_path / "a" / "queue.jsonl")) == ids(badge.queue)
    config = json.loads(config_path.read_text())
    for count, chosen in ((30, "badge"), (12, "typiclust")):
        config_path.write_text(json.dumps({**config, "training": {"num_items": count, "data_sha256": "0" * 64}}))
        code, out, _ = run_triage(capsys, *argv, "--output", str(tmp_path / chosen))
        assert code == 0 and out.splitlines()[0] == (
            f"selection budget_switch: {count} labeled item(s) the model was trained on (its export's "
            f"training.num_items), 3 classes, switch at 10 per class -> {chosen}"
        )
    assert out.splitlines()[1].startswith("typiclust without --exclude-labeled: the labeled items are unknown")


def test_budget_switch_counts_distinct_labeled_items_and_survives_unreadable_ones(pool, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pool["folder"])
    # The same labeled items in two manifests, plus two records whose files are gone.
    (tmp_path / "gone.jsonl").write_text(
        '{"id": "g1", "path": "nowhere/g1.png", "label": "cat"}\n{"id": "g2", "path": "nowhere/g2.png", "label": "dog"}\n'
    )
    argv = ["pool", "--model", pool["base"], "--top-k", "3", "--show", "0", "--selection", "budget_switch",
            "--exclude-labeled", "labeled.jsonl", "--exclude-labeled", "labeled.jsonl",
            "--exclude-labeled", str(tmp_path / "gone.jsonl"), "--output", str(tmp_path / "out")]  # fmt: skip
    code, out, err = run_triage(capsys, *argv)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("selection budget_switch: 6 labeled item(s) in the --exclude-labeled manifests")
    assert lines[1].startswith(
        "typiclust: embedded 4 labeled item(s) to fill around; 2 could not be embedded (first: g1:"
    )
    assert len(read_jsonl(tmp_path / "out" / "queue.jsonl")) == 3
    # An empty manifest: nothing labeled, typiclust with no labeled items.
    (tmp_path / "empty.jsonl").write_text("")
    code, out, _ = run_triage(capsys, "pool", "--model", pool["base"], "--top-k", "3", "--show", "0",
                              "--selection", "budget_switch", "--exclude-labeled", str(tmp_path / "empty.jsonl"),
                              "--output", str(tmp_path / "empty"))  # fmt: skip
    assert code == 0 and out.splitlines()[:2] == [
        "selection budget_switch: 0 labeled item(s) in the --exclude-labeled manifests, 3 classes, switch at 10 per "
        "class -> typiclust",
        "typiclust: embedded 0 labeled item(s) to fill around",
    ]


def test_labeled_items_leaves_out_repeated_records(pool):
    manifest = str(pool["folder"] / "labeled.jsonl")
    assert [item.item_id for item in labeled_items([manifest, manifest])] == ["l0", "l1", "l2", "l3"]


def test_budget_switch_refuses_a_negative_point_before_loading_a_model(capsys):
    code, _, err = run_triage(capsys, "pool", "--model", "nowhere", "--output", "o", "--selection", "budget_switch",
                              "--labels-per-class", "-1")  # fmt: skip
    assert code == 2 and "expected --labels-per-class >= 0. Received: -1" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--model", "nowhere", "--selection", "top_k", "--labels-per-class", "3"],
            "--labels-per-class applies to --selection budget_switch only",
        ),
    ],
)
def test_budget_switch_flags_are_checked_before_anything_loads(capsys, extra, message):
    code, _, err = run_triage(capsys, "pool", "--output", "o", *extra)
    assert code == 2 and message in err


def test_typiclust_picks_refuses_labeled_embeddings_of_another_width():
    with pytest.raises(ValueError, match=r"an \(L, 2\) array.*Received shape \(3, 4\)"):
        diversity.typiclust_picks(np.zeros((6, 2), np.float32), np.zeros((3, 4), np.float32), 2, seed=0)


def test_budget_switch_is_the_default_of_the_command_and_of_the_api(pool, tmp_path, capsys, monkeypatch):
    """No --selection: the recommended budget_switch, resolved from the manifests; the API from labeled_count."""
    monkeypatch.chdir(pool["folder"])
    code, out, _ = run_triage(capsys, "pool", "--model", pool["base"], "--top-k", "3", "--show", "0",
                              "--exclude-labeled", "labeled.jsonl", "--output", str(tmp_path / "cli"))  # fmt: skip
    assert code == 0 and out.splitlines()[0] == (
        "selection budget_switch: 4 labeled item(s) in the --exclude-labeled manifests, 3 classes, switch at 10 per "
        "class -> typiclust"
    )
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["selection"] == "typiclust"

    items = lambda: read_items(str(pool["folder"] / "pool"))  # noqa: E731
    scorer = InProcessScorer(pool["base"])
    scarce = triage(items(), scorer, str(tmp_path / "api_scarce"), top_k=3, labeled_count=29)
    plenty = triage(items(), scorer, str(tmp_path / "api_plenty"), top_k=3, labeled_count=30)
    assert (scarce.selection, plenty.selection) == ("typiclust", "badge")
    assert scarce.selection_reason == (
        "selection budget_switch: 29 labeled item(s), 3 classes, switch at 10 per class -> typiclust"
    )
    typiclust = triage(items(), scorer, str(tmp_path / "typiclust"), top_k=3, selection="typiclust")
    badge = triage(items(), scorer, str(tmp_path / "badge"), top_k=3, selection="badge")
    assert (ids(scarce.queue), ids(plenty.queue)) == (ids(typiclust.queue), ids(badge.queue))
    assert ids(typiclust.queue) != ids(badge.queue)
    # The switch point is a setting; labeled_embeddings count as the labeled items when no count is given.
    assert (
        triage(items(), scorer, str(tmp_path / "point"), top_k=3, labeled_count=29, labels_per_class=9).selection
        == "badge"
    )
    embeddings = embed_items(labeled_items([str(pool["folder"] / "labeled.jsonl")]), scorer).embeddings
    assert (
        triage(items(), scorer, str(tmp_path / "emb"), top_k=3, labeled_embeddings=embeddings).selection == "typiclust"
    )
    # Another selection is used as given, with no reason.
    top = triage(items(), scorer, str(tmp_path / "top"), top_k=3, selection="top_k", labeled_count=0)
    assert (top.selection, top.selection_reason) == ("top_k", "")
    with pytest.raises(ValueError, match="labeled_count"):
        triage(items(), scorer, str(tmp_path / "bad"), top_k=3, labeled_count=-1)
    with pytest.raises(ValueError, match="Expected a resolved selection: budget_switch becomes typiclust or badge"):
        QueueRule(top_k=3, selection="budget_switch")
