"""The SQLite store's schema: how a file is recognised, and its forward migrations.

A file is ours when its ``qrispay_info`` table says ``application = 'qrispay'``;
its schema version is ``PRAGMA user_version``. ``STEPS[n - 1]`` takes a
database from version ``n - 1`` to ``n`` and runs in one transaction that also
sets the version, so a crash mid-migration leaves the old version intact and
several processes opening an old file at once migrate it exactly once.
Steps are never edited once released: a change is a new step.
"""

from __future__ import annotations

import os
import sqlite3
import time

from ..errors import StoreError, StoreSchemaError

__all__ = ["APPLICATION", "STEPS", "VERSION", "identify", "migrate", "use_wal"]

APPLICATION = "qrispay"

_V1 = (
    "CREATE TABLE qrispay_info (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"INSERT INTO qrispay_info (name, value) VALUES ('application', '{APPLICATION}')",
    "CREATE TABLE merchants (merchant TEXT PRIMARY KEY, meta TEXT NOT NULL)",
    # A rowid table on purpose: an upsert keeps the rowid, so ``load()`` can read
    # records in first-stored order, as MemoryStore's dict does.
    """CREATE TABLE invoices (
        merchant TEXT NOT NULL REFERENCES merchants (merchant),
        invoice_id TEXT NOT NULL,
        total INTEGER NOT NULL CHECK (total > 0),
        state TEXT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (merchant, invoice_id)
    )""",
    """CREATE TABLE seen_rows (
        merchant TEXT NOT NULL REFERENCES merchants (merchant),
        kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
        key TEXT NOT NULL,
        date_us INTEGER NOT NULL,
        PRIMARY KEY (merchant, kind, key)
    ) WITHOUT ROWID""",
    # Forgetting before a horizon walks this index: it costs what is forgotten.
    "CREATE INDEX seen_rows_by_date ON seen_rows (merchant, kind, date_us)",
    # AUTOINCREMENT: a seq is never reused, even after the newest event is gone,
    # so a subscriber's "after seq" position can never point at another event.
    """CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        merchant TEXT NOT NULL REFERENCES merchants (merchant),
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_us INTEGER NOT NULL,
        data TEXT NOT NULL,
        UNIQUE (merchant, id)
    )""",
    """CREATE TABLE payouts (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('intent', 'done', 'unknown')),
        result TEXT,
        withdraw_id TEXT,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
    # One withdrawal is claimed by one intent at most, even across processes.
    """CREATE UNIQUE INDEX payouts_by_withdraw_id ON payouts (scope, withdraw_id)
        WHERE withdraw_id IS NOT NULL""",
)

_V2 = (
    # v1 read a merchant's events (events_after, last_seq) by scanning every
    # merchant's events; this index makes both a range read.
    "CREATE INDEX events_by_merchant ON events (merchant, seq)",
    "CREATE INDEX payouts_by_state ON payouts (scope, state, created_us)",
)

_V3 = (
    # Several workers on one file: the poll lease, and what a worker that does
    # not poll needs to claim a total and to read what others wrote. A record
    # written before v3 holds its total until it is written again: safe, and
    # the next poller rewrites every record once (qrispay/_keeper.py).
    "CREATE TABLE leases (merchant TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "epoch INTEGER NOT NULL, expires_us INTEGER NOT NULL)",
    f"ALTER TABLE invoices ADD COLUMN holds_until_us INTEGER NOT NULL DEFAULT {2**62}",
    "ALTER TABLE invoices ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE merchants ADD COLUMN records_version INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX invoices_by_total ON invoices (merchant, total, holds_until_us)",
    "CREATE INDEX invoices_by_version ON invoices (merchant, version)",
)

_V4 = (
    # The HTTP service (qrispay serve). Idempotency keys keep a digest of their
    # request and the answer, never the request itself.
    """CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        status INTEGER,
        body TEXT,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID""",
    # The webhook outbox follows the event seq with a cursor per endpoint, moved
    # in the transaction that adds the deliveries: a crash between the two is
    # impossible, and no event is skipped or enqueued twice.
    """CREATE TABLE webhook_cursors (
        merchant TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (merchant, endpoint)
    ) WITHOUT ROWID""",
    """CREATE TABLE webhook_deliveries (
        merchant TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        event_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL CHECK (attempts >= 0),
        next_attempt_us INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_us INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        PRIMARY KEY (merchant, endpoint, event_id)
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (merchant, endpoint, state, seq)",
    "CREATE INDEX webhook_deliveries_by_seq ON webhook_deliveries (merchant, seq, endpoint)",
)

STEPS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4)
VERSION = len(STEPS)


def identify(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> int:
    """The schema version of the database behind ``conn``: 0 for an empty one.
    ``StoreError`` if it is not a qrispay store, ``StoreSchemaError`` if it is
    newer than this code. Reads only, so a foreign file is never changed."""
    conn.execute("BEGIN")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        marker = None
        if "qrispay_info" in tables:
            row = conn.execute(
                "SELECT value FROM qrispay_info WHERE name = 'application'"
            ).fetchone()
            marker = row[0] if row else None
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
    if version == 0 and not tables:
        return 0
    if marker != APPLICATION:
        raise StoreError(f"{os.fspath(path)!r} is an SQLite database but not a qrispay store")
    if version > VERSION:
        raise StoreSchemaError(
            f"{os.fspath(path)!r} has store schema version {version}, newer than "
            f"version {VERSION} this qrispay knows: upgrade qrispay"
        )
    if version < 1:
        raise StoreError(f"{os.fspath(path)!r} has a qrispay marker but no schema version")
    return int(version)


def migrate(conn: sqlite3.Connection, target: int = VERSION) -> None:
    """Run every step from the database's version up to ``target``, one
    transaction each. The version is re-read under the write lock, so a step
    another process has just run is skipped rather than run twice."""
    for step_version in range(1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            if current < step_version:
                for statement in STEPS[step_version - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(step_version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL, waiting up to ``timeout`` seconds for other openers.

    The switch needs the file to itself, and SQLite answers "database is
    locked" at once instead of calling the busy handler when another process
    is opening the same new file, so the wait is ours. Once a file is in WAL
    it stays so, and later openers only read the mode.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            # Where WAL is impossible (":memory:") SQLite keeps its own journal,
            # which is slower with several processes but as safe.
            if mode in ("wal", "memory"):
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
