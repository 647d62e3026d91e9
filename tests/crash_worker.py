"""One worker process of the crash tests (tests/test_crash.py), made to be killed.

It runs a Reconciler on a store against a ``qrispay sandbox`` on loopback,
creates invoices, and runs a durable consumer: every event it handles is
appended to ``events-<worker>.jsonl`` and only then its id to
``cursor-<worker>`` (handle, then remember), each write fsynced, so that a
SIGKILL at any instant leaves at worst an event handled twice, never one
skipped. On SIGUSR1 it reads ``arm-<worker>`` and SIGKILLs itself soon after
at a point a timer in the parent cannot aim at: ``K:N``, in the middle of a
store transaction; ``consumer``, between handling an event and remembering it.

Every file it writes is a log of JSON lines in ``--dir``; the parent reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import anyio

import qrispay
from qrispay import (
    GatewayClient,
    MutationClient,
    PollPolicy,
    QrispayError,
    Reconciler,
    ReconciliationEngine,
)
from qrispay.events import Event
from qrispay.models import MutationBatch
from qrispay.store import SQLiteStore, Store
from qrispay.store import _sqlite as sqlite_store

_T = TypeVar("_T")

#: Invoice amounts: few, so that the sandbox hands the same total out again once
#: an invoice is closed, and the Reconciler must refuse it while it is reserved.
AMOUNTS = (10_000, 10_000, 15_000, 20_000, 25_000)


def append(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, on disk before this returns (a SIGKILL may come next)."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def repair(path: Path) -> None:
    """Cut a line that a kill left half written, so the next append starts clean."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as file:
            file.truncate(data.rfind(b"\n") + 1)


def last_id(path: Path) -> str:
    if not path.exists():
        return ""  # nothing handled yet: replay everything stored
    lines = path.read_text().splitlines()
    return str(json.loads(lines[-1])["id"]) if lines else ""


def describe(event: Event, worker: str) -> dict[str, Any]:
    invoice = getattr(event, "invoice", None)
    mutation = getattr(event, "mutation", None)
    return {
        "id": event.id,
        "kind": event.kind,
        "invoice": None if invoice is None else invoice.invoice_id,
        "key": None if mutation is None else mutation.key,
        "amount": None if mutation is None else mutation.amount,
        "source": getattr(event, "source", None),
        "worker": worker,
        "at": time.time(),
    }


