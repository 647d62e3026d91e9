"""The engine's snapshot: everything it knows as plain JSON data, and back.

The form is version 1 and must stay readable: a snapshot written by any
earlier qrispay of that version restores to the same engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._book import Tracked
from ._memory import ExpiringMemory
from ._state import State
from .models import Invoice, InvoiceStatus, Mutation, MutationType

if TYPE_CHECKING:
    from .engine import ReconciliationEngine

__all__ = ["SNAPSHOT_VERSION", "dump", "load"]

SNAPSHOT_VERSION = 1

EngineT = TypeVar("EngineT", bound="ReconciliationEngine")


def dump(engine: ReconciliationEngine) -> dict[str, Any]:
    """``engine`` as plain JSON-serialisable data."""
    book = engine._book
    return {
        "version": SNAPSHOT_VERSION,
        "started_at": engine.started_at.isoformat(),
        "skew_us": _micros(engine.skew),
        "late_grace_us": _micros(engine.late_grace),
        "retention_us": _micros(engine.retention),
        "horizon": _iso(engine._horizon),
        "busy_until": _iso(book.busy_until),
        "seq": book.seq,
        "seen": _dump_memory(engine._seen),
        "rejected_seen": _dump_memory(engine._rejected),
        "invoices": [_dump_record(record) for record in book.records.values()],
        "chain_last": None if engine._chain.last is None else _dump_row(engine._chain.last),
    }


def load(cls: type[EngineT], snapshot: object) -> EngineT:
    """An engine of class ``cls`` in the state ``snapshot`` records.

    ``ValueError`` for a snapshot of another version or a damaged one.
    """
    if not isinstance(snapshot, Mapping):
        raise ValueError(f"an engine snapshot is a dict, not {type(snapshot).__name__}")
    version = snapshot.get("version")
    if type(version) is not int or version != SNAPSHOT_VERSION:
        raise ValueError(
            f"unsupported engine snapshot version {version!r} "
            f"(this qrispay reads version {SNAPSHOT_VERSION})"
        )
    try:
        return _load(cls, snapshot)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"damaged engine snapshot: {type(exc).__name__}: {exc}") from exc


def _load(cls: type[EngineT], data: Mapping[str, Any]) -> EngineT:
    engine = cls(
        started_at=_load_datetime(data["started_at"]),
        skew=timedelta(microseconds=data["skew_us"]),
        late_grace=timedelta(microseconds=data["late_grace_us"]),
        retention=timedelta(microseconds=data["retention_us"]),
    )
    book = engine._book
    engine._horizon = _load_optional_datetime(data["horizon"])
    book.busy_until = _load_optional_datetime(data["busy_until"])
    book.seq = int(data["seq"])
    engine._seen = _load_memory(data["seen"])
    engine._rejected = _load_memory(data["rejected_seen"])
    for item in data["invoices"]:
        book.adopt(_load_record(item))
    chain_last = data["chain_last"]
    engine._chain.last = None if chain_last is None else _load_row(chain_last)
    return engine


def _dump_memory(memory: ExpiringMemory) -> list[list[str]]:
    return [[key, date.isoformat()] for date, key in memory.items()]


def _load_memory(pairs: Any) -> ExpiringMemory:
    return ExpiringMemory((_load_datetime(at), str(key)) for key, at in pairs)


def _micros(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _load_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"a time must be an ISO string, not {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without an offset: {value!r}")
    return parsed


def _load_optional_datetime(value: object) -> datetime | None:
    return None if value is None else _load_datetime(value)


_INVOICE_TIMES = ("expired_at", "created_at")
_STATUS_VALUES = frozenset(status.value for status in InvoiceStatus)


def _dump_invoice(invoice: Invoice) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for field in attrs.fields(Invoice):
        value = getattr(invoice, field.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, InvoiceStatus):
            value = value.value
        data[field.name] = value
    return data


def _load_invoice(data: Mapping[str, Any]) -> Invoice:
    values = dict(data)
    for name in _INVOICE_TIMES:
        values[name] = _load_optional_datetime(values.get(name))
    status = values["status"]
    # Exact values only: an unknown status string stays the string it was.
    values["status"] = InvoiceStatus(status) if status in _STATUS_VALUES else status
    return Invoice(**values)


def _dump_record(record: Tracked) -> dict[str, Any]:
    return {
        "invoice": _dump_invoice(record.invoice),
        "window_start": record.start.isoformat(),
        "state": record.state.value,
        "closed_at": _iso(record.closed_at),
        "pairing_owed": record.owed,
        "seq": record.seq,
        "waiting": [_dump_row(row) for row in record.waiting or ()],
    }


_STATES = {state.value: state for state in State}


def _load_record(data: Mapping[str, Any]) -> Tracked:
    record = Tracked(_load_invoice(data["invoice"]), _load_datetime(data["window_start"]))
    name = data["state"]
    state = _STATES.get(name) if isinstance(name, str) else None
    if state is None:
        raise ValueError(f"unknown invoice state {name!r}")
    record.state = state
    record.closed_at = _load_optional_datetime(data["closed_at"])
    if (state is State.OPEN) != (record.closed_at is None):
        raise ValueError(f"invoice {record.invoice.invoice_id!r}: closed_at does not fit {name}")
    record.owed = bool(data["pairing_owed"])
    record.seq = int(data["seq"])
    waiting = [_load_row(row) for row in data.get("waiting", ())]
    record.waiting = waiting or None
    return record


def _dump_row(row: Mutation) -> dict[str, Any]:
    return {
        "date": row.date.isoformat(),
        "amount": row.amount,
        "type": row.type.value,
        "qris": row.qris,
        "brand_name": row.brand_name,
        "issuer_reff": row.issuer_reff,
        "buyer_reff": row.buyer_reff,
        "balance": row.balance,
        "raw_type": row.raw_type,
    }


def _load_row(data: Mapping[str, Any]) -> Mutation:
    return Mutation(
        date=_load_datetime(data["date"]),
        amount=data["amount"],
        type=MutationType(data["type"]),
        qris=data["qris"],
        brand_name=data["brand_name"],
        issuer_reff=data["issuer_reff"],
        buyer_reff=data["buyer_reff"],
        balance=data["balance"],
        raw_type=data["raw_type"],
    )
