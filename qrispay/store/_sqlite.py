"""``SQLiteStore``: the store contract in one SQLite file on disk.

It behaves exactly like ``MemoryStore``, method by method, but survives the
process. Several processes on one host may share the file: WAL lets readers
run beside the one writer, every write is a ``BEGIN IMMEDIATE`` transaction
(so writers queue on the file lock, up to ``busy_timeout``, instead of failing
mid-transaction) and ``synchronous=FULL`` makes a returned commit durable
across a power cut. WAL needs shared memory, so not on a network filesystem.

sqlite3 blocks, so every call runs in a worker thread (asyncio and trio alike),
one at a time per store: the store owns one connection, and a connection runs
one transaction at a time.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ..errors import StoreError
from . import _sqlite_payouts as payouts
from . import _sqlite_schema as schema
from . import _sqlite_workers as workers
from ._base import (
    Changes,
    Lease,
    MerchantState,
    PayoutEntry,
    SeededMeanwhile,
    Store,
    StoredEvent,
    from_micros,
    micros,
    prepare,
    written,
)
from ._serve_sql import SQLServeTables

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_EVENT = "seq, id, kind, created_us, data"

# The WHERE of each DO UPDATE keeps an unchanged row unwritten: a poll that
# changed nothing about an invoice costs a read, not a page write.
_UPSERT_MERCHANT = """INSERT INTO merchants (merchant, meta) VALUES (?, ?)
    ON CONFLICT (merchant) DO UPDATE SET meta = excluded.meta
    WHERE meta IS NOT excluded.meta"""
_UPSERT_INVOICE = """INSERT INTO invoices
    (merchant, invoice_id, total, state, record, holds_until_us, version)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (merchant, invoice_id) DO UPDATE
    SET total = excluded.total, state = excluded.state, record = excluded.record,
        holds_until_us = excluded.holds_until_us, version = excluded.version
    WHERE total IS NOT excluded.total OR state IS NOT excluded.state
        OR record IS NOT excluded.record OR holds_until_us IS NOT excluded.holds_until_us"""
# ON CONFLICT DO NOTHING rather than INSERT OR IGNORE: OR IGNORE would also
# swallow a NOT NULL or CHECK violation, and a bad row must fail the commit.
_ADD_KEY = """INSERT INTO seen_rows (merchant, kind, key, date_us) VALUES (?, ?, ?, ?)
    ON CONFLICT (merchant, kind, key) DO NOTHING"""
_FORGET_KEYS = "DELETE FROM seen_rows WHERE merchant = ? AND kind = ? AND date_us < ?"
_ADD_EVENT = """INSERT INTO events (seq, merchant, id, kind, created_us, data)
    VALUES (?, ?, ?, ?, ?, ?)"""
# Ids per lookup: well under SQLite's limit on bound parameters.
_CHUNK = 500


def _event(row: tuple[Any, ...]) -> StoredEvent:
    seq, event_id, kind, created, data = row
    return StoredEvent(seq, event_id, kind, from_micros(created), json.loads(data))


def _write(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    """``work`` in one write transaction: committed if it returns, rolled back
    if anything at all raises (the error is then raised unchanged)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls some errors back by itself (a full disk, say); a second
        # ROLLBACK would then raise and hide the first error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _read(conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
    """``work`` in one read transaction: one snapshot, even while another
    process commits."""
    conn.execute("BEGIN")
    try:
        return work()
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