def die_in_commit(after: int, ops: int, marker: Path, worker: str) -> None:
    """SIGKILL this process inside a store write transaction: from the ``after``-th
    commit or invoice claim on, after ``ops`` SQLite VM steps counted across them,
    which may fall anywhere from BEGIN IMMEDIATE to the end of COMMIT."""
    original = sqlite_store._write
    started = 0
    steps = 0

    def write(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
        nonlocal started
        # Lease renewals are left alone: they come every second, and a kill there
        # is no different from a timed kill between commits.
        name = getattr(work, "__qualname__", "")
        if not name.startswith(("SQLiteStore.commit", "SQLiteStore.claim_invoices")):
            return original(conn, work)
        started += 1
        if started < after:
            return original(conn, work)

        def step() -> int:
            nonlocal steps
            steps += 1
            if steps >= ops:
                append(marker, {"worker": worker, "in": name.split(".")[1], "step": ops})
                os.kill(os.getpid(), signal.SIGKILL)
            return 0

        conn.set_progress_handler(step, 1)
        try:
            return original(conn, work)
        finally:
            conn.set_progress_handler(None, 1)

    sqlite_store._write = write


class CountedFeed(MutationClient):
    """Notes the start of every fetch, across processes, to check the cache window."""

    log: Path
    worker: str

    async def fetch(self, *args: Any, **kwargs: Any) -> MutationBatch:
        append(self.log, {"worker": self.worker, "at": time.time()})
        return await super().fetch(*args, **kwargs)


def open_store(args: argparse.Namespace) -> Store:
    if args.postgres:
        # The Postgres store is an extra and may not be built yet.
        from qrispay.store import PostgresStore  # type: ignore[attr-defined]

        store: Store = PostgresStore(args.postgres, schema=args.schema)
        return store
    return SQLiteStore(args.db)


async def main(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    me = args.worker_id
    events_log, cursor = out / f"events-{me}.jsonl", out / f"cursor-{me}"
    invoices_log, status = out / f"invoices-{me}.jsonl", out / f"status-{me}.jsonl"
    for path in (events_log, cursor, invoices_log, status, out / "fetches.jsonl"):
        repair(path)
    between = False

    def arm(*_: object) -> None:
        nonlocal between
        order = (out / f"arm-{me}").read_text()
        if order == "consumer":
            between = True
            return
        after, ops = (int(part) for part in order.split(":"))
        die_in_commit(after, ops, out / "in-commit.jsonl", me)

    signal.signal(signal.SIGUSR1, arm)
    env = os.environ
    ttl = args.ttl
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(args))
        gateway = await stack.enter_async_context(
            GatewayClient(env["QRISPAY_API_KEY"], base_url=env["QRISPAY_GATEWAY_URL"])
        )
        feed = CountedFeed(
            env["QRISPAY_AUTH"],
            env["QRISPAY_MERCHANT"],
            env["QRISPAY_TOKEN"],
            base_url=env["QRISPAY_FEED_URL"],
        )
        feed.log, feed.worker = out / "fetches.jsonl", me
        await stack.enter_async_context(feed)
        now = datetime.now(timezone.utc)
        rec = Reconciler(
            feed,
            gateway=gateway,
            store=store,
            worker_id=me,
            lease_ttl=args.lease_ttl,
            policy=PollPolicy(ttl=ttl, margin=0.1, idle_interval=ttl + 0.1, max_backoff=2.0),
            # Only seeds an empty store: the skew is the first worker's, kept there.
            engine=ReconciliationEngine(
                started_at=now,
                skew=timedelta(seconds=args.skew),
                # Short, so that totals come free again and are handed out anew
                # within the run (the sandbox gives the smallest free code).
                late_grace=timedelta(seconds=args.late_grace),
            ),
        )
        subscription = rec.events(after=last_id(cursor))
        rng = random.Random(f"{args.seed}:{me}:{args.life}")

        async def create() -> None:
            while args.create_every > 0:
                await anyio.sleep(rng.uniform(0.5, 1.5) * args.create_every)
                if (out / "no-create").exists():
                    return
                try:
                    invoice = await rec.create_invoice(rng.choice(AMOUNTS))
                except QrispayError as error:
                    append(status, {"error": f"{type(error).__name__}: {error}"})
                    continue
                append(
                    invoices_log,
                    {
                        "invoice": invoice.invoice_id,
                        "total": invoice.total,
                        "expired_at": invoice.expired_at.timestamp(),
                        "worker": me,
                        "at": time.time(),
                    },
                )

        async def stop_when_told(scope: anyio.CancelScope) -> None:
            # Told by a file that another process makes: nothing to await but time.
            while not ((out / "stop").exists() or (out / f"stop-{me}").exists()):  # noqa: ASYNC110
                await anyio.sleep(0.1)
            scope.cancel()

        async with rec, subscription as events, anyio.create_task_group() as tg:
            # The parent checks that this is the checkout's qrispay under test.
            append(status, {"ready": args.life, "at": time.time(), "qrispay": qrispay.__file__})
            tg.start_soon(create)
            tg.start_soon(stop_when_told, tg.cancel_scope)
            async for event in events:
                append(events_log, describe(event, me))
                if between:
                    append(out / "between.jsonl", {"worker": me, "id": event.id})
                    os.kill(os.getpid(), signal.SIGKILL)
                append(cursor, {"id": event.id})
    append(status, {"stopped": args.life, "at": time.time()})


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="a SQLite file")
    where.add_argument("--postgres", help="a Postgres DSN")
    p.add_argument("--schema", default="qrispay", help="the Postgres store's schema")
    p.add_argument("--dir", required=True, help="where the logs go")
    p.add_argument("--worker-id", required=True)
    p.add_argument("--life", type=int, default=0, help="how many times it was started before")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ttl", type=float, default=1.0, help="the sandbox's feed cache")
    p.add_argument("--skew", type=float, default=2.0)
    p.add_argument("--late-grace", type=float, default=15.0)
    p.add_argument("--lease-ttl", type=float, default=3.0)
    p.add_argument("--create-every", type=float, default=0.0, help="0: create no invoice")
    return p.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse(sys.argv[1:]))
