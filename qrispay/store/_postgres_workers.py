"""The writes of ``PostgresStore``: one poll's commit, the poll lease, claiming
totals, and reading what others wrote.

Each function runs on a cursor inside a transaction the caller opened (READ
COMMITTED). A write that must not interleave with another worker's takes row
locks first, always in one order, so two transactions never wait on each
other in a cycle: the merchant row (every write of one merchant queues on it,
as under SQLite's single writer), then the lease row (FOR SHARE: a takeover
waits for a fenced commit to end), then invoice and total rows, then the
event seq counter (last, so it is held for the shortest time: it serialises
every commit that adds events, in every merchant).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..errors import InvoiceStateConflictError, LeaseLostError, StoreError
from ._base import (
    PAYOUT_STATES,
    Changes,
    Lease,
    SeededMeanwhile,
    StoredEvent,
    from_micros,
    micros,
    written,
)

__all__ = [
    "apply",
    "claim_invoices",
    "claim_lease",
    "lock_merchant",
    "payout_settle",
    "records_since",
    "release_lease",
]

Record = tuple[str, int, str, str, int]

# RETURNING gives only the rows inserted or really updated: the WHERE of DO
# UPDATE leaves an unchanged invoice unwritten, so a poll that changed nothing
# costs a read, not a row version.
_UPSERT_INVOICES = """INSERT INTO invoices AS i
    (merchant, invoice_id, total, state, record, holds_until_us, version)
    SELECT %s, r.invoice_id, r.total, r.state, r.record, r.holds, %s
    FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[])
        WITH ORDINALITY AS r (invoice_id, total, state, record, holds, n)
    ORDER BY r.n
    ON CONFLICT (merchant, invoice_id) DO UPDATE
    SET total = excluded.total, state = excluded.state, record = excluded.record,
        holds_until_us = excluded.holds_until_us, version = excluded.version
    WHERE (i.total, i.state, i.record, i.holds_until_us)
        IS DISTINCT FROM (excluded.total, excluded.state, excluded.record, excluded.holds_until_us)
    RETURNING i.total"""
# The totals table follows the invoices: for each total touched, the invoice
# that holds it longest (ties: the first stored), or no row when none is left.
_REFRESH_TOTALS = """WITH best AS (
        SELECT DISTINCT ON (total) total, invoice_id, holds_until_us FROM invoices
        WHERE merchant = %(m)s AND total = ANY(%(totals)s::bigint[])
        ORDER BY total, holds_until_us DESC, pos
    ), gone AS (
        DELETE FROM totals t WHERE t.merchant = %(m)s AND t.total = ANY(%(totals)s::bigint[])
        AND t.total NOT IN (SELECT total FROM best)
    )
    INSERT INTO totals AS t (merchant, total, invoice_id, holds_until_us)
    SELECT %(m)s, total, invoice_id, holds_until_us FROM best
    ON CONFLICT (merchant, total) DO UPDATE
    SET invoice_id = excluded.invoice_id, holds_until_us = excluded.holds_until_us
    WHERE (t.invoice_id, t.holds_until_us)
        IS DISTINCT FROM (excluded.invoice_id, excluded.holds_until_us)"""
# ON CONFLICT DO NOTHING keeps a remembered key's first date; a NOT NULL or
# CHECK violation still fails the commit.
_ADD_KEYS = """INSERT INTO seen_rows (merchant, kind, key, date_us)
    SELECT %s, k.kind, k.key, k.date_us
    FROM unnest(%s::smallint[], %s::text[], %s::bigint[])
        WITH ORDINALITY AS k (kind, key, date_us, n)
    ORDER BY k.n
    ON CONFLICT (merchant, kind, key) DO NOTHING"""
_ADD_EVENTS = """INSERT INTO events (seq, merchant, id, kind, created_us, data)
    SELECT e.seq, %s, e.id, e.kind, %s, e.data
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS e (seq, id, kind, data)"""


def lock_merchant(cur: Any, merchant: str) -> int:
    """Lock the merchant's row until the transaction ends, creating it (with
    empty meta) if missing; its records version."""
    for _ in range(2):
        cur.execute(
            "SELECT records_version FROM merchants WHERE merchant = %s FOR UPDATE", (merchant,)
        )
        row = cur.fetchone()
        if row is not None:
            return int(row[0])
        # Two first commits at once: the second waits for the first's row, then
        # does nothing, and the SELECT above finds and locks it.
        cur.execute(
            "INSERT INTO merchants (merchant, meta) VALUES (%s, '{}') ON CONFLICT DO NOTHING",
            (merchant,),
        )
    raise StoreError(f"merchant {merchant!r} could not be locked")  # pragma: no cover


def check_fence(cur: Any, merchant: str, fence: tuple[str, int], until_us: int | None) -> None:
    # FOR UPDATE (FOR SHARE without a renewal would do): a takeover's UPDATE of
    # this row waits until this commit ends, and if one committed while this
    # waited, the row read is the new one.
    cur.execute("SELECT holder, epoch FROM leases WHERE merchant = %s FOR UPDATE", (merchant,))
    row = cur.fetchone()
    if row is None or (row[0], row[1]) != fence:
        raise LeaseLostError(f"the poll lease of merchant {merchant!r} is no longer this worker's")
    if until_us is not None:
        # The poll's renewal rides in its commit: a rollback undoes both.
        cur.execute(
            "UPDATE leases SET expires_us = GREATEST(expires_us, %s) WHERE merchant = %s",
            (until_us, merchant),
        )


def check_open(cur: Any, merchant: str, texts: dict[str, tuple[str, str, int] | None]) -> None:
    """``texts``: what each id is to be written as; already stored so, it is no
    conflict (a retry of a commit whose answer was lost)."""
    cur.execute(
        """SELECT invoice_id, state, record, holds_until_us FROM invoices
        WHERE merchant = %s AND invoice_id = ANY(%s::text[]) ORDER BY invoice_id FOR UPDATE""",
        (merchant, sorted(texts)),
    )
    for invoice_id, state, record, holds in cur.fetchall():
        if state != "open" and (state, record, holds) != texts[invoice_id]:
            raise InvoiceStateConflictError(
                f"invoice {invoice_id!r} was closed by another worker first"
            )


def apply(
    cur: Any, merchant: str, changes: Changes, meta_text: str | None, datas: list[Any]
) -> list[StoredEvent]:
    """Write ``changes`` (checked by ``prepare``) for ``merchant``."""
    version = lock_merchant(cur, merchant)
    if changes.fence is not None:
        check_fence(cur, merchant, changes.fence, changes.lease_until)
    if changes.if_open:
        check_open(cur, merchant, written(changes))
    if changes.first:
        cur.execute("SELECT meta FROM merchants WHERE merchant = %s", (merchant,))
        found = cur.fetchone()
        if found is not None and json.loads(found[0]):
            raise SeededMeanwhile(f"merchant {merchant!r} was stored meanwhile")
    if meta_text is not None:
        cur.execute(
            "UPDATE merchants SET meta = %s WHERE merchant = %s AND meta IS DISTINCT FROM %s",
            (meta_text, merchant, meta_text),
        )
    touched: set[int] = set()
    if changes.records:
        # The last write of an id wins, in the place of its first, as one
        # statement cannot update a row twice.
        latest: dict[str, Record] = {}
        for record in changes.records:
            latest[record[0]] = record
        ids = list(latest)
        cur.execute(
            "SELECT total FROM invoices WHERE merchant = %s AND invoice_id = ANY(%s::text[])",
            (merchant, ids),
        )
        before = {row[0] for row in cur.fetchall()}
        columns = [[record[n] for record in latest.values()] for n in range(5)]
        # The version moves only when a record did: an unchanged poll writes nothing.
        cur.execute(_UPSERT_INVOICES, (merchant, version + 1, *columns))
        changed = {row[0] for row in cur.fetchall()}
        if changed:
            touched |= changed | before
            cur.execute(
                "UPDATE merchants SET records_version = %s WHERE merchant = %s",
                (version + 1, merchant),
            )
    if changes.forgotten:
        cur.execute(
            """DELETE FROM invoices WHERE merchant = %s AND invoice_id = ANY(%s::text[])
            RETURNING total""",
            (merchant, list(changes.forgotten)),
        )
        touched |= {row[0] for row in cur.fetchall()}
    if touched:
        cur.execute(_REFRESH_TOTALS, {"m": merchant, "totals": sorted(touched)})
    keys = [(0, key, at) for key, at in changes.seen] + [
        (1, key, at) for key, at in changes.rejected
    ]
    if keys:
        cur.execute(_ADD_KEYS, (merchant, *([key[n] for key in keys] for n in range(3))))
    if changes.horizon is not None:
        cur.execute(
            "DELETE FROM seen_rows WHERE merchant = %s AND date_us < %s",
            (merchant, changes.horizon),
        )
    return _add_events(cur, merchant, changes, datas)


def _add_events(cur: Any, merchant: str, changes: Changes, datas: list[Any]) -> list[StoredEvent]:
    if not changes.events:
        return []
    # The first of two events with one id is the one stored, as in MemoryStore.
    first: dict[str, tuple[str, str, Any]] = {}
    for (event_id, kind, text), data in zip(changes.events, datas, strict=True):
        first.setdefault(event_id, (kind, text, data))
    # Under the merchant's lock no one else adds this merchant's events.
    cur.execute(
        "SELECT id FROM events WHERE merchant = %s AND id = ANY(%s::text[])",
        (merchant, list(first)),
    )
    for (event_id,) in cur.fetchall():
        del first[event_id]
    if not first:
        return []
    cur.execute(
        "UPDATE counters SET value = value + %s WHERE name = 'events' RETURNING value",
        (len(first),),
    )
    base = int(cur.fetchone()[0]) - len(first) + 1
    created = micros(changes.committed_at)
    items = list(first.items())
    cur.execute(
        _ADD_EVENTS,
        (
            merchant,
            created,
            [base + n for n in range(len(items))],
            [event_id for event_id, _ in items],
            [kind for _, (kind, _text, _data) in items],
            [text for _, (_kind, text, _data) in items],
        ),
    )
    at = from_micros(created)
    return [
        StoredEvent(base + n, event_id, kind, at, data)
        for n, (event_id, (kind, _text, data)) in enumerate(items)
    ]


def claim_lease(
    cur: Any, merchant: str, holder: str, epoch: int | None, now: datetime, ttl: float
) -> Lease | None:
    now_us = micros(now)
    until = now_us + int(ttl * 1_000_000)
    # One statement: the conflicting row is locked while its WHERE is judged, so
    # two claimants at once cannot both take the lease. The same holder at
    # the same epoch renews; the same holder otherwise (an earlier incarnation),
    # or anyone once it lapsed, takes it at the next epoch.
    cur.execute(
        """INSERT INTO leases AS l (merchant, holder, epoch, expires_us)
        VALUES (%(m)s, %(h)s, 1, %(until)s)
        ON CONFLICT (merchant) DO UPDATE
        SET holder = excluded.holder, expires_us = excluded.expires_us,
            epoch = CASE WHEN l.holder = excluded.holder AND l.epoch = %(epoch)s::bigint
                THEN l.epoch ELSE l.epoch + 1 END
        WHERE l.holder = excluded.holder OR l.expires_us < %(now)s
        RETURNING epoch""",
        {"m": merchant, "h": holder, "until": until, "epoch": epoch, "now": now_us},
    )
    row = cur.fetchone()
    if row is None:
        return None
    return Lease(holder, int(row[0]), from_micros(until))


def release_lease(cur: Any, merchant: str, holder: str, epoch: int) -> None:
    cur.execute(
        "UPDATE leases SET expires_us = 0 WHERE merchant = %s AND holder = %s AND epoch = %s",
        (merchant, holder, epoch),
    )


def leases(cur: Any) -> dict[str, Lease]:
    cur.execute("SELECT merchant, holder, epoch, expires_us FROM leases")
    return {row[0]: Lease(row[1], int(row[2]), from_micros(row[3])) for row in cur.fetchall()}


def claim_invoices(cur: Any, merchant: str, claims: list[Record], now: datetime) -> dict[str, str]:
    version = lock_merchant(cur, merchant)
    at = micros(now)
    ids = [claim[0] for claim in claims]
    cur.execute(
        "SELECT invoice_id FROM invoices WHERE merchant = %s AND invoice_id = ANY(%s::text[])",
        (merchant, ids),
    )
    known = {row[0] for row in cur.fetchall()}
    cur.execute(
        """SELECT total, invoice_id, holds_until_us FROM totals
        WHERE merchant = %s AND total = ANY(%s::bigint[]) ORDER BY total FOR UPDATE""",
        (merchant, sorted({claim[1] for claim in claims})),
    )
    holders = {total: (invoice_id, holds) for total, invoice_id, holds in cur.fetchall()}
    refused: dict[str, str] = {}
    accepted: list[Record] = []
    taken: dict[int, str] = {}
    for claim in claims:
        invoice_id, total = claim[0], claim[1]
        if invoice_id in known:
            refused[invoice_id] = invoice_id
            continue
        holder = taken.get(total)
        if holder is None and total in holders and holders[total][1] >= at:
            holder = holders[total][0]
        if holder is not None:
            refused[invoice_id] = holder
            continue
        taken[total] = invoice_id
        known.add(invoice_id)
        accepted.append(claim)
    if not accepted:
        return refused
    lapsed = sorted(total for total in taken if total in holders)
    if lapsed:
        cur.execute(
            """DELETE FROM totals
            WHERE merchant = %s AND total = ANY(%s::bigint[]) AND holds_until_us < %s""",
            (merchant, lapsed, at),
        )
    columns = [[claim[n] for claim in accepted] for n in range(5)]
    cur.execute(
        """INSERT INTO totals (merchant, total, invoice_id, holds_until_us)
        SELECT %s, t.total, t.invoice_id, t.holds
        FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS t (total, invoice_id, holds)
        ON CONFLICT (merchant, total) DO NOTHING RETURNING total""",
        (merchant, columns[1], columns[0], columns[4]),
    )
    if len(cur.fetchall()) != len(accepted):
        # The merchant's lock makes this impossible; if it ever happens, the
        # transaction is rolled back rather than a total held twice.
        raise StoreError(f"a total of merchant {merchant!r} was claimed by another worker at once")
    cur.execute(
        """INSERT INTO invoices
            (merchant, invoice_id, total, state, record, holds_until_us, version)
        SELECT %s, r.invoice_id, r.total, r.state, r.record, r.holds, %s
        FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[])
            WITH ORDINALITY AS r (invoice_id, total, state, record, holds, n)
        ORDER BY r.n""",
        (merchant, version + 1, *columns),
    )
    cur.execute(
        "UPDATE merchants SET records_version = %s WHERE merchant = %s", (version + 1, merchant)
    )
    return refused


def records_since(cur: Any, merchant: str, version: int) -> tuple[list[str], int]:
    cur.execute("SELECT records_version FROM merchants WHERE merchant = %s", (merchant,))
    row = cur.fetchone()
    if row is None:
        return [], 0
    cur.execute(
        """SELECT record FROM invoices WHERE merchant = %s AND version > %s
        ORDER BY version, pos""",
        (merchant, version),
    )
    return [text for (text,) in cur.fetchall()], int(row[0])


def payout_settle(
    cur: Any,
    scope: str,
    key: str,
    state: str | None,
    result: str | None,
    withdraw_id: str | None,
    now_us: int,
) -> None:
    where = (scope, key)
    # Locked: a second settle of the key waits, then judges the first one's result.
    cur.execute("SELECT 1 FROM payouts WHERE scope = %s AND key = %s FOR UPDATE", where)
    if cur.fetchone() is None:
        raise KeyError(key)
    if state is None:
        cur.execute("DELETE FROM payouts WHERE scope = %s AND key = %s", where)
        return
    if state not in PAYOUT_STATES:
        raise ValueError(f"unknown payout state {state!r}")
    if withdraw_id is not None:
        cur.execute(
            "SELECT 1 FROM payouts WHERE scope = %s AND withdraw_id = %s AND key <> %s",
            (scope, withdraw_id, key),
        )
        if cur.fetchone() is not None:
            raise StoreError(f"withdrawal {withdraw_id!r} is already claimed by another key")
    # A claim by another key committing meanwhile still fails here, on the unique index.
    cur.execute(
        "UPDATE payouts SET state = %s, result = %s, withdraw_id = %s, updated_us = %s "
        "WHERE scope = %s AND key = %s",
        (state, result, withdraw_id, now_us, scope, key),
    )
