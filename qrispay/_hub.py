"""The Reconciler's events on their way out: subscribers, waiters, remembered outcomes.

Publishing never blocks: a subscriber gets events through its own bounded
buffer, and a waiter is woken with the event that settled its invoice.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeAlias

import anyio

from ._subscription import Subscription
from .engine import ReconciliationEngine
from .errors import (
    InvoiceCancelledError,
    InvoiceExpiredError,
    ReconcilerStoppedError,
)
from .events import Event, InvoiceCancelled, InvoiceExpired, InvoicePaid
from .models import InvoiceStatus

__all__ = ["OUTCOMES_KEPT", "EventHub", "EventSubscription", "Outcome", "paid_or_raise"]

#: How many invoice outcomes ``wait_for_payment`` remembers for late callers.
OUTCOMES_KEPT = 10_000

#: The events that settle an invoice, one way or the other.
Outcome: TypeAlias = InvoicePaid | InvoiceExpired | InvoiceCancelled


class EventSubscription(Subscription[tuple[int, Event]]):
    """Events from the moment of subscribing, in order, through a bounded buffer.

    Iterate it with ``async for``. A subscriber that falls more than its buffer
    behind gets ``EventsOverflowError`` after the events it did receive: never
    a silent gap, and never a slower poll loop. Iteration ends when the
    Reconciler stops. Close it (``async with``, or ``aclose()``) to unsubscribe.
    """

    # Each event is kept with its commit ``seq`` (0 without a store), for a
    # replaying reader (``_next``).
    def _offer(self, event: Event, seq: int) -> None:
        self._put((seq, event))

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> Event:
        return (await self._next())[1]

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Waiter:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Outcome | None = None


class EventHub:
    """Where published events go: every subscriber, and the waiters of the
    invoice an outcome settles. The last ``OUTCOMES_KEPT`` outcomes are
    remembered for callers that come late."""

    def __init__(self, buffer: int):
        self._buffer = buffer
        self._subscribers: list[EventSubscription] = []
        self._waiters: dict[str, list[_Waiter]] = {}
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        #: The loop ran and is not running now: nothing will be published.
        self.stopped = False

    # -- publishing ----------------------------------------------------------

    def publish(self, events: list[tuple[int, Event]]) -> None:
        """Hand each event (with its commit ``seq``) to the waiters it settles and
        to every subscriber."""
        for seq, event in events:
            if isinstance(event, (InvoicePaid, InvoiceExpired, InvoiceCancelled)):
                self._settle(event)
            for subscriber in list(self._subscribers):
                subscriber._offer(event, seq)

    def _settle(self, event: Outcome) -> None:
        invoice_id = event.invoice.invoice_id
        self._outcomes[invoice_id] = event
        self._outcomes.move_to_end(invoice_id)
        while len(self._outcomes) > OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)
        for waiter in self._waiters.pop(invoice_id, ()):
            waiter.outcome = event
            waiter.done.set()

    # -- subscribers ---------------------------------------------------------

    def subscribe(self, buffer: int | None = None) -> EventSubscription:
        """A new subscription (already ended if the loop is stopped)."""
        subscription = EventSubscription(self, buffer or self._buffer)
        if self.stopped:
            subscription._end()
        else:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: EventSubscription) -> None:
        """Stop offering events to ``subscription`` (no error if it was not subscribed)."""
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    # -- the loop starting and stopping ---------------------------------------

    def open(self) -> None:
        """The loop starts: events may come again."""
        self.stopped = False

    def close(self) -> None:
        """The loop stopped: subscriptions end, and every waiter is woken empty-handed."""
        self.stopped = True
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._end()
        # Nobody will settle them now: waiting on would be waiting for ever.
        waiters, self._waiters = self._waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                waiter.done.set()

    # -- outcomes ------------------------------------------------------------

    def known_outcome(self, invoice_id: str, engine: ReconciliationEngine) -> Outcome | None:
        """How the invoice ended, or None while it is open.

        The remembered event answers first. Without one (the invoice was tracked
        already closed, or closed too long ago to be remembered) the engine's
        record answers: ``InvoicePaid`` with ``source="record"`` and no mutation,
        or ``InvoiceExpired``, also for a cancellation, since the record does not
        tell the two apart. ``KeyError`` if neither knows the invoice.
        """
        outcome = self._outcomes.get(invoice_id)
        if outcome is not None:
            return outcome
        state = engine.state_of(invoice_id)
        if state is None:
            raise KeyError(invoice_id)
        if state is InvoiceStatus.PENDING:
            return None
        invoice = engine.get(invoice_id)
        assert invoice is not None
        if state is InvoiceStatus.PAID:
            return InvoicePaid(invoice, None, "record")
        return InvoiceExpired(invoice)

    async def wait_for_outcome(
        self, invoice_id: str, engine: ReconciliationEngine, *, timeout: float | None
    ) -> Outcome:
        """The known outcome at once, else the one that settles the invoice.

        ``TimeoutError`` after ``timeout`` seconds; ``ReconcilerStoppedError``
        when the loop is stopped or stops first.
        """
        outcome = self.known_outcome(invoice_id, engine)
        if outcome is not None:
            return outcome
        if self.stopped:
            raise ReconcilerStoppedError(
                f"the Reconciler is stopped; invoice {invoice_id!r} is not being watched"
            )
        waiter = _Waiter()
        self._waiters.setdefault(invoice_id, []).append(waiter)
        try:
            with anyio.fail_after(timeout):
                await waiter.done.wait()
        finally:
            waiters = self._waiters.get(invoice_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[invoice_id]
        if waiter.outcome is None:
            raise ReconcilerStoppedError(
                f"the Reconciler stopped before invoice {invoice_id!r} was settled"
            )
        return waiter.outcome


def paid_or_raise(outcome: Outcome) -> InvoicePaid:
    """The ``InvoicePaid`` itself; ``InvoiceCancelledError`` or ``InvoiceExpiredError``
    for an invoice that closed unpaid."""
    if isinstance(outcome, InvoicePaid):
        return outcome
    if isinstance(outcome, InvoiceCancelled):
        raise InvoiceCancelledError(outcome.invoice)
    if isinstance(outcome, InvoiceExpired):
        raise InvoiceExpiredError(outcome.invoice)
    raise AssertionError(f"unexpected outcome {outcome!r}")
