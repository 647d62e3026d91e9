"""Invoices, feed rows, events, tracked records and withdrawals as plain JSON
data, and back.

The form a store keeps and the HTTP service sends: money as int rupiah, times
as ISO 8601 in UTC. Loading gives back equal values (an aware datetime equals
its UTC form), with feed and window dates in the feed's zone, as the engine
compares them. Stored data outlives a release: add fields, never change one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ._book import Tracked
from ._state import State
from .events import (
    EVENT_KINDS,
    AmbiguousCredit,
    BalanceGap,
    DuplicatePayment,
    Event,
    InvoiceCancelled,
    InvoiceExpired,
    InvoicePaid,
    LatePayment,
    RejectedRows,
    UnknownRow,
    UnmatchedCredit,
)
from .models import (
    JAKARTA,
    Invoice,
    InvoiceStatus,
    Mutation,
    MutationType,
    RejectedRow,
    Withdrawal,
    WithdrawalStatus,
)

__all__ = [
    "dump_event",
    "dump_invoice",
    "dump_record",
    "dump_row",
    "dump_time",
    "dump_withdrawal",
    "load_event",
    "load_invoice",
    "load_record",
    "load_row",
    "load_time",
    "load_withdrawal",
]

_STATUS_VALUES = frozenset(status.value for status in InvoiceStatus)
_WITHDRAWAL_STATUS_VALUES = frozenset(status.value for status in WithdrawalStatus)
_STATES = {state.value: state for state in State}


def dump_time(value: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC."""
    return value.astimezone(timezone.utc).isoformat()


def load_time(value: object) -> datetime:
    """An ISO 8601 time with an offset, in the feed's zone."""
    if not isinstance(value, str):
        raise TypeError(f"a time must be an ISO string, not {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without an offset: {value!r}")
    return parsed.astimezone(JAKARTA)


def _optional_time(value: object) -> datetime | None:
    return None if value is None else load_time(value)


def dump_invoice(invoice: Invoice) -> dict[str, Any]:
    status = invoice.status
    return {
        "invoice_id": invoice.invoice_id,
        "amount": invoice.amount,
        "fee": invoice.fee,
        "total": invoice.total,
        "status": status.value if isinstance(status, InvoiceStatus) else status,
        "qris_image": invoice.qris_image,
        "expired_at": dump_time(invoice.expired_at),
        "created_at": None if invoice.created_at is None else dump_time(invoice.created_at),
        "qris_payload": invoice.qris_payload,
    }


def load_invoice(data: Mapping[str, Any]) -> Invoice:
    status = data["status"]
    return Invoice(
        invoice_id=data["invoice_id"],
        amount=data["amount"],
        fee=data["fee"],
        total=data["total"],
        # Exact values only: an unknown status string stays the string it was.
        status=InvoiceStatus(status) if status in _STATUS_VALUES else status,
        qris_image=data["qris_image"],
        expired_at=load_time(data["expired_at"]),
        created_at=_optional_time(data.get("created_at")),
        qris_payload=data.get("qris_payload"),
    )


def dump_withdrawal(withdrawal: Withdrawal) -> dict[str, Any]:
    status = withdrawal.status
    processed = withdrawal.processed_at
    return {
        "withdraw_id": withdrawal.withdraw_id,
        "amount": withdrawal.amount,
        "fee": withdrawal.fee,
        "total_deduct": withdrawal.total_deduct,
        "status": status.value if isinstance(status, WithdrawalStatus) else status,
        "method": withdrawal.method,
        "account_number": withdrawal.account_number,
        "account_name": withdrawal.account_name,
        "admin_note": withdrawal.admin_note,
        "created_at": dump_time(withdrawal.created_at),
        "processed_at": None if processed is None else dump_time(processed),
        "new_balance": withdrawal.new_balance,
    }


def load_withdrawal(data: Mapping[str, Any]) -> Withdrawal:
    status = data["status"]
    return Withdrawal(
        withdraw_id=data["withdraw_id"],
        amount=data["amount"],
        fee=data["fee"],
        total_deduct=data["total_deduct"],
        status=WithdrawalStatus(status) if status in _WITHDRAWAL_STATUS_VALUES else status,
        method=data.get("method"),
        account_number=data.get("account_number"),
        account_name=data.get("account_name"),
        admin_note=data.get("admin_note"),
        created_at=load_time(data["created_at"]),
        processed_at=_optional_time(data.get("processed_at")),
        new_balance=data.get("new_balance"),
    )


