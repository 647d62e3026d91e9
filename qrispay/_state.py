"""The life of a tracked invoice, written once.

Every change of an invoice's state goes through ``after()``, which reads the
transition table below; nothing else decides where an invoice goes. An invoice
is open until one thing closes it, and a closed invoice never reopens.
"""

from __future__ import annotations

import enum

from .models import InvoiceStatus

__all__ = ["Closing", "State", "after", "closing_on_track", "status_of"]


class State(enum.Enum):
    """Where a tracked invoice is. The value is its name in a snapshot."""

    OPEN = "open"
    PAID = "paid"
    EXPIRED = "expired"
    # Kept apart from EXPIRED only for the event it produced; it reads EXPIRED.
    CANCELLED = "cancelled"

    # Members are singletons compared by identity; Enum's own hash is Python
    # code run on every table lookup, which is on the path of every payment.
    __hash__ = object.__hash__


class Closing(enum.Enum):
    """What closes an invoice."""

    CREDIT = "a feed credit paid it"
    # The feed row backing a report is still owed to it (docs/design.md, rule 8).
    REPORT = "the gateway reported it paid"
    EXPIRY = "its window ended"
    CANCEL = "it was cancelled"

    __hash__ = object.__hash__  # as State's


_TRANSITIONS: dict[tuple[State, Closing], State] = {
    (State.OPEN, Closing.CREDIT): State.PAID,
    (State.OPEN, Closing.REPORT): State.PAID,
    (State.OPEN, Closing.EXPIRY): State.EXPIRED,
    (State.OPEN, Closing.CANCEL): State.CANCELLED,
}

# What the gateway calls each state: a cancelled invoice is an expired one to it.
_STATUS: dict[State, InvoiceStatus] = {
    State.OPEN: InvoiceStatus.PENDING,
    State.PAID: InvoiceStatus.PAID,
    State.EXPIRED: InvoiceStatus.EXPIRED,
    State.CANCELLED: InvoiceStatus.EXPIRED,
}

# An invoice tracked with a final status is recorded as closed by it.
_ON_TRACK: dict[InvoiceStatus, Closing] = {
    InvoiceStatus.PAID: Closing.REPORT,
    InvoiceStatus.EXPIRED: Closing.EXPIRY,
}


def after(state: State, closing: Closing) -> State:
    """The state ``closing`` leads to from ``state``; ``RuntimeError`` if none does."""
    try:
        return _TRANSITIONS[state, closing]
    except KeyError:
        message = f"an invoice {state.value} cannot close because {closing.value}"
        raise RuntimeError(message) from None


def status_of(state: State) -> InvoiceStatus:
    """The public status of an invoice in ``state``."""
    return _STATUS[state]


def closing_on_track(status: InvoiceStatus | str) -> Closing | None:
    """What closes an invoice tracked with ``status``; None keeps it open.

    Any case is read, as the models read it; an unknown value counts as pending,
    so that a payment is never lost.
    """
    parsed = InvoiceStatus.parse(status) if isinstance(status, str) else status
    return _ON_TRACK.get(parsed) if isinstance(parsed, InvoiceStatus) else None
