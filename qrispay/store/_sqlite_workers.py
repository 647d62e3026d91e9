"""The parts of ``SQLiteStore`` that several workers on one file rely on: the
poll lease, fencing, claiming totals and reading what others wrote.

Each function runs inside a transaction the caller opened with ``BEGIN
IMMEDIATE``: SQLite then lets no other writer in, so every check and the write
it guards are one atomic step, across processes.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from ..errors import InvoiceStateConflictError, LeaseLostError
from ._base import Lease, from_micros, micros

__all__ = [
    "bump_version",
    "current_version",
    "set_version",
    "check_fence",
    "check_open",
    "claim_invoices",
    "claim_lease",
    "records_since",
    "release_lease",
]

_INSERT_INVOICE = """INSERT INTO invoices
    (merchant, invoice_id, total, state, record, holds_until_us, version)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""


def claim_lease(
    conn: sqlite3.Connection,
    merchant: str,
    holder: str,
    epoch: int | None,
    now: datetime,
    ttl: float,
) -> Lease | None:
    row = conn.execute(
        "SELECT holder, epoch, expires_us FROM leases WHERE merchant = ?", (merchant,)
    ).fetchone()
    now_us = micros(now)
    until = now_us + int(ttl * 1_000_000)
    if row is not None and row[0] == holder and row[1] == epoch:
        new_epoch = row[1]
    elif row is None or row[2] < now_us or row[0] == holder:
        new_epoch = 1 if row is None else row[1] + 1
    else:
        return None
    conn.execute(
        """INSERT INTO leases (merchant, holder, epoch, expires_us) VALUES (?, ?, ?, ?)
        ON CONFLICT (merchant) DO UPDATE
        SET holder = excluded.holder, epoch = excluded.epoch, expires_us = excluded.expires_us""",
        (merchant, holder, new_epoch, until),
    )
    return Lease(holder, new_epoch, from_micros(until))


def release_lease(conn: sqlite3.Connection, merchant: str, holder: str, epoch: int) -> None:
    conn.execute(
        "UPDATE leases SET expires_us = 0 WHERE merchant = ? AND holder = ? AND epoch = ?",
        (merchant, holder, epoch),
    )


def leases(conn: sqlite3.Connection) -> dict[str, Lease]:
    rows = conn.execute("SELECT merchant, holder, epoch, expires_us FROM leases").fetchall()
    return {row[0]: Lease(row[1], row[2], from_micros(row[3])) for row in rows}


def check_fence(
    conn: sqlite3.Connection, merchant: str, fence: tuple[str, int], until_us: int | None
) -> None:
    row = conn.execute(
        "SELECT holder, epoch FROM leases WHERE merchant = ?", (merchant,)
    ).fetchone()
    if row is None or (row[0], row[1]) != fence:
        raise LeaseLostError(f"the poll lease of merchant {merchant!r} is no longer this worker's")
    if until_us is not None:
        # The poll's renewal rides in its commit: a rollback undoes both.
        conn.execute(
            "UPDATE leases SET expires_us = MAX(expires_us, ?) WHERE merchant = ?",
            (until_us, merchant),
        )


def check_open(
    conn: sqlite3.Connection, merchant: str, texts: dict[str, tuple[str, str, int] | None]
) -> None:
    """``texts``: what each id is to be written as; already stored so, it is no
    conflict (a retry of a commit whose answer was lost)."""
    for invoice_id in sorted(texts):
        row = conn.execute(
            "SELECT state, record, holds_until_us FROM invoices"
            " WHERE merchant = ? AND invoice_id = ?",
            (merchant, invoice_id),
        ).fetchone()
        if row is not None and row[0] != "open" and tuple(row) != texts[invoice_id]:
            raise InvoiceStateConflictError(
                f"invoice {invoice_id!r} was closed by another worker first"
            )


def current_version(conn: sqlite3.Connection, merchant: str) -> int:
    row = conn.execute(
        "SELECT records_version FROM merchants WHERE merchant = ?", (merchant,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def set_version(conn: sqlite3.Connection, merchant: str, version: int) -> None:
    conn.execute("UPDATE merchants SET records_version = ? WHERE merchant = ?", (version, merchant))


def bump_version(conn: sqlite3.Connection, merchant: str) -> int:
    """The next records version of ``merchant`` (its row must exist)."""
    conn.execute(
        "UPDATE merchants SET records_version = records_version + 1 WHERE merchant = ?",
        (merchant,),
    )
    (version,) = conn.execute(
        "SELECT records_version FROM merchants WHERE merchant = ?", (merchant,)
    ).fetchone()
    return int(version)


def claim_invoices(
    conn: sqlite3.Connection,
    merchant: str,
    claims: list[tuple[str, int, str, str, int]],
    now: datetime,
) -> dict[str, str]:
    conn.execute(
        "INSERT INTO merchants (merchant, meta) VALUES (?, '{}') ON CONFLICT DO NOTHING",
        (merchant,),
    )
    at = micros(now)
    refused: dict[str, str] = {}
    accepted: list[tuple[Any, ...]] = []
    taken: dict[int, str] = {}
    for invoice_id, total, status, text, holds in claims:
        known = conn.execute(
            "SELECT 1 FROM invoices WHERE merchant = ? AND invoice_id = ?", (merchant, invoice_id)
        ).fetchone()
        if known is not None:
            refused[invoice_id] = invoice_id
            continue
        holder = taken.get(total)
        if holder is None:
            row = conn.execute(
                """SELECT invoice_id FROM invoices
                WHERE merchant = ? AND total = ? AND holds_until_us >= ? LIMIT 1""",
                (merchant, total, at),
            ).fetchone()
            holder = None if row is None else row[0]
        if holder is not None:
            refused[invoice_id] = holder
            continue
        taken[total] = invoice_id
        accepted.append((invoice_id, total, status, text, holds))
    if accepted:
        version = bump_version(conn, merchant)
        conn.executemany(_INSERT_INVOICE, [(merchant, *claim, version) for claim in accepted])
    return refused


def records_since(conn: sqlite3.Connection, merchant: str, version: int) -> tuple[list[str], int]:
    row = conn.execute(
        "SELECT records_version FROM merchants WHERE merchant = ?", (merchant,)
    ).fetchone()
    if row is None:
        return [], 0
    records = [
        text
        for (text,) in conn.execute(
            "SELECT record FROM invoices WHERE merchant = ? AND version > ? ORDER BY version",
            (merchant, version),
        )
    ]
    return records, int(row[0])
