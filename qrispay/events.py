"""What the reconciliation engine reports: small frozen classes, one per fact.

Every credit row of the feed that is neither history nor the silent
confirmation of a gateway report ends in exactly one of ``InvoicePaid``,
``AmbiguousCredit``, ``LatePayment``, ``DuplicatePayment`` or
``UnmatchedCredit``. The other events describe invoices closing and the
health of the feed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, TypeAlias

import attrs

from .models import Invoice, Mutation, RejectedRow

__all__ = [
    "CREDIT_VERDICTS",
    "EVENT_KINDS",
    "AmbiguousCredit",
    "BalanceGap",
    "DuplicatePayment",
    "Event",
    "InvoiceCancelled",
    "InvoiceExpired",
    "InvoicePaid",
    "LatePayment",
    "RejectedRows",
    "UnknownRow",
    "UnmatchedCredit",
]


@attrs.frozen
class InvoicePaid:
    """The invoice is paid. ``invoice`` has status ``PAID``.

    ``source`` is ``"mutation"`` when a feed row paid it (``mutation`` is that
    row), or what reported it otherwise (``"gateway"`` by default; ``mutation``
    is None, and the feed row that arrives later is paired with it silently).
    """

    kind: ClassVar[str] = "invoice.paid"

    invoice: Invoice
    mutation: Mutation | None
    source: str

    @property
    def id(self) -> str:
        """``paid:<invoice id>`` (docs/design.md, "Event ids")."""
        return f"paid:{self.invoice.invoice_id}"


@attrs.frozen
class InvoiceExpired:
    """The invoice expired unpaid. ``invoice`` has status ``EXPIRED``."""

    kind: ClassVar[str] = "invoice.expired"

    invoice: Invoice

    @property
    def id(self) -> str:
        """``expired:<invoice id>`` (docs/design.md, "Event ids")."""
        return f"expired:{self.invoice.invoice_id}"


@attrs.frozen
class InvoiceCancelled:
    """The invoice was cancelled unpaid. ``invoice`` has status ``EXPIRED``, as the
    gateway reports a cancelled invoice."""

    kind: ClassVar[str] = "invoice.cancelled"

    invoice: Invoice

    @property
    def id(self) -> str:
        """``cancelled:<invoice id>`` (docs/design.md, "Event ids")."""
        return f"cancelled:{self.invoice.invoice_id}"


@attrs.frozen
class LatePayment:
    """A credit of the total of an invoice that had already expired or been
    cancelled, within the late grace after it closed. The money arrived but the
    invoice is not paid: refund it, or honour it by hand."""

    kind: ClassVar[str] = "payment.late"

    invoice: Invoice
    mutation: Mutation

    @property
    def id(self) -> str:
        """``late:<row key>`` (docs/design.md, "Event ids")."""
        return f"late:{self.mutation.key}"


@attrs.frozen
class DuplicatePayment:
    """A second credit of the total of an invoice that is already paid, within
    the late grace after it was paid. The customer probably paid twice."""

    kind: ClassVar[str] = "payment.duplicate"

    invoice: Invoice
    mutation: Mutation

    @property
    def id(self) -> str:
        """``duplicate:<row key>`` (docs/design.md, "Event ids")."""
        return f"duplicate:{self.mutation.key}"


@attrs.frozen
class UnmatchedCredit:
    """A credit that fits no invoice: no invoice, open or recently closed, has
    this total at this date."""

    kind: ClassVar[str] = "payment.unmatched"

    mutation: Mutation

    @property
    def id(self) -> str:
        """``unmatched:<row key>`` (docs/design.md, "Event ids")."""
        return f"unmatched:{self.mutation.key}"


@attrs.frozen
class AmbiguousCredit:
    """A credit that fits more than one open invoice, so none is paid and a
    person must decide. Unique totals make this impossible unless the engine's
    state was changed from outside (for instance a hand-edited snapshot)."""

    kind: ClassVar[str] = "payment.ambiguous"

    mutation: Mutation
    candidates: tuple[Invoice, ...]

    @property
    def id(self) -> str:
        """``ambiguous:<row key>`` (docs/design.md, "Event ids")."""
        return f"ambiguous:{self.mutation.key}"


@attrs.frozen
class UnknownRow:
    """A feed row whose type is neither credit nor debit. It is never matched."""

    kind: ClassVar[str] = "feed.unknown_row"

    mutation: Mutation

    @property
    def id(self) -> str:
        """``unknown:<row key>`` (docs/design.md, "Event ids")."""
        return f"unknown:{self.mutation.key}"


@attrs.frozen
class RejectedRows:
    """Feed rows that could not be read (each with the reason), reported once."""

    kind: ClassVar[str] = "feed.rejected_rows"

    rows: tuple[RejectedRow, ...]

    @property
    def id(self) -> str:
        """``rejected:<digest>``, the digest (blake2b-128) of the raw rows as canonical
        JSON, so the same rows give the same id in every process."""
        return f"rejected:{digest([row.raw for row in self.rows])}"


@attrs.frozen
class BalanceGap:
    """The balance after ``after`` does not follow from the balance after
    ``before``: rows fell off the feed between two polls, and ``missing`` is
    their net amount (negative when money went out, e.g. a missing debit)."""

    kind: ClassVar[str] = "feed.balance_gap"

    before: Mutation
    after: Mutation
    missing: int

    @property
    def id(self) -> str:
        """``gap:<key of before>:<key of after>``."""
        return f"gap:{self.before.key}:{self.after.key}"


def digest(value: Any) -> str:
    """blake2b-128 of ``value`` as canonical JSON (sorted keys, no spaces); a
    value with no JSON form is written as its ``repr``. Part of event ids: never
    change it."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
    )
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


Event: TypeAlias = (
    InvoicePaid
    | InvoiceExpired
    | InvoiceCancelled
    | LatePayment
    | DuplicatePayment
    | UnmatchedCredit
    | AmbiguousCredit
    | UnknownRow
    | RejectedRows
    | BalanceGap
)

#: Every event class by its kind (the ``type`` of an event in JSON).
EVENT_KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        InvoicePaid,
        InvoiceExpired,
        InvoiceCancelled,
        LatePayment,
        DuplicatePayment,
        UnmatchedCredit,
        AmbiguousCredit,
        UnknownRow,
        RejectedRows,
        BalanceGap,
    )
}

#: The verdicts a credit row can end in: exactly one for every credit that is
#: neither history nor the silent confirmation of a gateway report.
CREDIT_VERDICTS: tuple[type[Event], ...] = (
    InvoicePaid,
    AmbiguousCredit,
    LatePayment,
    DuplicatePayment,
    UnmatchedCredit,
)
