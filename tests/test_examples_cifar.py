"""examples/cifar10_paper.py --smoke: the paper's protocol, tiny, on tfds.testing.mock_data."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.slow  # end to end, 20-30 s on 2 cores
def test_cifar10_paper_smoke(tmp_path):
    import cifar10_paper

    out = tmp_path / "cifar"
    summary = cifar10_paper.main(["--smoke", "--out", str(out), "--quiet", "--strategies", "learning_loss"])
    assert list(summary["strategies"]) == ["learning_loss"]
    assert summary["strategies"]["learning_loss"]["num_labeled"] == [20, 30]
    state = json.loads((out / "learning_loss" / "seed_0" / "state.json").read_text())
    assert state["config"]["augment"] and state["config"]["warm_start"]
    assert state["config"]["preprocessing"]["mean"] == [0.4914, 0.4822, 0.4465]
    last = state["cycles"][-1]
    # The schedule ran inside each cycle: lr 0.01 from epoch 1, head detached from epoch 1.
    assert abs(last["train_learning_rate"] - 0.01) < 1e-9 and last["head_detached"] == 1.0
    settings = json.loads((out / "experiment.json").read_text())
    assert settings["model"]["learning_rate"] == 0.1 and settings["model"]["weight_decay"] == 5e-4
    assert (out / "learning_curves.png").exists() and (out / "report.csv").exists()
    # The full protocol is the paper's.
    assert cifar10_paper.PAPER == dict(
        width=64, epochs=200, lr_drop_epoch=160, detach_after_epoch=120, batch_size=128,
        initial_size=1000, query_size=1000, subset_size=10000, cycles=10, trials=5,
    )  # fmt: skip
