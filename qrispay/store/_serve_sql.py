"""The statements of the HTTP service's tables (idempotency keys, the webhook
outbox), shared by ``SQLiteStore`` and ``PostgresStore``.

Each function runs inside one write transaction the caller opened (SQLite's
``BEGIN IMMEDIATE``, or a PostgreSQL transaction in which ``FOR UPDATE`` locks
the row a check reads), so a check and the write it guards are one atomic
step across processes. ``db`` is a ``sqlite3.Connection`` or a psycopg cursor:
both answer ``execute(sql, params)`` with a cursor. Statements are written with
``?`` marks; ``pg`` turns them into psycopg's ``%s``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from ._base import WEBHOOK_STATES, IdempotencyEntry, Store, WebhookDelivery, from_micros, micros

__all__ = [
    "SQLServeTables",
    "idempotency_claim",
    "idempotency_settle",
    "webhook_attempted",
    "webhook_deliveries",
    "webhook_enqueue",
    "webhook_next",
    "webhook_replay",
]

_KEY = "scope, key, digest, state, status, body, created_us, updated_us"
_DELIVERY = (
    "merchant, endpoint, event_id, seq, state, attempts, next_attempt_us, last_status, "
    "last_error, created_us, updated_us"
)
_T = TypeVar("_T")

# Events added to the outbox per statement: a long backlog is enqueued in steps.
_BATCH = 1000


def _run(db: Any, pg: bool, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return db.execute(sql.replace("?", "%s") if pg else sql, params)


def _entry(row: tuple[Any, ...]) -> IdempotencyEntry:
    scope, key, digest, state, status, body, created, updated = row
    return IdempotencyEntry(
        scope, key, digest, state, status, body, from_micros(created), from_micros(updated)
    )


def _delivery(row: tuple[Any, ...]) -> WebhookDelivery:
    merchant, endpoint, event_id, seq, state, attempts, due, status, error, made, changed = row
    return WebhookDelivery(
        merchant,
        endpoint,
        event_id,
        int(seq),
        state,
        int(attempts),
        from_micros(due),
        status,
        error,
        from_micros(made),
        from_micros(changed),
    )


def idempotency_claim(
    db: Any, pg: bool, scope: str, key: str, digest: str, now: datetime, stale_before: datetime
) -> tuple[IdempotencyEntry, str]:
    at = micros(now)
    inserted = _run(
        db,
        pg,
        f"INSERT INTO idempotency_keys ({_KEY}) VALUES (?, ?, ?, 'pending', NULL, NULL, ?, ?) "
        "ON CONFLICT (scope, key) DO NOTHING",
        (scope, key, digest, at, at),
    ).rowcount
    lock = " FOR UPDATE" if pg else ""
    row = _run(
        db,
        pg,
        f"SELECT {_KEY} FROM idempotency_keys WHERE scope = ? AND key = ?{lock}",
        (scope, key),
    ).fetchone()
    entry = _entry(row)
    if inserted == 1:
        return entry, "new"
    if entry.state == "pending" and entry.digest == digest and entry.updated_at < stale_before:
        _run(
            db,
            pg,
            "UPDATE idempotency_keys SET updated_us = ? WHERE scope = ? AND key = ?",
            (at, scope, key),
        )
        return _entry((*row[:-1], at)), "stale"
    return entry, "held"


def idempotency_settle(
    db: Any, pg: bool, scope: str, key: str, status: int | None, body: str | None, now: datetime
) -> None:
    where = (scope, key)
    if status is None:
        gone = _run(db, pg, "DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", where)
        changed = gone.rowcount
    else:
        changed = _run(
            db,
            pg,
            "UPDATE idempotency_keys SET state = 'done', status = ?, body = ?, updated_us = ? "
            "WHERE scope = ? AND key = ?",
            (status, body, micros(now), *where),
        ).rowcount
    if changed != 1:
        raise KeyError(key)


def webhook_enqueue(db: Any, pg: bool, merchant: str, endpoint: str, now: datetime) -> int:
    _run(
        db,
        pg,
        "INSERT INTO webhook_cursors (merchant, endpoint, seq) VALUES (?, ?, 0) "
        "ON CONFLICT (merchant, endpoint) DO NOTHING",
        (merchant, endpoint),
    )
    lock = " FOR UPDATE" if pg else ""
    (cursor,) = _run(
        db,
        pg,
        f"SELECT seq FROM webhook_cursors WHERE merchant = ? AND endpoint = ?{lock}",
        (merchant, endpoint),
    ).fetchone()
    at = micros(now)
    added = 0
    while True:
        events = _run(
            db,
            pg,
            "SELECT seq, id FROM events WHERE merchant = ? AND seq > ? ORDER BY seq LIMIT ?",
            (merchant, cursor, _BATCH),
        ).fetchall()
        for seq, event_id in events:
            added += _run(
                db,
                pg,
                f"INSERT INTO webhook_deliveries ({_DELIVERY}) "
                "VALUES (?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?, ?) "
                "ON CONFLICT (merchant, endpoint, event_id) DO NOTHING",
                (merchant, endpoint, event_id, seq, at, at, at),
            ).rowcount
            cursor = seq
        if len(events) < _BATCH:
            break
    _run(
        db,
        pg,
        "UPDATE webhook_cursors SET seq = ? WHERE merchant = ? AND endpoint = ?",
        (cursor, merchant, endpoint),
    )
    return int(added)


def webhook_next(
    db: Any, pg: bool, merchant: str, endpoint: str, now: datetime, hold_until: datetime
) -> WebhookDelivery | None:
    lock = " FOR UPDATE" if pg else ""
    row = _run(
        db,
        pg,
        f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE merchant = ? AND endpoint = ? "
        f"AND state = 'pending' ORDER BY seq LIMIT 1{lock}",
        (merchant, endpoint),
    ).fetchone()
    if row is None:
        return None
    head = _delivery(row)
    if head.next_attempt_at <= now:
        _run(
            db,
            pg,
            "UPDATE webhook_deliveries SET next_attempt_us = ? "
            "WHERE merchant = ? AND endpoint = ? AND event_id = ?",
            (micros(hold_until), merchant, endpoint, head.event_id),
        )
    return head


def webhook_attempted(
    db: Any,
    pg: bool,
    merchant: str,
    endpoint: str,
    event_id: str,
    state: str,
    status: int | None,
    error: str | None,
    next_attempt_at: datetime,
    now: datetime,
) -> None:
    if state not in WEBHOOK_STATES:
        raise ValueError(f"unknown delivery state {state!r}")
    changed = _run(
        db,
        pg,
        "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, last_status = ?, "
        "last_error = ?, next_attempt_us = ?, updated_us = ? "
        "WHERE merchant = ? AND endpoint = ? AND event_id = ?",
        (state, status, error, micros(next_attempt_at), micros(now), merchant, endpoint, event_id),
    ).rowcount
    if changed != 1:
        raise KeyError(event_id)


def webhook_deliveries(
    db: Any, pg: bool, merchant: str, state: str | None, limit: int
) -> list[WebhookDelivery]:
    where, params = "merchant = ?", [merchant]
    if state is not None:
        where, params = where + " AND state = ?", [merchant, state]
    rows = _run(
        db,
        pg,
        f"SELECT {_DELIVERY} FROM webhook_deliveries WHERE {where} ORDER BY seq, endpoint LIMIT ?",
        (*params, max(0, limit)),
    ).fetchall()
    return [_delivery(row) for row in rows]


def webhook_replay(db: Any, pg: bool, merchant: str, event_id: str, now: datetime) -> int:
    found = _run(
        db, pg, "SELECT 1 FROM events WHERE merchant = ? AND id = ?", (merchant, event_id)
    ).fetchone()
    if found is None:
        raise KeyError(event_id)
    at = micros(now)
    return int(
        _run(
            db,
            pg,
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_us = ?, "
            "updated_us = ? WHERE merchant = ? AND event_id = ?",
            (at, at, merchant, event_id),
        ).rowcount
    )


class SQLServeTables(Store):
    """The service's methods of an SQL store (a mixin). The store gives
    ``_serve_write`` and ``_serve_read``: run ``work(db)`` in one write (or
    read) transaction in a worker thread."""

    _PG: ClassVar[bool] = False

    async def _serve_write(self, work: Callable[[Any], _T]) -> _T:
        raise NotImplementedError

    async def _serve_read(self, work: Callable[[Any], _T]) -> _T:
        raise NotImplementedError

    async def idempotency_claim(
        self, scope: str, key: str, digest: str, *, now: datetime, stale_before: datetime
    ) -> tuple[IdempotencyEntry, str]:
        return await self._serve_write(
            lambda db: idempotency_claim(db, self._PG, scope, key, digest, now, stale_before)
        )

    async def idempotency_settle(
        self, scope: str, key: str, *, status: int | None, body: str | None, now: datetime
    ) -> None:
        await self._serve_write(
            lambda db: idempotency_settle(db, self._PG, scope, key, status, body, now)
        )

    async def webhook_enqueue(self, merchant: str, endpoint: str, *, now: datetime) -> int:
        return await self._serve_write(
            lambda db: webhook_enqueue(db, self._PG, merchant, endpoint, now)
        )

    async def webhook_next(
        self, merchant: str, endpoint: str, *, now: datetime, hold_until: datetime
    ) -> WebhookDelivery | None:
        return await self._serve_write(
            lambda db: webhook_next(db, self._PG, merchant, endpoint, now, hold_until)
        )

    async def webhook_attempted(
        self,
        merchant: str,
        endpoint: str,
        event_id: str,
        *,
        state: str,
        status: int | None,
        error: str | None,
        next_attempt_at: datetime,
        now: datetime,
    ) -> None:
        await self._serve_write(
            lambda db: webhook_attempted(
                db,
                self._PG,
                merchant,
                endpoint,
                event_id,
                state,
                status,
                error,
                next_attempt_at,
                now,
            )
        )

    async def webhook_deliveries(
        self, merchant: str, *, state: str | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        return await self._serve_read(
            lambda db: webhook_deliveries(db, self._PG, merchant, state, limit)
        )

    async def webhook_replay(self, merchant: str, event_id: str, *, now: datetime) -> int:
        return await self._serve_write(
            lambda db: webhook_replay(db, self._PG, merchant, event_id, now)
        )
