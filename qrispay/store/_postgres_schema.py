"""The PostgreSQL store's schema: how a schema is recognised, and its forward
migrations.

A store lives in one PostgreSQL schema (``qrispay`` unless told otherwise). It
is ours when its ``qrispay_info`` table says ``application = 'qrispay'``; the
same table holds the schema version. ``STEPS[n - 1]`` takes a store from
version ``n - 1`` to ``n``. Every step still missing runs in one transaction
that also sets the version, under a transaction-scoped advisory lock: several
processes opening an old or new store at once migrate it exactly once, and a
crash mid-migration leaves the old version intact (PostgreSQL's DDL is
transactional). Steps are never edited once released: a change is a new step.

Times are integer UTC microseconds (``bigint``), as in the SQLite store, never
``timestamptz``: they come from the Reconciler's clock, which may be virtual,
so the database's own clock is never used, and every store holds the same
values.
"""

from __future__ import annotations

from typing import Any

from ..errors import StoreError, StoreSchemaError

__all__ = ["APPLICATION", "STEPS", "VERSION", "identify", "migrate"]

APPLICATION = "qrispay"

# The first key of the advisory lock that guards migrations (the second is the
# schema name's hash): "qris" in ASCII, so other applications' locks are unlikely
# to collide with it.
_LOCK_CLASS = 0x71726973

_V1 = (
    "CREATE TABLE qrispay_info (name text PRIMARY KEY, value text NOT NULL)",
    f"INSERT INTO qrispay_info (name, value) VALUES ('application', '{APPLICATION}'),"
    " ('version', '0')",
    # The event seq counter: one row, locked by every commit that adds events
    # until it commits. A sequence would be simpler but leaves gaps on rollback,
    # and hands out seqs in start order rather than commit order: a reader could
    # then pass a seq whose transaction commits later, and never see its event.
    "CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL CHECK (value >= 0))",
    "INSERT INTO counters (name, value) VALUES ('events', 0)",
    # The merchant row is each merchant's write lock (SELECT ... FOR UPDATE), so
    # records_version moves as under SQLite's single writer.
    """CREATE TABLE merchants (
        merchant text PRIMARY KEY,
        meta text NOT NULL,
        records_version bigint NOT NULL DEFAULT 0
    )""",
    # pos: first-stored order for load(); an upsert keeps the row, so its pos.
    """CREATE TABLE invoices (
        merchant text NOT NULL REFERENCES merchants (merchant),
        invoice_id text NOT NULL,
        total bigint NOT NULL CHECK (total > 0),
        state text NOT NULL,
        record text NOT NULL,
        holds_until_us bigint NOT NULL,
        version bigint NOT NULL,
        pos bigint GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (merchant, invoice_id)
    )""",
    "CREATE INDEX invoices_by_pos ON invoices (merchant, pos)",
    "CREATE INDEX invoices_by_version ON invoices (merchant, version, pos)",
    # One holder per total: the invoice holding it longest, kept in step with
    # the invoices by every commit, and claimed by claim_invoices only after the
    # last holder's hold lapsed. The primary key makes a second holder impossible.
    """CREATE TABLE totals (
        merchant text NOT NULL REFERENCES merchants (merchant),
        total bigint NOT NULL CHECK (total > 0),
        invoice_id text NOT NULL,
        holds_until_us bigint NOT NULL,
        PRIMARY KEY (merchant, total)
    )""",
    """CREATE TABLE seen_rows (
        merchant text NOT NULL REFERENCES merchants (merchant),
        kind smallint NOT NULL CHECK (kind IN (0, 1)),
        key text NOT NULL,
        date_us bigint NOT NULL,
        PRIMARY KEY (merchant, kind, key)
    )""",
    # Forgetting before a horizon walks this index: it costs what is forgotten.
    "CREATE INDEX seen_rows_by_date ON seen_rows (merchant, date_us)",
    """CREATE TABLE events (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        merchant text NOT NULL REFERENCES merchants (merchant),
        id text NOT NULL,
        kind text NOT NULL,
        created_us bigint NOT NULL,
        data text NOT NULL,
        UNIQUE (merchant, id)
    )""",
    "CREATE INDEX events_by_merchant ON events (merchant, seq)",
    # No foreign key to merchants: a lease may be taken before anything is stored.
    """CREATE TABLE leases (
        merchant text PRIMARY KEY,
        holder text NOT NULL,
        epoch bigint NOT NULL CHECK (epoch > 0),
        expires_us bigint NOT NULL
    )""",
    """CREATE TABLE payouts (
        scope text NOT NULL,
        key text NOT NULL,
        request text NOT NULL,
        state text NOT NULL CHECK (state IN ('intent', 'done', 'unknown')),
        result text,
        withdraw_id text,
        created_us bigint NOT NULL,
        updated_us bigint NOT NULL,
        pos bigint GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (scope, key)
    )""",
    # One withdrawal is claimed by one intent at most, even across processes.
    """CREATE UNIQUE INDEX payouts_by_withdraw_id ON payouts (scope, withdraw_id)
        WHERE withdraw_id IS NOT NULL""",
    "CREATE INDEX payouts_by_state ON payouts (scope, state, created_us, pos)",
)

