"""``python -m benchmarks [--quick | --smoke] [--only NAME,...] [--markdown] [--output PATH]
[--postgres DSN] [--charts DIR]``."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import hot_path, http_overhead, merchants, quota, serve, stores
from ._harness import Figure, table, write_results

# name -> (module's main, full config, --quick config, --smoke config)
SUITES: dict[str, tuple[Callable[[Any], list[Figure]], Any, Any, Any]] = {
    "hot_path": (
        hot_path.main,
        hot_path.Config(repeats=41, scale_repeats=31),
        hot_path.Config(repeats=9, scale_repeats=15, memory_invoices=20_000),
        hot_path.Config(
            repeats=1, scale_repeats=1, scale_rows=100, large=2000, memory_invoices=2000
        ),
    ),
    "http": (
        http_overhead.main,
        http_overhead.Config(repeats=11, sequential_block=50),
        http_overhead.Config(repeats=3, sequential_block=10),
        http_overhead.Config(repeats=1, sequential_block=2),
    ),
    "quota": (
        quota.main,
        quota.Config(invoices=500),
        quota.Config(invoices=100),
        quota.Config(invoices=10),
    ),
    "merchants": (
        merchants.main,
        merchants.Config(ttl=30.0, steps=(2500, 5000, 7500, 10_000)),
        merchants.Config(ttl=2.0, steps=(50, 100, 200)),
        merchants.Config(ttl=0.2, steps=(5,)),
    ),
    "stores": (
        stores.main,
        stores.Config(repeats=41, cold_repeats=15, create_repeats=11, create_batch=100),
        stores.Config(repeats=15, cold_repeats=7, create_repeats=5, create_batch=50),
        stores.Config(
            repeats=1,
            cold_repeats=1,
            create_repeats=1,
            create_batch=5,
            large=1000,
            size_invoices=200,
            size_rows=200,
        ),
    ),
    "serve": (
        serve.main,
        serve.Config(repeats=11, block=50, read_seconds=5.0, deliveries=500),
        serve.Config(repeats=3, block=10, read_seconds=1.5, deliveries=100),
        serve.Config(repeats=1, block=2, read_seconds=0.2, deliveries=5),
    ),
}

LEGEND = """\
ratio = value / baseline. Baselines, all measured in this run:
  floor: bare httpx GET of the same bytes (same MockTransport) + json.loads + one set
    and one dict lookup per row; naive matcher: every open invoice scans every row
  bare GET / bare pollers: plain httpx.AsyncClient requests of the same URL
  min: 3600 / (ttl + margin) fetches; cache floor: latency of one fetch per ttl + margin
    (uniform on [0, ttl + margin]); bare capacity: (ttl + margin) / bare CPU per fetch
  5 s pollers: one task per open invoice asking the feed every 5 s (quota 60/min)
  stores: the same path with MemoryStore (or the smaller state); SQLite files in a temp
    dir (WAL, synchronous=FULL); sizes: file bytes after close (WAL checkpointed) vs JSON
  serve: the in-process SDK on the same loopback sandbox (create_invoice with SQLite,
    get_invoice); status reads vs /healthz of the same process; webhooks vs a bare POST\
"""
GC_NOTE = (
    "timed sections: gc.collect() before, cyclic GC off inside; medians of interleaved repeats"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a run under a minute")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(SUITES)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results.json",
        help="where to write the figures as JSON (default: benchmarks/results.json)",
    )
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help=f"a PostgreSQL server for the stores suite's PostgreSQL figure "
        f"(default: ${stores.POSTGRES_ENV}; without one that figure is skipped)",
    )
    parser.add_argument(
        "--charts",
        type=Path,
        metavar="DIR",
        help="also draw the charts of the chosen suites as PNG into DIR "
        "(needs matplotlib: pip install 'qrispay[charts]'; see benchmarks/charts.py)",
    )
    args = parser.parse_args(argv)
    if args.postgres:
        os.environ[stores.POSTGRES_ENV] = args.postgres
    chosen = args.only.split(",") if args.only else list(SUITES)
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    # The Reconcilers of the overload step log every failed fetch; the figures count them.
    logging.getLogger("qrispay").setLevel(logging.ERROR)

    figures: list[Figure] = []
    started = time.perf_counter()
    for name in chosen:
        run, full, quick, smoke = SUITES[name]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        figures += run({"full": full, "quick": quick, "smoke": smoke}[mode])
    elapsed = time.perf_counter() - started

    meta = {
        "mode": mode,
        "suites": chosen,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seconds": round(elapsed, 1),
        "timing": GC_NOTE,
    }
    print(table(figures, markdown=args.markdown))
    print(LEGEND)
    print(f"{mode} run, {elapsed:.0f} s, Python {meta['python']}, {meta['cpus']} CPUs; {GC_NOTE}")
    results = write_results(args.output, figures, meta)
    if args.charts is not None:
        from . import charts

        for path in charts.draw(results, args.charts, charts.charts_for(chosen)):
            print(f"chart: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
