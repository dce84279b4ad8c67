"""`benchmarks/selection_cost.py`: runs end to end and splits each call into its scoring pass and selection step."""

import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "selection_cost.py")


def test_a_small_run_splits_scoring_from_selection(tmp_path):
    out = tmp_path / "rows.json"
    command = [sys.executable, SCRIPT, "--sizes", "2000", "--k", "50", "--rounds", "1", "--out", str(out)]
    command += ["--strategies", "learning_loss,learning_loss_clusters"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["strategy"]: row for row in json.loads(out.read_text())}
    assert not [row for row in rows.values() if "error" in row], rows
    top_k, clusters = rows["learning_loss"], rows["learning_loss_clusters"]
    # The top-K strategy's whole call is its scoring pass; the clusters' k-means is timed apart from its pass.
    assert top_k["selection_s"] == 0.0 and top_k["scoring_s"] == top_k["total_s"] > 0
    assert 0 < clusters["scoring_s"] < clusters["total_s"]
    assert abs(clusters["scoring_s"] + clusters["selection_s"] - clusters["total_s"]) < 1e-6
    assert "| learning_loss_clusters | 2,000 |" in result.stdout
