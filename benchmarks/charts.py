"""``python -m benchmarks.charts RESULTS.json DIR``: the figures as PNG charts.

Reads the JSON the suite writes (``python -m benchmarks --output``), so a CI
job can draw from its quick run; ``python -m benchmarks --charts DIR`` does
both in one go. Each chart needs its suite's figures: ``quota.png`` the quota
suite's, ``hot-path.png`` the hot_path suite's.

matplotlib is the optional ``charts`` extra (``pip install qrispay[charts]``);
only this module imports it, never the library.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHARTS", "MissingFigureError", "draw", "main"]

QRISPAY, POLLERS, FLOOR = "#1f6feb", "#d9822b", "#6e7781"
WIDTH_INCHES, DPI = 8.0, 100  # 800 px wide


class MissingFigureError(LookupError):
    """The results lack a figure a chart is drawn from."""


class _Figures:
    """The results' figures, found by name (or by a name's start and end, for
    names that carry a run's sizes)."""

    def __init__(self, results: dict[str, Any], chart: str, suite: str):
        self._by_name = {f["name"]: f for f in results.get("figures", [])}
        self._chart, self._suite = chart, suite

    def get(self, start: str, end: str = "") -> dict[str, Any]:
        for name, found in self._by_name.items():
            if name == start or (end and name.startswith(start) and name.endswith(end)):
                return found
        wanted = f"{start!r}" if not end else f"{start!r}...{end!r}"
        raise MissingFigureError(
            f"{self._chart}: the results have no figure {wanted}; run the "
            f"{self._suite} suite (python -m benchmarks --only {self._suite})"
        )


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _label(value: float, unit: str = "") -> str:
    if math.isnan(value):
        return "n/a"
    text = (
        f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    )
    return f"{text} {unit}".strip()


def _bar_labels(ax: Any, bars: Any, values: Sequence[float], unit: str = "") -> None:
    ax.bar_label(bars, labels=[_label(v, unit) for v in values], padding=2, fontsize=9)


def _quota(results: dict[str, Any]) -> Any:
    figs = _Figures(results, "quota.png", "quota")
    who = ("Reconciler", "5 s pollers")
    requests = [figs.get(f"{w}: feed requests/hour vs min") for w in who]
    limited = [_num(figs.get(f"{w}: 429s vs requests")["value"]) for w in who]
    missed = [figs.get(f"{w}: missed payments vs payments") for w in who]
    stats = ("p50", "p99", "max")
    latency = {w: [figs.get(f"{w}: latency {s} vs cache floor") for s in stats] for w in who}

    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(WIDTH_INCHES, 4.2), dpi=DPI, gridspec_kw={"width_ratios": [2, 3]}
    )
    fig.suptitle("One feed fetch per cache window vs a 5 s poller per invoice", fontsize=12)

    counts = [_num(r["value"]) for r in requests]
    bars = left.bar(["qrispay\nReconciler", "5 s pollers"], counts, color=[QRISPAY, POLLERS])
    left.bar_label(
        bars,
        labels=[
            _label(c) + (f"\n({_label(n)} refused, 429)" if n else "")
            for c, n in zip(counts, limited, strict=True)
        ],
        padding=2,
        fontsize=9,
    )
    floor = _num(requests[0]["baseline"])
    left.axhline(floor, color=FLOOR, linestyle="--", linewidth=1)
    left.set_title(f"Feed requests in one hour\n(dashed: one per TTL, {floor:.0f})", fontsize=10)
    # Log scale: the pollers ask hundreds of times more, and a linear bar of 119
    # next to 53,870 would not show at all.
    left.set_yscale("log")
    known = [c for c in counts if not math.isnan(c) and c > 0] + [floor]
    left.set_ylim(max(1.0, min(known) / 3), max(known) * 6)
    left.set_ylabel("requests per hour (log scale)")

    width = 0.38
    xs = range(len(stats))
    for shift, w, color in ((-width / 2, who[0], QRISPAY), (width / 2, who[1], POLLERS)):
        values = [_num(f["value"]) for f in latency[w]]
        gone = missed[who.index(w)]
        name = "qrispay Reconciler" if w == who[0] else w
        if _num(gone["value"]):
            name += f" ({_num(gone['value']):.0f} of {_num(gone['baseline']):.0f} missed)"
        bars = right.bar([x + shift for x in xs], values, width, color=color, label=name)
        _bar_labels(right, bars, values, "s")
    for x, f in zip(xs, latency[who[0]], strict=True):
        y = _num(f["baseline"])
        right.hlines(y, x - width, x + width, colors=FLOOR, linestyles="--", linewidth=1.2)
    right.plot([], [], color=FLOOR, linestyle="--", label="cache floor (uniform on one TTL)")
    right.set_xticks(list(xs), stats)
    right.set_title("Payment to detection", fontsize=10)
    right.set_ylabel("latency (s)")
    tops = [_num(f["value"]) for fs in latency.values() for f in fs] + [
        _num(f["baseline"]) for f in latency[who[0]]
    ]
    right.set_ylim(0, max(t for t in tops if not math.isnan(t)) * 1.45)
    right.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def _hot_path(results: dict[str, Any]) -> Any:
    figs = _Figures(results, "hot-path.png", "hot_path")
    polls = [
        ("cold poll\n(all rows new)", figs.get("cold poll (", "vs floor")),
        ("steady poll\n(a few new rows)", figs.get("steady poll (", "rows) vs floor")),
        ("steady poll\n(all rows seen)", figs.get("steady poll (", "all seen) vs floor")),
    ]
    naive = [
        ("cold poll", figs.get("cold poll vs naive matcher")),
        ("steady poll", figs.get("steady poll vs naive matcher")),
    ]

    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(WIDTH_INCHES, 4.2), dpi=DPI, gridspec_kw={"width_ratios": [3, 2]}
    )
    fig.suptitle("Time of one poll: fetch, decode, match (median)", fontsize=12)
    _pairs(left, polls, "floor: bare GET + json.loads + set/dict lookups", "vs the floor")
    _pairs(right, naive, "naive matcher: every invoice scans every row", "vs a naive matcher")
    return fig


