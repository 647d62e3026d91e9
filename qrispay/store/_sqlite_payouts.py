"""The statements of ``SQLiteStore``'s payout methods (``qrispay.payouts``).

Each function that writes runs inside a transaction the caller opened with
``BEGIN IMMEDIATE``, so a check and the write it guards are one atomic step
across processes.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from ..errors import StoreError
from ._base import PAYOUT_STATES, PayoutEntry, from_micros, micros

__all__ = ["claim", "claimed_ids", "entries_in", "settle"]

_COLUMNS = "scope, key, request, state, result, withdraw_id, created_us, updated_us"


def _entry(row: tuple[Any, ...]) -> PayoutEntry:
    scope, key, request, state, result, withdraw_id, created, updated = row
    return PayoutEntry(
        scope, key, request, state, result, withdraw_id, from_micros(created), from_micros(updated)
    )


def claim(
    conn: sqlite3.Connection, scope: str, key: str, request: str, now: datetime
) -> tuple[PayoutEntry, bool]:
    at = micros(now)
    inserted = conn.execute(
        "INSERT INTO payouts (scope, key, request, state, created_us, updated_us) "
        "VALUES (?, ?, ?, 'intent', ?, ?) ON CONFLICT (scope, key) DO NOTHING",
        (scope, key, request, at, at),
    ).rowcount
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM payouts WHERE scope = ? AND key = ?", (scope, key)
    ).fetchone()
    return _entry(row), inserted == 1


def settle(
    conn: sqlite3.Connection,
    scope: str,
    key: str,
    state: str | None,
    result: str | None,
    withdraw_id: str | None,
    now: datetime,
) -> None:
    where = (scope, key)
    found = conn.execute("SELECT 1 FROM payouts WHERE scope = ? AND key = ?", where)
    if found.fetchone() is None:
        raise KeyError(key)
    if state is None:
        conn.execute("DELETE FROM payouts WHERE scope = ? AND key = ?", where)
        return
    if state not in PAYOUT_STATES:
        raise ValueError(f"unknown payout state {state!r}")
    if (
        withdraw_id is not None
        and conn.execute(
            "SELECT 1 FROM payouts WHERE scope = ? AND withdraw_id = ? AND key <> ?",
            (scope, withdraw_id, key),
        ).fetchone()
    ):
        raise StoreError(f"withdrawal {withdraw_id!r} is already claimed by another key")
    conn.execute(
        "UPDATE payouts SET state = ?, result = ?, withdraw_id = ?, updated_us = ? "
        "WHERE scope = ? AND key = ?",
        (state, result, withdraw_id, micros(now), scope, key),
    )


def entries_in(conn: sqlite3.Connection, scope: str, state: str) -> list[PayoutEntry]:
    # rowid breaks ties in claiming order, as MemoryStore's stable sort does.
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM payouts WHERE scope = ? AND state = ? ORDER BY created_us, rowid",
        (scope, state),
    )
    return [_entry(row) for row in rows]


def claimed_ids(conn: sqlite3.Connection, scope: str) -> set[str]:
    rows = conn.execute(
        "SELECT withdraw_id FROM payouts WHERE scope = ? AND withdraw_id IS NOT NULL", (scope,)
    )
    return {withdraw_id for (withdraw_id,) in rows}
