"""Output helpers of the ``qrispay`` command: money, times, tables, colour, JSON.

The text the command writes itself is plain ASCII, so a console in a legacy
code page prints it too. Money is shown the Indonesian way, ``Rp 25.001`` (the dot
groups thousands; rupiah have no decimals); JSON carries it as an int.
Times are shown in Asia/Jakarta (WIB), as both APIs use; JSON carries them
as ISO 8601 in WIB too, with the offset (``+07:00``).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

import attrs

from .. import events
from ..events import Event
from ..models import JAKARTA, Invoice, Mutation

__all__ = [
    "EVENT_LOOKS",
    "Style",
    "describe_event",
    "dumps",
    "event_kind",
    "event_label",
    "format_rupiah",
    "format_time",
    "jsonable",
    "key_values",
    "table",
    "wants_colour",
]


def format_rupiah(amount: int | None) -> str:
    """``Rp 25.001``; ``-Rp 1.000`` below zero; ``-`` for None."""
    if amount is None:
        return "-"
    sign = "-" if amount < 0 else ""
    return f"{sign}Rp {abs(amount):,}".replace(",", ".")


def format_time(when: datetime | None, *, seconds: bool = True) -> str:
    """``2025-01-01 12:00:05 WIB`` (any aware datetime, shown in Asia/Jakarta)."""
    if when is None:
        return "-"
    shown = when.astimezone(JAKARTA)
    return shown.strftime("%Y-%m-%d %H:%M:%S WIB" if seconds else "%Y-%m-%d %H:%M WIB")


# -- colour --------------------------------------------------------------------


def wants_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (any value,
    https://no-color.org) or ``TERM=dumb``."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


class Style:
    """ANSI styling that does nothing when disabled: ``style("PAID", "green")``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles or not text:
            return text
        codes = ";".join(_CODES[name] for name in styles)
        return f"\033[{codes}m{text}\033[0m"


