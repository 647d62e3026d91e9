"""Figures 1-3: reading the feed and ingesting it (in-process, no socket).

The SDK path is ``MutationClient.fetch()`` then ``ReconciliationEngine.ingest``.
Its baselines fetch the same bytes through the same ``httpx.MockTransport``:

* the floor: a bare ``httpx.AsyncClient`` GET, ``json.loads``, then one set and
  one dict lookup per row, which is all a reader of the feed cannot avoid;
* the naive matcher of the public scripts: for every open invoice, scan every
  row for its amount.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import anyio
import attrs
import httpx

from qrispay import MutationClient
from qrispay._convert import mutation_from_row

from ._feed import (
    AUTH,
    BASE_URL,
    FEED_URL,
    MERCHANT,
    NOW,
    TOKEN,
    Answers,
    body,
    engine_with,
    invoices,
    rows,
)
from ._harness import Figure, Timer, Variant, figure, interleaved

ROWS = 1000
OPEN = 500
NEW_PER_POLL = 10


@attrs.frozen
class Config:
    repeats: int
    scale_repeats: int
    scale_rows: int = 2000
    small: int = 100
    large: int = 100_000
    memory_invoices: int = 100_000


def _client(answers: Answers) -> MutationClient:
    return MutationClient(AUTH, MERCHANT, TOKEN, base_url=BASE_URL, transport=answers.transport)


def _floor(data: list[dict[str, Any]], seen: set[str], open_by_total: dict[int, Any]) -> int:
    matched = 0
    for row in data:
        fresh = row["issuer_reff"] not in seen
        owner = open_by_total.get(row["amount"])
        if fresh and owner is not None:
            matched += 1
    return matched


def _naive(data: list[dict[str, Any]], open_invoices: list[Any]) -> int:
    # As the public scripts do: each open invoice scans the whole answer.
    paid = 0
    for invoice in open_invoices:
        for row in data:
            if row["type"] == "CR" and int(row["amount"]) == invoice.total:
                paid += 1
                break
    return paid


async def _cold(cfg: Config) -> list[Figure]:
    open_invoices = invoices(OPEN)
    pays = [invoice.total for invoice in open_invoices[: OPEN // 2]]
    # A fresh answer each repetition (new references), so nothing was read before.
    answers = Answers(
        [body(rows(ROWS, pays=pays, tag=f"c{rep:03d}")) for rep in range(cfg.repeats + 1)]
    )
    open_by_total = {invoice.total: invoice for invoice in open_invoices}

    async with _client(answers) as feed, httpx.AsyncClient(transport=answers.transport) as bare:

        async def sdk(rep: int) -> float:
            answers.current = rep
            engine = engine_with(open_invoices)
            with Timer() as t:
                engine.ingest(await feed.fetch(), now=NOW)
            return t.elapsed

        async def floor(rep: int) -> float:
            answers.current = rep
            with Timer() as t:
                response = await bare.get(FEED_URL)
                _floor(json.loads(response.content)["data"], set(), open_by_total)
            return t.elapsed

        async def naive(rep: int) -> float:
            answers.current = rep
            with Timer() as t:
                response = await bare.get(FEED_URL)
                _naive(json.loads(response.content)["data"], open_invoices)
            return t.elapsed

        times = await interleaved(
            {"sdk": sdk, "floor": floor, "naive": naive}, repeats=cfg.repeats, warmup=1
        )
    ms = {name: seconds * 1e3 for name, seconds in times.items()}
    return [
        figure(
            f"cold poll ({ROWS:,} new rows, {OPEN} open, {OPEN // 2} paid) vs floor",
            ms["sdk"],
            "ms/poll",
            ms["floor"],
            max_ratio=4.0,
        ),
        figure("cold poll vs naive matcher", ms["sdk"], "ms/poll", ms["naive"]),
    ]


async def _steady(cfg: Config) -> list[Figure]:
    open_invoices = invoices(OPEN)
    polls = cfg.repeats + 2
    total = ROWS + NEW_PER_POLL * polls
    # Payments only among the new rows: the first answer is what was read before.
    timeline = rows(
        total, pays=[i.total for i in open_invoices], pay_every=5, pay_from=ROWS, tag="s"
    )
    windows = [timeline[NEW_PER_POLL * k : NEW_PER_POLL * k + ROWS] for k in range(polls)]
    answers = Answers([body(window) for window in windows])
    open_by_total = {invoice.total: invoice for invoice in open_invoices}
    seen = {row["issuer_reff"] for row in windows[0]}
    engine = engine_with(open_invoices)

    async with _client(answers) as feed, httpx.AsyncClient(transport=answers.transport) as bare:
        engine.ingest(await feed.fetch(), now=NOW)  # the poll before: 990 of the next rows

        # Repetition ``rep`` reads answer ``rep + 1``: ten rows newer than the last one read.
        async def sdk(rep: int) -> float:
            answers.current = rep + 1
            with Timer() as t:
                engine.ingest(await feed.fetch(), now=NOW)
            return t.elapsed

        async def floor(rep: int) -> float:
            answers.current = rep + 1
            with Timer() as t:
                response = await bare.get(FEED_URL)
                _floor(json.loads(response.content)["data"], seen, open_by_total)
            seen.update(row["issuer_reff"] for row in windows[rep + 1])
            return t.elapsed

        async def naive(rep: int) -> float:
            answers.current = rep + 1
            with Timer() as t:
                response = await bare.get(FEED_URL)
                _naive(json.loads(response.content)["data"], open_invoices)
            return t.elapsed

        times = await interleaved(
            {"sdk": sdk, "floor": floor, "naive": naive}, repeats=cfg.repeats, warmup=1
        )
    ms = {name: seconds * 1e3 for name, seconds in times.items()}
    return [
        figure(
            f"steady poll ({NEW_PER_POLL} new of {ROWS:,} rows) vs floor",
            ms["sdk"],
            "ms/poll",
            ms["floor"],
            max_ratio=1.25,
        ),
        figure("steady poll vs naive matcher", ms["sdk"], "ms/poll", ms["naive"]),
    ]


async def _unchanged(cfg: Config) -> Figure:
    """The feed answering again what it answered last time (its answer is
    cached for a while): every row was seen, nothing is new."""
    open_invoices = invoices(OPEN)
    window = rows(ROWS, pays=[i.total for i in open_invoices], pay_every=5, tag="u")
    answers = Answers([body(window)])
    open_by_total = {invoice.total: invoice for invoice in open_invoices}
    seen = {row["issuer_reff"] for row in window}
    engine = engine_with(open_invoices)

    async with _client(answers) as feed, httpx.AsyncClient(transport=answers.transport) as bare:
        engine.ingest(await feed.fetch(), now=NOW)  # the poll before, of the same answer

        async def sdk(rep: int) -> float:
            with Timer() as t:
                engine.ingest(await feed.fetch(), now=NOW)
            return t.elapsed

        async def floor(rep: int) -> float:
            with Timer() as t:
                response = await bare.get(FEED_URL)
                _floor(json.loads(response.content)["data"], seen, open_by_total)
            return t.elapsed

        times = await interleaved({"sdk": sdk, "floor": floor}, repeats=cfg.repeats, warmup=1)
    return figure(
        f"steady poll ({ROWS:,} rows all seen) vs floor",
        times["sdk"] * 1e3,
        "ms/poll",
        times["floor"] * 1e3,
        max_ratio=1.25,
    )


async def _scale(cfg: Config) -> list[Figure]:
    half = cfg.small // 2
    everyone = invoices(cfg.large + half * (cfg.scale_repeats + 1))
    spare = everyone[cfg.large :]
    # Each repetition pays half of the invoices open in both engines; both then
    # track the same replacements, so neither engine's open count changes.
    batches, payable = [], everyone[: cfg.small]
    for rep in range(cfg.scale_repeats + 1):
        paying, payable = payable[:half], payable[half:] + spare[rep * half : (rep + 1) * half]
        raw = rows(cfg.scale_rows, pays=[i.total for i in paying], pay_every=20, tag=f"x{rep}")
        batches.append([mutation_from_row(row) for row in raw])

    def variant(size: int) -> Variant:
        engine = engine_with(everyone[:size])

        async def run(rep: int) -> float:
            for invoice in spare[(rep - 1) * half : rep * half] if rep else ():
                engine.track(invoice, now=NOW)
            with Timer() as t:
                engine.ingest(batches[rep], now=NOW)
            return t.elapsed

        return run

    times = await interleaved(
        {"small": variant(cfg.small), "large": variant(cfg.large)},
        repeats=cfg.scale_repeats,
        warmup=1,
    )
    per_row = {name: seconds / cfg.scale_rows * 1e6 for name, seconds in times.items()}
    return [
        figure(
            f"ingest/row, {cfg.large:,} vs {cfg.small} open",
            per_row["large"],
            "us/row",
            per_row["small"],
            max_ratio=1.2,
        ),
        _memory(everyone[: cfg.memory_invoices]),
    ]


def _memory(open_invoices: list[Any]) -> Figure:
    """Bytes the engine adds per open invoice, against the bytes of the invoice
    objects themselves (made before tracing starts, as a caller's would be)."""
    count = len(open_invoices)
    tracemalloc.start()
    try:
        made = invoices(count)
        own = tracemalloc.get_traced_memory()[0] / count
        del made
        before = tracemalloc.get_traced_memory()[0]
        engine = engine_with(open_invoices)
        per_invoice = (tracemalloc.get_traced_memory()[0] - before) / count
        del engine
    finally:
        tracemalloc.stop()
    return figure(
        f"engine bytes/open invoice ({count:,} open) vs Invoice",
        per_invoice,
        "B",
        own,
        max_value=1024,
    )


async def _client_memory() -> Figure:
    """Bytes the feed client keeps per remembered row of the last answer, beyond
    the models it handed out (those are the answer itself), against the bytes of
    that answer's JSON text."""
    content = body(rows(ROWS, pays=[], tag="mem"))
    answers = Answers([content])
    tracemalloc.start()
    try:
        async with _client(answers) as feed:
            await feed.fetch()  # the HTTP client's own allocations, made once
            feed._rows.forget()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            batch = await feed.fetch()
            gc.collect()
            with_client = tracemalloc.get_traced_memory()[0]
            feed._rows.forget()
            gc.collect()
            models_only = tracemalloc.get_traced_memory()[0]
            assert len(batch) == ROWS
        del batch
    finally:
        tracemalloc.stop()
    del before
    return figure(
        "feed client bytes/remembered row vs JSON bytes/row",
        (with_client - models_only) / ROWS,
        "B",
        len(content) / ROWS,
        max_value=300,
    )


async def run(cfg: Config) -> list[Figure]:
    return [
        *await _cold(cfg),
        *await _steady(cfg),
        await _unchanged(cfg),
        await _client_memory(),
        *await _scale(cfg),
    ]


def main(cfg: Config) -> list[Figure]:
    figures: list[Figure] = anyio.run(run, cfg)
    return figures
