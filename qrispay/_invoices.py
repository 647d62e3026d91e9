"""The Reconciler's invoice methods: create, track, flush, cancel, wait, refresh
(a mixin of ``Reconciler``). With a store, a new invoice returns only once
it is committed with its total claimed in the store, and an invoice unknown
here is looked for in the store before it is called unknown
(docs/design.md, "Several workers").
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from ._hub import EventHub, paid_or_raise
from ._issuing import CANCEL_BUDGET, MAX_CREATIONS, cancel_quietly, create_at_gateway, create_local
from ._keeper import Keeper
from .errors import StoreError, TotalConflictError
from .events import Event, InvoicePaid
from .gateway import GatewayClient
from .models import Invoice, InvoiceStatus

if TYPE_CHECKING:
    from .engine import ReconciliationEngine
    from .mutations import MutationClient

__all__ = ["LOCAL_TRIES", "InvoiceMethods"]

#: How many local totals one ``create_invoice`` may try in the store (codes 1..999).
LOCAL_TRIES = 1000


class InvoiceMethods:
    """The invoice half of ``Reconciler`` (a mixin: it uses the Reconciler's parts)."""

    _keeper: Keeper | None
    _engine: ReconciliationEngine | None
    _hub: EventHub
    gateway: GatewayClient | None
    feed: MutationClient
    static_qris: str | None
    invoice_ttl: timedelta

    if TYPE_CHECKING:

        @property
        def engine(self) -> ReconciliationEngine: ...
        def _now(self) -> datetime: ...
        def _poke(self) -> None: ...
        def _publish(self, events: list[tuple[int, Event]]) -> None: ...
        async def _commit(
            self, events: list[Event], fetch_started: datetime | None = None
        ) -> bool: ...

    def track(self, invoice: Invoice) -> None:
        """Watch an invoice made elsewhere (``TotalConflictError`` if its total is taken).

        Without a store, track the invoices you already have before the first
        poll, so a payment made while the service was down still pays them.
        With a store, the invoice is committed with the next poll at the
        latest; ``await rec.flush()`` to know it is. With several workers,
        flush before the customer can pay: until it is stored, a poller in
        another worker does not know it and would call its payment unmatched.
        """
        self.engine.track(invoice, now=self._now())
        self._poke()

    async def flush(self) -> None:
        """Commit every change not yet stored (tracked invoices, their events);
        returns once they are. Without a store it returns at once."""
        keeper = self._keeper
        if keeper is None or not keeper.loaded:
            return
        await self._commit([])
        if keeper.conflicts:
            conflict, keeper.conflicts = keeper.conflicts[0], []
            raise conflict

    async def create_invoice(self, amount: int) -> Invoice:
        """A new invoice, tracked at once.

        Through the gateway when there is one: if it hands out a total that is
        taken, a replacement is created first and the taken one is then
        cancelled; after three creations, ``TotalConflictError``. Without a
        gateway but with ``static_qris``: made locally, with a unique total and
        a dynamic QRIS payload (``qris_payload``) that carries it.
        """
        if self.gateway is None and self.static_qris is None:
            raise RuntimeError("create_invoice needs a gateway or a static_qris")
        keeper = self._keeper
        if keeper is None:
            return await self._make_invoice(amount, [])
        conflict: TotalConflictError | None = None
        made: list[Invoice] = []
        refused: list[Invoice] = []
        # A local total refused by the store is one another worker holds now, and
        # the next try learns it: workers creating at once in lockstep may refuse
        # one worker many times, but never more often than there are codes (then
        # unique_total raises AllocationError). Gateway creations stay capped.
        tries = MAX_CREATIONS if self.gateway is not None else LOCAL_TRIES
        try:
            for _ in range(tries):
                if self.gateway is not None and len(made) >= MAX_CREATIONS:
                    break
                # The totals other workers hold, so the one chosen is likely free.
                await keeper.catch_up(self.engine, self._publish)
                invoice = await self._make_invoice(amount, made)
                try:
                    # Returned only once it is committed (its total claimed in
                    # the store), so a crash cannot lose it.
                    await self._commit([])
                except BaseException:
                    await self._forget_unstored(invoice)
                    raise
                if self.engine.state_of(invoice.invoice_id) is not None:
                    # Any conflict left is a track()ed invoice's, for flush().
                    return invoice
                # Another worker took that total first: this invoice is not tracked.
                conflict = _take_conflict(keeper.conflicts, invoice.total)
                refused.append(invoice)
        finally:
            if refused and self.gateway is not None:
                # Only now, after the replacement, as for a total taken here: the
                # gateway could otherwise hand the same total straight back.
                with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_BUDGET):
                    for invoice in refused:
                        await cancel_quietly(self.gateway, invoice)
        assert conflict is not None
        raise conflict

    async def _make_invoice(self, amount: int, made: list[Invoice]) -> Invoice:
        if self.gateway is not None:
            return await create_at_gateway(
                self.gateway,
                lambda: self.engine,
                amount,
                clock=self._now,
                on_tracked=self._poke,
                made=made,
                merchant=self.feed.merchant,
            )
        assert self.static_qris is not None
        invoice = create_local(
            self.engine, self.static_qris, amount, now=self._now(), ttl=self.invoice_ttl
        )
        self._poke()
        return invoice

    async def _forget_unstored(self, invoice: Invoice) -> None:
        """After a failed commit: an invoice whose total was not claimed in the store
        is dropped (and cancelled at the gateway), so the caller, who gets the
        error, never holds an invoice that a crash would lose."""
        journal = self.engine._book.journal
        if journal is None or invoice.invoice_id not in journal.new:
            return  # claimed: it is stored, and the next commit takes the rest
        self.engine._book.remove(invoice.invoice_id)
        if self.gateway is not None:
            await cancel_quietly(self.gateway, invoice)

    async def cancel_invoice(self, invoice_id: str) -> list[Event]:
        """Cancel an open invoice: at the gateway (if any), then here.

        A paid invoice raises ``InvoiceNotCancellableError`` from the gateway.
        """
        await self._know(invoice_id)
        if self.engine.state_of(invoice_id) is None:
            raise KeyError(invoice_id)
        if self.gateway is not None:
            await self.gateway.cancel_invoice(invoice_id)
        for _ in range(2):
            events = self.engine.cancel(invoice_id, now=self._now())
            if await self._commit(events):
                return events
            # Refused: another worker closed it first (paid, or expired), and that
            # close stands; or this worker's lease went with what it judged, and
            # it is cancelled again on what the store holds, if still open there.
            if self.engine.state_of(invoice_id) is not InvoiceStatus.PENDING:
                return []
        # Only when the store could not even be read back after the refusal.
        raise StoreError(f"the cancellation of {invoice_id!r} could not be stored; try again")

    async def refresh(self) -> None:
        """Take what other workers on the store committed (their invoices, their
        events) now rather than within the second the loop takes; without a
        store it returns at once."""
        if self._keeper is not None:
            await self._keeper.catch_up(self.engine, self._publish)

    async def _know(self, invoice_id: str) -> None:
        # Another worker may have made it: read the store before saying "unknown".
        if self._keeper is not None and self.engine.state_of(invoice_id) is None:
            await self._keeper.catch_up(self.engine, self._publish)

    async def wait_for_payment(
        self, invoice_id: str, *, timeout: float | None = None
    ) -> InvoicePaid:
        """Wait until the invoice is paid and return the ``InvoicePaid`` event.

        Raises ``InvoiceExpiredError`` or ``InvoiceCancelledError`` when it closes
        unpaid, ``TimeoutError`` after ``timeout`` seconds, ``KeyError`` for an
        invoice that is not tracked, ``ReconcilerStoppedError`` if the loop stops
        first. An invoice that closed before this call
        answers at once; one that was tracked already paid, or closed too long
        ago for its event to be remembered, answers from the engine's record
        (``source="record"``, no mutation; a cancellation then reads as expiry).
        """
        await self._know(invoice_id)
        outcome = await self._hub.wait_for_outcome(invoice_id, self.engine, timeout=timeout)
        return paid_or_raise(outcome)


def _take_conflict(conflicts: list[TotalConflictError], total: int) -> TotalConflictError:
    """The conflict of a refused invoice, taken out of those ``flush()`` raises."""
    for index, conflict in enumerate(conflicts):
        if conflict.total == total:
            return conflicts.pop(index)
    # A flush() running beside this call took it first (and raised it there).
    return TotalConflictError(total, "", f"total {total} is already held by another worker")
