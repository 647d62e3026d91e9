"""An engine's state in a store: what changed as ``Changes``, and back from
``MerchantState`` (docs/design.md, "Stores").

The engine itself does no I/O; this module only turns its state into the
plain values a store writes, and a store's values into an engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ._book import Tracked
from ._codec import dump_event, dump_record, dump_row, dump_time, load_record, load_row, load_time
from ._journal import Journal
from ._memory import ExpiringMemory
from .engine import ReconciliationEngine
from .errors import StoreError
from .events import Event
from .models import JAKARTA
from .store._base import HOLDS_FOREVER, Changes, MerchantState, from_micros, micros

__all__ = ["META_VERSION", "attach", "changes", "engine_from", "everything", "take"]

#: The form of the merchant's ``meta``; a later form must still read this one.
META_VERSION = 1


def attach(engine: ReconciliationEngine) -> None:
    """Start noting what changes in ``engine`` (from now on)."""
    journal = Journal()
    engine._book.journal = journal
    engine._seen.added = journal.seen
    engine._rejected.added = journal.rejected


def take(engine: ReconciliationEngine) -> Journal:
    """What changed since ``attach()`` or the last ``take()``; notes afresh."""
    journal = engine._book.journal
    if journal is None:
        raise RuntimeError("this engine's changes are not being noted")
    attach(engine)
    return journal


def give_back(engine: ReconciliationEngine, journal: Journal) -> None:
    """A taken journal whose commit failed: noted again, before what came since."""
    current = engine._book.journal
    if current is None:
        raise RuntimeError("this engine's changes are not being noted")
    current.merge_earlier(journal)


def everything(engine: ReconciliationEngine) -> Journal:
    """A journal of the engine's whole state: what a store it seeds must write."""
    journal = Journal()
    journal.records = set(engine._book.records)
    journal.seen = [(key, date) for date, key in engine._seen.items()]
    journal.rejected = [(key, date) for date, key in engine._rejected.items()]
    return journal


def meta(engine: ReconciliationEngine, **poller: Any) -> dict[str, Any]:
    """The engine's small state, plus the poller's own times (``poller``)."""
    book = engine._book
    last = engine._chain.last
    return {
        "version": META_VERSION,
        "started_at": dump_time(engine.started_at),
        "skew_us": _micros_of(engine.skew),
        "late_grace_us": _micros_of(engine.late_grace),
        "retention_us": _micros_of(engine.retention),
        "horizon": None if engine._horizon is None else dump_time(engine._horizon),
        "busy_until": None if book.busy_until is None else dump_time(book.busy_until),
        "seq": book.seq,
        "chain_last": None if last is None else dump_row(last),
        **poller,
    }


def holds_until(engine: ReconciliationEngine, record: Tracked) -> int:
    """Until when (UTC microseconds) ``record`` holds its total against new
    invoices in any worker: while open, and rule 6's reservation after. At
    least the engine's own reservation (the longer of the two possible ends
    is taken, as the record does not tell whether a report was owed)."""
    if record.closed_at is None:
        return HOLDS_FOREVER
    skew = engine.skew
    until = max(record.closed_at + engine.late_grace + skew, record.owed_until(skew) + skew)
    return micros(until)


def record_row(engine: ReconciliationEngine, record: Tracked) -> tuple[str, int, str, str, int]:
    """``record`` as a store writes it."""
    text = json.dumps(dump_record(record), separators=(",", ":"))
    invoice = record.invoice
    return (
        invoice.invoice_id,
        invoice.total,
        record.state.value,
        text,
        holds_until(engine, record),
    )


def changes(
    engine: ReconciliationEngine,
    journal: Journal,
    events: Iterable[Event],
    *,
    committed_at: datetime,
    poller: Mapping[str, Any] | None,
    fence: tuple[str, int] | None = None,
    lease_until: datetime | None = None,
    if_open: frozenset[str] = frozenset(),
) -> Changes:
    """The ``Changes`` that bring a store from before ``journal`` to now.
    ``poller`` None: a worker that does not poll, which writes no meta."""
    records = engine._book.records
    upserts = [
        record_row(engine, records[invoice_id])
        for invoice_id in journal.records
        if invoice_id in records
    ]
    horizon = engine._horizon
    return Changes(
        meta=None if poller is None else meta(engine, **poller),
        records=upserts,
        forgotten=sorted(journal.forgotten - journal.records),
        seen=[(key, micros(date)) for key, date in journal.seen],
        rejected=[(key, micros(date)) for key, date in journal.rejected],
        horizon=None if horizon is None else micros(horizon),
        events=[
            (event.id, event.kind, json.dumps(dump_event(event), separators=(",", ":")))
            for event in events
        ],
        committed_at=committed_at,
        fence=fence,
        lease_until=None if lease_until is None else micros(lease_until),
        if_open=if_open,
    )


def engine_from(state: MerchantState) -> ReconciliationEngine:
    """The engine a store's ``state`` describes. ``StoreError`` if it is damaged."""
    data = state.meta
    version = data.get("version")
    if version != META_VERSION:
        raise StoreError(f"stored engine state of version {version!r}; this qrispay reads 1")
    try:
        return _engine_from(state, data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"damaged stored engine state: {type(exc).__name__}: {exc}") from exc


def _engine_from(state: MerchantState, data: Mapping[str, Any]) -> ReconciliationEngine:
    engine = ReconciliationEngine(
        started_at=load_time(data["started_at"]),
        skew=timedelta(microseconds=data["skew_us"]),
        late_grace=timedelta(microseconds=data["late_grace_us"]),
        retention=timedelta(microseconds=data["retention_us"]),
    )
    book = engine._book
    engine._horizon = None if data["horizon"] is None else load_time(data["horizon"])
    book.busy_until = None if data["busy_until"] is None else load_time(data["busy_until"])
    book.seq = int(data["seq"])
    engine._seen = _memory(state.seen)
    engine._rejected = _memory(state.rejected)
    for text in state.records:
        record = load_record(json.loads(text))
        book.adopt(record)
        # The stored busy_until is the last poller's; a close committed since by
        # a worker that does not poll is only in its record. Without this, a new
        # holder (or one reloaded after a refused commit) goes idle during that
        # invoice's late grace, and a late payment waits for the idle poll.
        book.keep_busy_for(record)
    chain_last = data["chain_last"]
    engine._chain.last = None if chain_last is None else load_row(chain_last)
    return engine


def _memory(pairs: Iterable[tuple[str, int]]) -> ExpiringMemory:
    return ExpiringMemory((from_micros(at).astimezone(JAKARTA), key) for key, at in pairs)


def _micros_of(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
