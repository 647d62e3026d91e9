"""Issue 13: what a store costs the Reconciler (in-process, SQLite on the local disk).

* Steady poll: the Reconciler's poll path with a store, ``MutationClient.fetch()``
  (the same 1,000-row answer again, every row seen), the read of what other
  workers stored (``Keeper.catch_up``), ``engine.ingest`` and what the loop
  expires, then the commit the Reconciler makes (``Keeper.fetched`` and
  ``Keeper.commit``, the real code path, fenced by the lease and renewing it),
  ``SQLiteStore`` against ``MemoryStore``.
* Cold poll commit per new row: 1,000 new rows paying 50 invoices, ingested
  (untimed) and committed (timed) into an ``SQLiteStore`` already holding 100 or
  100,000 open invoices; the commit should cost what changed, not the state.
* ``Reconciler.create_invoice`` throughput through the in-process sandbox's
  gateway, with either store (the background poll is held off: ttl 1 h).
* Database size: bytes of the SQLite file (WAL checkpointed away on close) per
  open invoice and per remembered row key, against their JSON.
* Store work per poll on PostgreSQL: what a polling Reconciler asks of its
  store at each steady poll (its lease only when no commit renewed it lately,
  the read of what others stored, the fenced commit that renews the lease),
  ``PostgresStore`` against ``MemoryStore``. Only with a server: the DSN in
  ``QRISPAY_TEST_POSTGRES`` or ``--postgres DSN``; without one the figure says
  it was skipped. It runs in a fresh schema, dropped afterwards.

Every SQLite file lives in a fresh temporary directory (WAL, synchronous=FULL,
as ``SQLiteStore`` sets them), so the figures include the fsync of each commit.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs

from qrispay import Invoice, MutationClient, PollPolicy, Reconciler, ReconciliationEngine
from qrispay._codec import dump_invoice
from qrispay._convert import mutation_from_row
from qrispay._keeper import Keeper
from qrispay.events import Event
from qrispay.polling import Schedule
from qrispay.sandbox import Sandbox
from qrispay.store import MemoryStore, PostgresStore, SQLiteStore, Store

from ._feed import AUTH, BASE_URL, MERCHANT, NOW, TOKEN, Answers, body, engine_with, invoices, rows
from ._harness import Figure, Timer, Variant, figure, interleaved

ROWS = 1000
OPEN = 500
COLD_PAID = 50


@attrs.frozen
class Config:
    repeats: int
    cold_repeats: int
    create_repeats: int
    create_batch: int
    small: int = 100
    large: int = 100_000
    size_invoices: int = 10_000
    size_rows: int = 10_000


def _client(answers: Answers) -> MutationClient:
    return MutationClient(AUTH, MERCHANT, TOKEN, base_url=BASE_URL, transport=answers.transport)


def _publish(events: list[tuple[int, Event]]) -> None:
    # The Reconciler's publish hands the events to its hub; none wait here.
    return None


class _Ticks:
    """Commit and fetch times: NOW plus one microsecond per call, so each poll's
    ``last_fetch`` differs, as the wall clock's would (the meta is rewritten)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> datetime:
        self.n += 1
        return NOW + timedelta(microseconds=self.n)


def _sqlite(directory: Path, name: str) -> SQLiteStore:
    return SQLiteStore(directory / f"{name}.db")


async def _kept(store: Store, seed: ReconciliationEngine) -> tuple[Keeper, ReconciliationEngine]:
    keeper = Keeper(store, MERCHANT, _Ticks(), holder="bench", lease_ttl=3600.0)
    engine = await keeper.load(seed, lambda: seed)
    # As a polling Reconciler commits: holding the merchant's lease, fenced by it.
    assert await keeper.claim_lease()
    return keeper, engine


# -- 1. steady poll ----------------------------------------------------------------


async def _steady(cfg: Config, directory: Path) -> Figure:
    open_invoices = invoices(OPEN)
    window = rows(ROWS, pays=[i.total for i in open_invoices], pay_every=5, tag="st")
    answers = Answers([body(window)])
    schedule = Schedule(PollPolicy())

    async with AsyncExitStack() as stack:

        async def variant(store: Store) -> Variant:
            await stack.enter_async_context(store)
            feed = await stack.enter_async_context(_client(answers))
            keeper, engine = await _kept(store, engine_with(open_invoices))
            ticks = _Ticks()

            async def poll() -> None:
                # Reconciler._poll: fetch, take what others stored, ingest,
                # expire what is due, commit.
                started = ticks()
                batch = await feed.fetch(max_retries=0)
                await keeper.catch_up(engine, _publish)
                events = engine.ingest(batch, now=NOW, rejected=batch.rejected)
                cutoff = started - engine.skew
                events += engine.expire(now=cutoff, invoice_ids=engine.due_for_expiry(cutoff))
                keeper.fetched(started, schedule)
                await keeper.commit(engine, events, _publish)

            await poll()  # the poll before: it read (and stored) every row of the answer

            async def run(rep: int) -> float:
                with Timer() as t:
                    await poll()
                return t.elapsed

            return run

        times = await interleaved(
            {
                "sqlite": await variant(_sqlite(directory, "steady")),
                "memory": await variant(MemoryStore()),
            },
            repeats=cfg.repeats,
            warmup=2,
        )
    return figure(
        f"steady poll ({ROWS:,} rows all seen, {OPEN} open) + commit, SQLiteStore vs MemoryStore",
        times["sqlite"] * 1e3,
        "ms/poll",
        times["memory"] * 1e3,
        max_ratio=1.5,
    )