def _pairs(ax: Any, pairs: Sequence[tuple[str, dict[str, Any]]], other: str, title: str) -> None:
    width = 0.38
    xs = range(len(pairs))
    ours = [_num(f["value"]) for _, f in pairs]
    theirs = [_num(f["baseline"]) for _, f in pairs]
    bars = ax.bar([x - width / 2 for x in xs], ours, width, color=QRISPAY, label="qrispay")
    ax.bar_label(
        bars,
        labels=[
            f"{_label(v)}\n({_num(f['ratio']):.2f}x)" for v, (_, f) in zip(ours, pairs, strict=True)
        ],
        padding=2,
        fontsize=8,
    )
    bars = ax.bar([x + width / 2 for x in xs], theirs, width, color=FLOOR, label=other)
    _bar_labels(ax, bars, theirs)
    ax.set_xticks(list(xs), [name for name, _ in pairs], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("ms per poll")
    top = max(v for v in ours + theirs if not math.isnan(v))
    ax.set_ylim(0, top * 1.4)
    ax.legend(fontsize=7, loc="upper left", frameon=False)


CHARTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "quota.png": _quota,
    "hot-path.png": _hot_path,
}


def draw(
    results: dict[str, Any], directory: Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Write the charts ``names`` (default: all) into ``directory``; the paths
    written. Raises ``MissingFigureError`` before writing anything if a figure
    is missing."""
    import matplotlib

    matplotlib.use("Agg")  # no display: CI and servers
    import matplotlib.pyplot as plt

    chosen = list(CHARTS) if names is None else list(names)
    figures = {name: CHARTS[name](results) for name in chosen}
    directory.mkdir(parents=True, exist_ok=True)
    mode = results.get("meta", {}).get("mode")
    written = []
    for name, fig in figures.items():
        if mode:
            fig.text(0.99, 0.01, f"{mode} run", ha="right", fontsize=7, color=FLOOR)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def charts_for(suites: Sequence[str]) -> list[str]:
    """The charts a run of ``suites`` has the figures of."""
    need = {"quota.png": "quota", "hot-path.png": "hot_path"}
    return [name for name, suite in need.items() if suite in suites]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.charts", description=__doc__)
    parser.add_argument("results", type=Path, help="the suite's JSON output")
    parser.add_argument("directory", type=Path, help="where to write the PNG files")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(CHARTS)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else None
    unknown = set(names or ()) - set(CHARTS)
    if unknown:
        parser.error(f"unknown chart(s): {', '.join(sorted(unknown))}")
    try:
        results = json.loads(args.results.read_text())
        written = draw(results, args.directory, names)
    except (OSError, ValueError, MissingFigureError) as error:
        print(f"python -m benchmarks.charts: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
