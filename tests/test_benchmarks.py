"""The benchmark suite runs, and writes results.json in its schema.

Only the smallest configuration (``--smoke``), in a subprocess (it serves a
loopback sandbox and may start a server process of its own); no timing is
asserted, that is the suite's job.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"name", "value", "unit", "baseline", "ratio", "target", "meets"}


@pytest.mark.timeout(120)
def test_smoke_run_writes_results_in_schema(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    figures = json.loads(output.read_text())["figures"]
    assert len(figures) >= 20
    names = [figure["name"] for figure in figures]
    assert len(set(names)) == len(names)
    for figure in figures:
        assert set(figure) == FIELDS, figure
        for text in ("name", "unit"):
            assert isinstance(figure[text], str), figure
            assert figure[text], figure
        for number in ("value", "baseline", "ratio"):
            assert figure[number] is None or isinstance(figure[number], (int, float)), figure
        # A target and its verdict come together, or neither.
        assert (figure["target"] is None) == (figure["meets"] is None), figure
        assert figure["meets"] is None or isinstance(figure["meets"], bool)
    # The table is printed too, one line per figure.
    assert all(name in done.stdout for name in names)
