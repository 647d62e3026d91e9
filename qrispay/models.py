"""Typed results of both APIs: frozen, slotted attrs classes.

Money is ``int`` rupiah, every datetime is timezone-aware (zone-less API times
are Asia/Jakarta, a fixed UTC+7). An unknown status from the server is kept
as the plain string it was, never a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any, overload

import attrs

__all__ = [
    "JAKARTA",
    "Balance",
    "CancelResult",
    "Invoice",
    "InvoiceStatus",
    "Mutation",
    "MutationBatch",
    "MutationType",
    "RejectedRow",
    "Withdrawal",
    "WithdrawalPage",
    "WithdrawalStatus",
]

#: Asia/Jakarta (WIB). Indonesia keeps no daylight saving time, so a fixed
#: offset is exact and needs no tz database.
JAKARTA = timezone(timedelta(hours=7), "WIB")


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, value: str) -> Any:
        """The member for ``value`` (any case), or ``value`` itself when unknown."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            return value


class InvoiceStatus(_StrEnum):
    PENDING = "pending"
    PAID = "paid"
    EXPIRED = "expired"


class WithdrawalStatus(_StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    REJECTED = "rejected"


class MutationType(_StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"
    UNKNOWN = "unknown"


@attrs.frozen
class Balance:
    balance: int


@attrs.frozen
class Invoice:
    """A deposit invoice. ``total`` (amount plus fee or unique code) is what the
    customer pays and the only thing a feed row is matched on."""

    invoice_id: str
    amount: int
    fee: int
    total: int
    status: InvoiceStatus | str
    qris_image: str
    expired_at: datetime
    created_at: datetime | None
    qris_payload: str | None = None


@attrs.frozen
class CancelResult:
    invoice_id: str
    status: InvoiceStatus | str
    message: str


@attrs.frozen
class Withdrawal:
    withdraw_id: str
    amount: int
    fee: int
    total_deduct: int
    status: WithdrawalStatus | str
    method: str | None
    account_number: str | None
    account_name: str | None
    admin_note: str | None
    created_at: datetime
    processed_at: datetime | None
    new_balance: int | None


@attrs.frozen
class WithdrawalPage:
    items: tuple[Withdrawal, ...]
    page: int
    limit: int
    total: int
    total_pages: int

    def __iter__(self) -> Iterator[Withdrawal]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


_COMPOSITE_PREFIX = "~"


@attrs.frozen
class Mutation:
    """One row of the check-payment feed.

    ``key`` identifies the row for deduplication: its ``issuer_reff``, or, when
    that is empty, a composite of date, amount, type, brand, buyer reference
    and balance. Two real payments equal in all of those share a composite key
    and are taken for one (a limit of feeds without a reference).
    ``raw_type`` is the ``type`` text as the feed sent it.
    """

    date: datetime
    amount: int
    type: MutationType
    qris: str
    brand_name: str
    issuer_reff: str
    buyer_reff: str
    balance: int | None
    raw_type: str | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)
    # A field, not a property: it is read once per row on every poll.
    key: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        key = self.issuer_reff
        if not key:
            # The prefix keeps a composite key from ever equalling a real reference.
            key = (
                f"{_COMPOSITE_PREFIX}{self.date.astimezone(timezone.utc).isoformat()}"
                f"|{self.amount}|{self.type.value}|{self.brand_name}|{self.buyer_reff}"
                f"|{'' if self.balance is None else self.balance}"
            )
        object.__setattr__(self, "key", key)

    @property
    def is_credit(self) -> bool:
        return self.type is MutationType.CREDIT

    @property
    def is_debit(self) -> bool:
        return self.type is MutationType.DEBIT


@attrs.frozen
class RejectedRow:
    """A feed row that could not be read: the row as it came (secrets scrubbed)
    and why it was refused."""

    raw: Any
    reason: str


@attrs.frozen
class MutationBatch:
    """One answer of the feed: the rows in server order (newest first), and the
    rows that could not be read. Iterating yields the readable rows."""

    rows: tuple[Mutation, ...] = ()
    rejected: tuple[RejectedRow, ...] = ()

    def __iter__(self) -> Iterator[Mutation]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> Mutation: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Mutation, ...]: ...
    def __getitem__(self, index: int | slice) -> Mutation | tuple[Mutation, ...]:
        return self.rows[index]