# -- tables --------------------------------------------------------------------


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Iterable[int] = (),
    indent: str = "",
    styles: Mapping[int, str] | None = None,
    style: Style | None = None,
) -> str:
    """A plain-text table: a header row, then one row per item, columns padded.

    ``right``: indexes of right-aligned columns (money, counts). ``styles``:
    a colour per column index, applied after padding so widths stay right.
    Cells are ``str()``-ed; None shows as ``-``.
    """
    text_rows = [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    right_set = set(right)
    style = style or Style(False)

    def line(cells: Sequence[str], header: bool = False) -> str:
        parts = []
        for index, cell in enumerate(cells):
            padded = cell.rjust(widths[index]) if index in right_set else cell.ljust(widths[index])
            if header:
                padded = style(padded, "bold")
            elif styles and index in styles:
                padded = style(padded, styles[index])
            parts.append(padded)
        return (indent + "  ".join(parts)).rstrip()

    out = [line(list(headers), header=True)]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def key_values(pairs: Iterable[tuple[str, object]], *, indent: str = "") -> str:
    """``label   value`` lines, labels padded to one width."""
    items = [(label, "-" if value is None else str(value)) for label, value in pairs]
    width = max((len(label) for label, _ in items), default=0)
    return "\n".join(f"{indent}{label.ljust(width)}  {value}".rstrip() for label, value in items)


# -- JSON ----------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Models, events and containers as JSON-ready data, with stable keys.

    attrs classes become objects of their public fields, in declaration order
    (an event also gets ``"event": "<its class name>"`` first); enums their
    value; datetimes ISO 8601 with their offset; money stays int.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        # One zone for everything printed, as the text shows it; the instant is
        # the same (the offset says so), only how it is written changes.
        return (value.astimezone(JAKARTA) if value.utcoffset() is not None else value).isoformat()
    if isinstance(value, float):
        return value
    if attrs.has(type(value)):
        data: dict[str, Any] = {}
        if type(value) in _EVENT_CLASSES:
            data["event"] = type(value).__name__
        for field in attrs.fields(type(value)):
            if field.name.startswith("_") or not field.init:
                continue
            data[field.name] = jsonable(getattr(value, field.name))
        return data
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    return str(value)


def dumps(value: Any, *, compact: bool = False) -> str:
    """JSON text of ``jsonable(value)``: indented, or one line with ``compact``."""
    data = jsonable(value)
    if compact:
        return json.dumps(data, separators=(",", ":"))
    return json.dumps(data, indent=2)


# -- events --------------------------------------------------------------------

_EVENT_CLASSES = frozenset(events.EVENT_KINDS.values())

#: Each event kind's short label, colour and short name (the demo's verdict keys).
EVENT_LOOKS: dict[str, tuple[str, str, str]] = {
    events.InvoicePaid.kind: ("PAID", "green", "paid"),
    events.InvoiceExpired.kind: ("EXPIRED", "dim", "expired"),
    events.InvoiceCancelled.kind: ("CANCELLED", "dim", "cancelled"),
    events.LatePayment.kind: ("LATE", "yellow", "late"),
    events.DuplicatePayment.kind: ("DUPLICATE", "yellow", "duplicate"),
    events.UnmatchedCredit.kind: ("UNMATCHED", "magenta", "unmatched"),
    events.AmbiguousCredit.kind: ("AMBIGUOUS", "red", "ambiguous"),
    events.UnknownRow.kind: ("UNKNOWN ROW", "red", "unknown_row"),
    events.RejectedRows.kind: ("REJECTED", "red", "rejected_rows"),
    events.BalanceGap.kind: ("BALANCE GAP", "red", "balance_gap"),
}
LABEL_WIDTH = max(len(label) for label, _, _ in EVENT_LOOKS.values())


@attrs.frozen
class _Words:
    """How ``describe_event`` names an invoice and writes a time."""

    name: Callable[[Invoice], str] | None
    when: Callable[[datetime], str]

    def who(self, invoice: Invoice) -> str:
        return self.name(invoice) if self.name is not None else f"invoice {invoice.invoice_id}"

    def row(self, row: Mutation) -> str:
        reff = f"ref {row.issuer_reff}" if row.issuer_reff else "no reference"
        return (
            f"{format_rupiah(row.amount)} by {row.brand_name or '?'} at {self.when(row.date)} "
            f"({reff})"
        )


def describe_event(
    event: Event,
    *,
    name: Callable[[Invoice], str] | None = None,
    when: Callable[[datetime], str] = format_time,
) -> str:
    """One line of plain text saying what ``event`` means and what to do.

    ``name`` names an invoice (default: ``invoice <id>``); ``when`` formats a
    time (default: ``format_time``)."""
    words = _Words(name, when)
    if isinstance(event, (events.InvoicePaid, events.InvoiceExpired, events.InvoiceCancelled)):
        return _closing(event, words)
    if isinstance(
        event,
        (
            events.LatePayment,
            events.DuplicatePayment,
            events.UnmatchedCredit,
            events.AmbiguousCredit,
        ),
    ):
        return _credit(event, words)
    return _feed_health(event, words)


def _closing(
    event: events.InvoicePaid | events.InvoiceExpired | events.InvoiceCancelled, words: _Words
) -> str:
    who, total = words.who(event.invoice), format_rupiah(event.invoice.total)
    if isinstance(event, events.InvoicePaid):
        if event.mutation is not None:
            return f"{who} is paid: {words.row(event.mutation)}"
        return f"{who} ({total}) is paid, as the {event.source} reports"
    if isinstance(event, events.InvoiceExpired):
        return f"{who} ({total}) expired unpaid at {words.when(event.invoice.expired_at)}"
    return f"{who} ({total}) was cancelled unpaid"


def _credit(
    event: events.LatePayment
    | events.DuplicatePayment
    | events.UnmatchedCredit
    | events.AmbiguousCredit,
    words: _Words,
) -> str:
    row = words.row(event.mutation)
    if isinstance(event, events.LatePayment):
        return (
            f"{words.who(event.invoice)} was paid after it closed: {row}; "
            "refund it, or honour it by hand"
        )
    if isinstance(event, events.DuplicatePayment):
        return f"{words.who(event.invoice)} was paid again: {row}; refund the second payment"
    if isinstance(event, events.UnmatchedCredit):
        return f"a credit that fits no invoice: {row}"
    names = ", ".join(words.who(invoice) for invoice in event.candidates)
    return (
        f"a credit that fits several invoices ({names}): {row}; "
        "none was marked paid, decide by hand"
    )


def _feed_health(
    event: events.UnknownRow | events.RejectedRows | events.BalanceGap, words: _Words
) -> str:
    when = words.when
    if isinstance(event, events.UnknownRow):
        row = event.mutation
        return (
            f"a feed row of unknown type {row.raw_type or row.type!s}: "
            f"{format_rupiah(row.amount)} at {when(row.date)}"
        )
    if isinstance(event, events.RejectedRows):
        reasons = "; ".join(rejected.reason for rejected in event.rows[:3])
        more = f" (and {len(event.rows) - 3} more)" if len(event.rows) > 3 else ""
        return f"{len(event.rows)} feed row(s) could not be read: {reasons}{more}"
    return (
        f"rows are missing from the feed between {when(event.before.date)} and "
        f"{when(event.after.date)}: the balance is off by {format_rupiah(event.missing)}"
    )


def event_label(event: Event, style: Style | None = None) -> str:
    """The event's label, padded to one width (and coloured)."""
    label, colour, _ = EVENT_LOOKS[event.kind]
    padded = label.ljust(LABEL_WIDTH)
    return style(padded, colour) if style is not None else padded


def event_kind(event: Event) -> str:
    """``paid``, ``late``, ``duplicate``, ``unmatched``, ``expired``, ..."""
    return EVENT_LOOKS[event.kind][2]