# -- 2. cold poll commit at scale --------------------------------------------------


async def _cold_commit(cfg: Config, directory: Path) -> Figure:
    reps = cfg.cold_repeats + 1

    async with AsyncExitStack() as stack:

        async def variant(size: int) -> Variant:
            everyone = invoices(size + COLD_PAID * reps)
            open_now, spare = list(everyone[:size]), everyone[size:]
            store = await stack.enter_async_context(_sqlite(directory, f"cold{size}"))
            keeper, engine = await _kept(store, engine_with(open_now))
            schedule = Schedule(PollPolicy())
            rng = random.Random(13)  # the same draws for either size
            ticks = _Ticks()

            async def run(rep: int) -> float:
                # Untimed: the paid invoices of the last repetition are replaced
                # (committed on their own), so the open count stays ``size``.
                if rep:
                    for invoice in spare[(rep - 1) * COLD_PAID : rep * COLD_PAID]:
                        engine.track(invoice, now=NOW)
                        open_now.append(invoice)
                    await keeper.commit(engine, [], _publish)
                # Paid ones spread over the open invoices, not just the newest.
                picked = sorted(rng.sample(range(len(open_now)), COLD_PAID), reverse=True)
                paying = [open_now.pop(i) for i in picked]
                raw = rows(ROWS, pays=[i.total for i in paying], pay_every=20, tag=f"c{rep}")
                started = ticks()
                events = engine.ingest([mutation_from_row(row) for row in raw], now=NOW)
                keeper.fetched(started, schedule)
                with Timer() as t:
                    await keeper.commit(engine, events, _publish)
                return t.elapsed

            return run

        variants = {"small": await variant(cfg.small), "large": await variant(cfg.large)}
        times = await interleaved(variants, repeats=cfg.cold_repeats, warmup=1)
    per_row = {name: seconds / ROWS * 1e6 for name, seconds in times.items()}
    return figure(
        f"cold poll commit/new row ({ROWS:,} new, {COLD_PAID} paid), "
        f"{cfg.large:,} vs {cfg.small} open, SQLiteStore",
        per_row["large"],
        "us/row",
        per_row["small"],
        max_ratio=1.2,
    )


# -- 3. create_invoice -------------------------------------------------------------


@asynccontextmanager
async def _running(store: Store) -> AsyncIterator[Reconciler]:
    sandbox = Sandbox(seed=None)
    async with (
        store,
        sandbox.mutation_client() as feed,
        sandbox.gateway_client() as gateway,
    ):
        # ttl 1 h: the first poll at start, then none while the figure runs.
        rec = Reconciler(
            feed, gateway=gateway, store=store, policy=PollPolicy(ttl=3600), lease_ttl=7200
        )
        async with rec:
            yield rec


async def _create(cfg: Config, directory: Path) -> Figure:
    async with AsyncExitStack() as stack:

        async def variant(store: Store) -> Variant:
            rec = await stack.enter_async_context(_running(store))
            made = 0

            async def run(rep: int) -> float:
                nonlocal made
                # Amounts 1,000 apart: the gateway's totals never collide.
                amounts = [10_000 + 1000 * (made + i) for i in range(cfg.create_batch)]
                made += cfg.create_batch
                with Timer() as t:
                    for amount in amounts:
                        await rec.create_invoice(amount)
                return t.elapsed

            return run

        times = await interleaved(
            {
                "sqlite": await variant(_sqlite(directory, "create")),
                "memory": await variant(MemoryStore()),
            },
            repeats=cfg.create_repeats,
            warmup=1,
        )
    rate = {name: cfg.create_batch / seconds for name, seconds in times.items()}
    return figure(
        "create_invoice (in-process sandbox gateway), SQLiteStore vs MemoryStore",
        rate["sqlite"],
        "invoices/s",
        rate["memory"],
    )


# -- 4. database size --------------------------------------------------------------


def _file_bytes(path: Path) -> int:
    # After the last connection closes SQLite checkpoints the WAL and removes it;
    # whatever is left of it still counts.
    return sum(
        os.path.getsize(f"{path}{suffix}")
        for suffix in ("", "-wal")
        if os.path.exists(f"{path}{suffix}")
    )


