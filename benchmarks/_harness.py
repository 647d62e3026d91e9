"""Figures, timers and the results table."""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Figure:
    """One result. ``ratio`` is ``value / baseline``, both in ``unit``."""

    name: str
    value: float
    unit: str
    baseline: float
    ratio: float
    target: str | None = None
    meets: bool | None = None


def figure(
    name: str,
    value: float,
    unit: str,
    baseline: float,
    *,
    max_ratio: float | None = None,
    max_value: float | None = None,
) -> Figure:
    """A figure; with ``max_ratio`` or ``max_value``, a target and whether it is met."""
    ratio = value / baseline if baseline else math.inf
    target, meets = None, None
    if max_ratio is not None:
        target, meets = f"ratio <= {max_ratio:g}", ratio <= max_ratio
    if max_value is not None:
        target, meets = f"value <= {max_value:g}", value <= max_value
    return Figure(name, value, unit, baseline, ratio, target, meets)


class Timer:
    """Times a block with GC collected before and disabled inside (see the package doc)."""

    elapsed = 0.0

    def __enter__(self) -> Timer:
        gc.collect()
        gc.disable()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = time.perf_counter() - self._start
        gc.enable()


Variant = Callable[[int], Awaitable[float]]


async def interleaved(
    variants: dict[str, Variant],
    *,
    repeats: int,
    warmup: int = 1,
) -> dict[str, float]:
    """The median seconds of each variant. A variant runs repetition ``rep`` and
    returns the seconds of its timed part (its setup is its own business).
    The order rotates each repetition so no side always runs first."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = await variants[name](rep)
            if rep >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(found) for name, found in times.items()}


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
        return f"{value:.3g}"
    if value == int(value) and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(figures: Sequence[Figure], *, markdown: bool = False) -> str:
    """The figures as an aligned text table, or as a Markdown one."""
    head = ("figure", "value", "unit", "baseline", "ratio", "target", "meets")
    rows = [
        (
            f.name,
            _number(f.value),
            f.unit,
            _number(f.baseline),
            f"{f.ratio:.2f}x" if math.isfinite(f.ratio) else "-",
            f.target or "",
            "" if f.meets is None else ("yes" if f.meets else "NO"),
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    # Names, units and targets read left-aligned; numbers right-aligned.
    left = (0, 2, 5)

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(width) if i in left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded).rstrip()

    if markdown:
        rule = [("-" * w if i in left else "-" * (w - 1) + ":") for i, w in enumerate(widths)]
    else:
        rule = ["-" * w for w in widths]
    return "\n".join([line(head), line(rule), *(line(r) for r in rows)])


def _json_number(value: float) -> float | None:
    # JSON has no NaN or infinity.
    return value if math.isfinite(value) else None


def write_results(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the figures as JSON; returns what was written (the charts draw from it)."""
    data = {
        "meta": meta,
        "figures": [
            {
                "name": f.name,
                "value": _json_number(f.value),
                "unit": f.unit,
                "baseline": _json_number(f.baseline),
                "ratio": _json_number(f.ratio),
                "target": f.target,
                "meets": f.meets,
            }
            for f in figures
        ],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data