_V2 = (
    # The HTTP service (qrispay serve). Idempotency keys keep a digest of their
    # request and the answer, never the request itself.
    """CREATE TABLE idempotency_keys (
        scope text NOT NULL,
        key text NOT NULL,
        digest text NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'done')),
        status integer,
        body text,
        created_us bigint NOT NULL,
        updated_us bigint NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
    # The webhook outbox follows the event seq with a cursor per endpoint, moved
    # (its row locked) in the transaction that adds the deliveries: no event is
    # skipped or enqueued twice, whatever crashes and however many instances run.
    """CREATE TABLE webhook_cursors (
        merchant text NOT NULL,
        endpoint text NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY (merchant, endpoint)
    )""",
    """CREATE TABLE webhook_deliveries (
        merchant text NOT NULL,
        endpoint text NOT NULL,
        event_id text NOT NULL,
        seq bigint NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts integer NOT NULL CHECK (attempts >= 0),
        next_attempt_us bigint NOT NULL,
        last_status integer,
        last_error text,
        created_us bigint NOT NULL,
        updated_us bigint NOT NULL,
        PRIMARY KEY (merchant, endpoint, event_id)
    )""",
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (merchant, endpoint, state, seq)",
    "CREATE INDEX webhook_deliveries_by_seq ON webhook_deliveries (merchant, seq, endpoint)",
)

STEPS: tuple[tuple[str, ...], ...] = (_V1, _V2)
VERSION = len(STEPS)


def _read_version(cur: Any, schema: str, where: str) -> int:
    """The version of the store in ``schema``: 0 for a missing or empty schema.
    ``StoreError`` if it holds something else, ``StoreSchemaError`` if newer than
    this code. Reads only, so a foreign schema is never changed."""
    cur.execute(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
        (schema,),
    )
    tables = {row[0] for row in cur.fetchall()}
    if not tables:
        return 0
    info: dict[str, str] = {}
    if "qrispay_info" in tables:
        cur.execute(
            _qualified("SELECT name, value FROM {}.qrispay_info", schema),
        )
        info = {name: value for name, value in cur.fetchall()}
    if info.get("application") != APPLICATION:
        raise StoreError(f"{where} holds tables but is not a qrispay store")
    try:
        version = int(info.get("version", ""))
    except ValueError:
        raise StoreError(f"{where} has a qrispay marker but no schema version") from None
    if version > VERSION:
        raise StoreSchemaError(
            f"{where} has store schema version {version}, newer than "
            f"version {VERSION} this qrispay knows: upgrade qrispay"
        )
    return version


def _qualified(template: str, schema: str) -> Any:
    from psycopg import sql

    return sql.SQL(template).format(sql.Identifier(schema))


def identify(conn: Any, schema: str, where: str) -> int:
    """The schema version of the store (see ``_read_version``), in a read-only
    transaction of its own."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        return _read_version(cur, schema, where)


def migrate(conn: Any, schema: str, where: str, target: int | None = None) -> None:
    """Bring the store in ``schema`` up to ``target``, every missing step in one
    transaction. The version is read again under the advisory lock, so steps
    another process has just run are skipped rather than run twice."""
    target = VERSION if target is None else target
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, schema))
        current = _read_version(cur, schema, where)
        if current >= target:
            return
        cur.execute(_qualified("CREATE SCHEMA IF NOT EXISTS {}", schema))
        # Unqualified names in the steps are the store's own: the connection's
        # search path is this schema alone (pg_catalog is always searched first).
        cur.execute(_qualified("SET LOCAL search_path TO {}", schema))
        for step_version in range(current + 1, target + 1):
            for statement in STEPS[step_version - 1]:
                cur.execute(statement)
        cur.execute(
            "UPDATE qrispay_info SET value = %s WHERE name = 'version'", (str(int(target)),)
        )
