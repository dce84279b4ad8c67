"""`benchmarks/gpu.py`: runnable on the CPU in smoke mode, and refusing to pass a CPU off as a GPU."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu.py")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is present: the full run applies")
def test_without_a_gpu_the_full_benchmark_refuses_to_run():
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no GPU found" in result.stdout


@pytest.mark.slow
def test_smoke_mode_runs_every_part_under_mixed_float16():
    result = subprocess.run([sys.executable, SCRIPT, "--smoke"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "policy mixed_float16" in result.stdout
    assert re.search(r"fit overhead: LossLearningModel / backbone epoch time x\d+\.\d{3}", result.stdout)
    from keras_lossal.contracts import DEFAULT_SELECTION

    whole_runs = (f"triage (whole run, {DEFAULT_SELECTION})", "triage (whole run, top_k)")
    for method in ("select ", "InProcessScorer.score", *whole_runs):
        assert re.search(re.escape(method) + r".* x floor \d+\.\d{3}", result.stdout), method