class SQLiteStore(SQLServeTables, Store):
    """A store in the SQLite file at ``path`` (created if missing; see the
    module's docstring). ``busy_timeout`` is how long, in seconds, a call waits
    for another process's write before it fails with ``StoreError``."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"<SQLiteStore path={self._path!r}>"

    # -- connection -----------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        # Not abandoned on cancellation: a started transaction always ends
        # (committed or rolled back) before the caller is cancelled.
        return await anyio.to_thread.run_sync(self._call, work, limiter=self._limiter)

    async def _serve_write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(lambda conn: _write(conn, lambda: work(conn)))

    async def _serve_read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(lambda conn: _read(conn, lambda: work(conn)))

    def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connection()
        try:
            return work(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self._path!r}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit: BEGIN ... COMMIT
                check_same_thread=False,  # worker threads take turns via the limiter
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self._path!r} as a qrispay store: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(0, int(self._busy_timeout * 1000))}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            # Identified before anything is written, so a foreign file is left as it was.
            version = schema.identify(conn, self._path)
            schema.use_wal(conn, self._busy_timeout)
            if version < schema.VERSION:
                schema.migrate(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open {self._path!r} as a qrispay store: {exc}") from exc
            raise
        self._conn = conn
        return conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        # Shielded: a cancelled shutdown must still release the file.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close, limiter=self._limiter)

    # -- merchants and events -------------------------------------------------------

    async def load(self, merchant: str) -> MerchantState | None:
        def load(conn: sqlite3.Connection) -> MerchantState | None:
            row = conn.execute("SELECT meta FROM merchants WHERE merchant = ?", (merchant,))
            found = row.fetchone()
            if found is None:
                return None
            # rowid order is first-stored order, as MemoryStore's records keep.
            records = [
                text
                for (text,) in conn.execute(
                    "SELECT record FROM invoices WHERE merchant = ? ORDER BY rowid", (merchant,)
                )
            ]
            memories: tuple[list[tuple[str, int]], ...] = ([], [])
            keys = conn.execute(
                "SELECT kind, key, date_us FROM seen_rows WHERE merchant = ?", (merchant,)
            )
            for kind, key, at in keys:
                memories[kind].append((key, at))
            (last,) = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM events WHERE merchant = ?", (merchant,)
            ).fetchone()
            return MerchantState(
                meta=json.loads(found[0]),
                records=records,
                seen=memories[0],
                rejected=memories[1],
                last_seq=last,
            )

        return await self._run(lambda conn: _read(conn, lambda: load(conn)))

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        def commit(conn: sqlite3.Connection) -> list[StoredEvent]:
            meta_text, datas = prepare(changes)
            return _write(conn, lambda: self._apply(conn, merchant, changes, meta_text, datas))

        return await self._run(commit)

    @staticmethod
    def _apply(
        conn: sqlite3.Connection,
        merchant: str,
        changes: Changes,
        meta_text: str | None,
        datas: list[Any],
    ) -> list[StoredEvent]:
        if changes.fence is not None:
            workers.check_fence(conn, merchant, changes.fence, changes.lease_until)
        if changes.if_open:
            workers.check_open(conn, merchant, written(changes))
        # Each step touches only what changed: no statement reads or rewrites a
        # merchant's whole state, so a commit costs what it commits.
        if changes.first:
            found = conn.execute(
                "SELECT meta FROM merchants WHERE merchant = ?", (merchant,)
            ).fetchone()
            if found is not None and json.loads(found[0]):
                raise SeededMeanwhile(f"merchant {merchant!r} was stored meanwhile")
        if meta_text is None:
            conn.execute(
                "INSERT INTO merchants (merchant, meta) VALUES (?, '{}') ON CONFLICT DO NOTHING",
                (merchant,),
            )
        else:
            conn.execute(_UPSERT_MERCHANT, (merchant, meta_text))
        if changes.records:
            # The version moves only when a record did: an unchanged poll writes nothing.
            version = workers.current_version(conn, merchant) + 1
            before = conn.total_changes
            conn.executemany(
                _UPSERT_INVOICE,
                [(merchant, *record, version) for record in changes.records],
            )
            if conn.total_changes != before:
                workers.set_version(conn, merchant, version)
        if changes.forgotten:
            conn.executemany(
                "DELETE FROM invoices WHERE merchant = ? AND invoice_id = ?",
                [(merchant, invoice_id) for invoice_id in changes.forgotten],
            )
        keys = [(merchant, 0, key, at) for key, at in changes.seen]
        keys += [(merchant, 1, key, at) for key, at in changes.rejected]
        if keys:
            conn.executemany(_ADD_KEY, keys)
        if changes.horizon is not None:
            # One range per kind on the date index, so the plan never scans.
            horizon = changes.horizon
            conn.executemany(_FORGET_KEYS, [(merchant, 0, horizon), (merchant, 1, horizon)])
        if not changes.events:
            return []
        # The first of two events with one id is the one stored, as in MemoryStore.
        first: dict[str, tuple[str, str, Any]] = {}
        for (event_id, kind, text), data in zip(changes.events, datas, strict=True):
            first.setdefault(event_id, (kind, text, data))
        # Ids already stored are found first rather than left to ON CONFLICT: a
        # refused insert still uses up an AUTOINCREMENT seq, and seqs run
        # without gaps, as in MemoryStore.
        ids = list(first)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            known = conn.execute(
                f"SELECT id FROM events WHERE merchant = ? AND id IN ({marks})", (merchant, *chunk)
            )
            for (event_id,) in known:
                del first[event_id]
        if not first:
            return []
        # Under BEGIN IMMEDIATE no one else writes, so the next seqs are ours.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        base = (row[0] if row else 0) + 1
        created = micros(changes.committed_at)
        conn.executemany(
            _ADD_EVENT,
            [
                (base + n, merchant, event_id, kind, created, text)
                for n, (event_id, (kind, text, _data)) in enumerate(first.items())
            ],
        )
        at = from_micros(created)
        return [
            StoredEvent(base + n, event_id, kind, at, data)
            for n, (event_id, (kind, _text, data)) in enumerate(first.items())
        ]

    async def events_after(self, merchant: str, seq: int, limit: int) -> list[StoredEvent]:
        def events_after(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                f"SELECT {_EVENT} FROM events WHERE merchant = ? AND seq > ? ORDER BY seq LIMIT ?",
                (merchant, seq, max(0, limit)),
            )
            return [_event(row) for row in rows]

        return await self._run(events_after)

    async def event_seq(self, merchant: str, event_id: str) -> int:
        def event_seq(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT seq FROM events WHERE merchant = ? AND id = ?", (merchant, event_id)
            ).fetchone()
            if row is None:
                raise KeyError(event_id)
            return int(row[0])

        return await self._run(event_seq)

    # -- payouts: the statements are in _sqlite_payouts ---------------------------

    async def payout_claim(
        self, scope: str, key: str, request: str, now: datetime
    ) -> tuple[PayoutEntry, bool]:
        return await self._run(
            lambda conn: _write(conn, lambda: payouts.claim(conn, scope, key, request, now))
        )

    async def payout_settle(
        self,
        scope: str,
        key: str,
        *,
        state: str | None,
        result: str | None,
        withdraw_id: str | None,
        now: datetime,
    ) -> None:
        def settle(conn: sqlite3.Connection) -> None:
            payouts.settle(conn, scope, key, state, result, withdraw_id, now)

        await self._run(lambda conn: _write(conn, lambda: settle(conn)))

    async def payouts_in(self, scope: str, state: str) -> list[PayoutEntry]:
        return await self._run(lambda conn: payouts.entries_in(conn, scope, state))

    async def payout_claimed_ids(self, scope: str) -> set[str]:
        return await self._run(lambda conn: payouts.claimed_ids(conn, scope))

    # -- several workers ------------------------------------------------------------

    async def claim_lease(
        self, merchant: str, holder: str, epoch: int | None, *, now: datetime, ttl: float
    ) -> Lease | None:
        return await self._run(
            lambda conn: _write(
                conn, lambda: workers.claim_lease(conn, merchant, holder, epoch, now, ttl)
            )
        )

    async def release_lease(self, merchant: str, holder: str, epoch: int) -> None:
        await self._run(
            lambda conn: _write(conn, lambda: workers.release_lease(conn, merchant, holder, epoch))
        )

    async def leases(self) -> dict[str, Lease]:
        return await self._run(lambda conn: _read(conn, lambda: workers.leases(conn)))

    async def claim_invoices(
        self, merchant: str, claims: list[tuple[str, int, str, str, int]], *, now: datetime
    ) -> dict[str, str]:
        for invoice_id, total, _status, _text, _holds in claims:
            if total <= 0:
                raise ValueError(f"invoice {invoice_id!r} has total {total}; a total is positive")
        return await self._run(
            lambda conn: _write(conn, lambda: workers.claim_invoices(conn, merchant, claims, now))
        )

    async def records_since(self, merchant: str, version: int) -> tuple[list[str], int]:
        return await self._run(
            lambda conn: _read(conn, lambda: workers.records_since(conn, merchant, version))
        )