async def _stored_bytes(path: Path, seed: ReconciliationEngine, rows_: Sequence[Any]) -> int:
    store = SQLiteStore(path)
    async with store:
        keeper, engine = await _kept(store, seed)
        if rows_:
            engine.ingest(rows_, now=NOW)
            await keeper.commit(engine, [], _publish)
    return _file_bytes(path)


def _json_len(data: Any) -> int:
    return len(json.dumps(data, separators=(",", ":")))


async def _sizes(cfg: Config, directory: Path) -> list[Figure]:
    def history_engine() -> ReconciliationEngine:
        # Started after every row: rows are remembered as history, with no events,
        # so the file grows by the remembered keys alone.
        return ReconciliationEngine(started_at=NOW)

    empty = await _stored_bytes(directory / "size-empty.db", engine_with([]), [])
    many: list[Invoice] = invoices(cfg.size_invoices)
    with_invoices = await _stored_bytes(directory / "size-invoices.db", engine_with(many), [])
    invoice_json = sum(_json_len(dump_invoice(i)) for i in many) / len(many)

    raw = rows(cfg.size_rows, tag="sz")
    bare = await _stored_bytes(directory / "size-bare.db", history_engine(), [])
    with_rows = await _stored_bytes(
        directory / "size-rows.db", history_engine(), [mutation_from_row(row) for row in raw]
    )
    return [
        figure(
            f"SQLite bytes/open invoice ({cfg.size_invoices:,} open) vs invoice JSON",
            (with_invoices - empty) / cfg.size_invoices,
            "B",
            invoice_json,
        ),
        figure(
            f"SQLite bytes/remembered row ({cfg.size_rows:,} rows) vs feed JSON/row",
            (with_rows - bare) / cfg.size_rows,
            "B",
            len(body(raw)) / cfg.size_rows,
        ),
    ]


# -- 5. lease and commit on PostgreSQL ----------------------------------------------

#: Where the PostgreSQL figure finds its server (``--postgres DSN`` sets it too).
POSTGRES_ENV = "QRISPAY_TEST_POSTGRES"
_POSTGRES_NAME = "store work/poll (lease, catch-up, fenced commit), PostgresStore vs MemoryStore"


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def _postgres(cfg: Config) -> Figure:
    dsn = os.environ.get(POSTGRES_ENV, "")
    if not dsn:
        print(
            f"stores: no PostgreSQL figure: set {POSTGRES_ENV} or pass --postgres DSN",
            file=sys.stderr,
        )
        return figure(
            f"{_POSTGRES_NAME} (skipped: no {POSTGRES_ENV} / --postgres)",
            math.nan,
            "ms/poll",
            math.nan,
        )
    open_invoices = invoices(OPEN)
    window = rows(ROWS, pays=[i.total for i in open_invoices], pay_every=5, tag="pg")
    answers = Answers([body(window)])
    schedule = Schedule(PollPolicy())
    schema = f"qrispay_bench_{uuid.uuid4().hex[:12]}"
    try:
        async with AsyncExitStack() as stack:

            async def variant(store: Store) -> Variant:
                await stack.enter_async_context(store)
                feed = await stack.enter_async_context(_client(answers))
                keeper, engine = await _kept(store, engine_with(open_invoices))
                ticks = _Ticks()

                async def poll(timer: Timer | None = None) -> None:
                    # Untimed: the fetch and the engine's work, the same for both.
                    started = ticks()
                    batch = await feed.fetch(max_retries=0)
                    events = engine.ingest(batch, now=NOW, rejected=batch.rejected)
                    keeper.fetched(started, schedule)
                    with Timer() as t:
                        # What a polling Reconciler asks of its store per poll:
                        # its lease (only when no commit renewed it lately), the
                        # invoices others stored, then the commit, which renews.
                        if not keeper.lease_fresh():
                            assert await keeper.claim_lease()
                        await keeper.catch_up(engine, _publish)
                        await keeper.commit(engine, events, _publish)
                    if timer is not None:
                        timer.elapsed = t.elapsed

                await poll()  # the poll before: it stored every row of the answer

                async def run(rep: int) -> float:
                    timer = Timer()
                    await poll(timer)
                    return timer.elapsed

                return run

            times = await interleaved(
                {
                    "postgres": await variant(PostgresStore(dsn, schema=schema)),
                    "memory": await variant(MemoryStore()),
                },
                repeats=cfg.repeats,
                warmup=2,
            )
    finally:
        await anyio.to_thread.run_sync(_drop_schema, dsn, schema)
    return figure(_POSTGRES_NAME, times["postgres"] * 1e3, "ms/poll", times["memory"] * 1e3)


async def run(cfg: Config) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="qrispay-bench-") as name:
        directory = Path(name)
        return [
            await _steady(cfg, directory),
            await _cold_commit(cfg, directory),
            await _create(cfg, directory),
            *await _sizes(cfg, directory),
            await _postgres(cfg),
        ]


def main(cfg: Config) -> list[Figure]:
    figures: list[Figure] = anyio.run(run, cfg)
    return figures
