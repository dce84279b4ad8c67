"""benchmarks/reliability_probes.py: the rerun of every reliability probe of issues 11 and 23."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "reliability_probes.py"
)


def probe_numbers() -> list[str]:
    spec = importlib.util.spec_from_file_location("reliability_probes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)  # imports NumPy only: the probes load TensorFlow when they run
    return [probe.number for probe in module.PROBES]


def items_by_issue(numbers: list[str]) -> dict[str, set[int]]:
    items = {"A": set(), "B": set()}
    for number in numbers:
        issue, item = re.match(r"([AB])(\d+)[a-z]?$", number).groups()
        items[issue].add(int(item))
    return items


def test_every_item_of_both_issues_has_a_probe():
    numbers = probe_numbers()
    items = items_by_issue(numbers)
    assert items["A"] == set(range(1, 17))  # issue 11, items 1-16
    assert items["B"] == set(range(1, 8))  # issue 23, "Why", items 1-7
    assert len(numbers) == len(set(numbers))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_every_reliability_probe_passes(tmp_path):
    rows = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, SCRIPT, "--json", str(rows)], capture_output=True, text=True, timeout=3500)
    failing = [row for row in json.loads(rows.read_text()) if not row["passed"]] if rows.exists() else "no rows"
    assert result.returncode == 0, f"failing probes: {failing}\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