def dump_row(row: Mutation) -> dict[str, Any]:
    return {
        "date": dump_time(row.date),
        "amount": row.amount,
        "type": row.type.value,
        "qris": row.qris,
        "brand_name": row.brand_name,
        "issuer_reff": row.issuer_reff,
        "buyer_reff": row.buyer_reff,
        "balance": row.balance,
        "raw_type": row.raw_type,
        "key": row.key,
    }


def load_row(data: Mapping[str, Any]) -> Mutation:
    row = Mutation(
        date=load_time(data["date"]),
        amount=data["amount"],
        type=MutationType(data["type"]),
        qris=data["qris"],
        brand_name=data["brand_name"],
        issuer_reff=data["issuer_reff"],
        buyer_reff=data["buyer_reff"],
        balance=data["balance"],
        raw_type=data.get("raw_type"),
    )
    if "key" in data and data["key"] != row.key:
        raise ValueError(f"stored row key {data['key']!r} does not match its fields")
    return row


def dump_record(record: Tracked) -> dict[str, Any]:
    return {
        "invoice": dump_invoice(record.invoice),
        "window_start": dump_time(record.start),
        "state": record.state.value,
        "closed_at": None if record.closed_at is None else dump_time(record.closed_at),
        "pairing_owed": record.owed,
        "seq": record.seq,
        "waiting": [dump_row(row) for row in record.waiting or ()],
    }


def load_record(data: Mapping[str, Any]) -> Tracked:
    record = Tracked(load_invoice(data["invoice"]), load_time(data["window_start"]))
    name = data["state"]
    state = _STATES.get(name) if isinstance(name, str) else None
    if state is None:
        raise ValueError(f"unknown invoice state {name!r}")
    record.state = state
    record.closed_at = _optional_time(data["closed_at"])
    if (state is State.OPEN) != (record.closed_at is None):
        raise ValueError(f"invoice {record.invoice.invoice_id!r}: closed_at does not fit {name}")
    record.owed = bool(data["pairing_owed"])
    record.seq = int(data["seq"])
    record.waiting = [load_row(row) for row in data.get("waiting", ())] or None
    return record


def dump_event(event: Event) -> dict[str, Any]:
    """The event's own fields as JSON data (its ``kind`` and ``id`` are kept beside)."""
    if isinstance(event, InvoicePaid):
        mutation = None if event.mutation is None else dump_row(event.mutation)
        return {
            "invoice": dump_invoice(event.invoice),
            "mutation": mutation,
            "source": event.source,
        }
    if isinstance(event, (InvoiceExpired, InvoiceCancelled)):
        return {"invoice": dump_invoice(event.invoice)}
    if isinstance(event, (LatePayment, DuplicatePayment)):
        return {"invoice": dump_invoice(event.invoice), "mutation": dump_row(event.mutation)}
    if isinstance(event, (UnmatchedCredit, UnknownRow)):
        return {"mutation": dump_row(event.mutation)}
    if isinstance(event, AmbiguousCredit):
        return {
            "mutation": dump_row(event.mutation),
            "candidates": [dump_invoice(invoice) for invoice in event.candidates],
        }
    if isinstance(event, RejectedRows):
        return {"rows": [{"raw": row.raw, "reason": row.reason} for row in event.rows]}
    if isinstance(event, BalanceGap):
        return {
            "before": dump_row(event.before),
            "after": dump_row(event.after),
            "missing": event.missing,
        }
    raise TypeError(f"not an event: {type(event).__name__}")


def load_event(kind: str, data: Mapping[str, Any]) -> Event:
    """The event of ``kind`` (``EVENT_KINDS``) that ``dump_event`` wrote as ``data``."""
    cls = EVENT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}")
    if cls is InvoicePaid:
        mutation = data["mutation"]
        return InvoicePaid(
            load_invoice(data["invoice"]),
            None if mutation is None else load_row(mutation),
            data["source"],
        )
    if cls is InvoiceExpired or cls is InvoiceCancelled:
        return cls(load_invoice(data["invoice"]))
    if cls is LatePayment or cls is DuplicatePayment:
        return cls(load_invoice(data["invoice"]), load_row(data["mutation"]))
    if cls is UnmatchedCredit or cls is UnknownRow:
        return cls(load_row(data["mutation"]))
    if cls is AmbiguousCredit:
        candidates = tuple(load_invoice(item) for item in data["candidates"])
        return AmbiguousCredit(load_row(data["mutation"]), candidates)
    if cls is RejectedRows:
        return RejectedRows(tuple(RejectedRow(row["raw"], row["reason"]) for row in data["rows"]))
    assert cls is BalanceGap
    return BalanceGap(load_row(data["before"]), load_row(data["after"]), data["missing"])
