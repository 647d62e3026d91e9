"""The benchmark charts: ``python -m benchmarks --charts DIR`` and
``python -m benchmarks.charts RESULTS.json DIR`` write PNG files, and refuse,
writing nothing, results that lack a figure a chart needs. What the pictures
show is read by eye; here only that they are real PNGs of a plausible size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    # An 800 px wide chart with bars and labels: far more than an empty image.
    assert 10_000 < len(data) < 150_000, (path, len(data))


@pytest.mark.timeout(180)
def test_a_smoke_run_draws_both_charts(tmp_path: Path) -> None:
    charts = tmp_path / "charts"
    done = run(
        "benchmarks",
        "--smoke",
        "--only",
        "quota,hot_path",
        "--output",
        str(tmp_path / "results.json"),
        "--charts",
        str(charts),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in charts.iterdir()) == ["hot-path.png", "quota.png"]
    for path in charts.iterdir():
        assert_png(path)
    # The JSON step draws the same charts from the written results.
    again = tmp_path / "again"
    drawn = run("benchmarks.charts", str(tmp_path / "results.json"), str(again))
    assert drawn.returncode == 0, drawn.stderr
    assert sorted(p.name for p in again.iterdir()) == ["hot-path.png", "quota.png"]


def test_only_the_charts_of_the_suites_that_ran_are_drawn() -> None:
    from benchmarks.charts import charts_for

    assert charts_for(["hot_path"]) == ["hot-path.png"]
    assert charts_for(["quota", "stores"]) == ["quota.png"]
    assert charts_for(["stores", "serve"]) == []


def test_a_missing_figure_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    # No figures at all: the quota chart has nothing to draw from.
    results.write_text(json.dumps({"meta": {"mode": "smoke"}, "figures": []}))
    out = tmp_path / "out"
    done = run("benchmarks.charts", str(results), str(out), "--only", "quota.png")
    assert done.returncode == 2
    assert "Reconciler: feed requests/hour vs min" in done.stderr
    assert "--only quota" in done.stderr
    assert not out.exists()


def test_the_committed_charts_are_pngs() -> None:
    for name in ("quota.png", "hot-path.png"):
        assert_png(ROOT / "docs" / "img" / name)
