"""The reconciliation engine: invoices and feed rows in, events out.

It does no I/O and never reads the clock: every call takes ``now``, so it can
be driven by a real poller, a simulation in virtual time, or a test, and it
behaves the same. The matching rules it implements are those of docs/design.md
("Matching rules"); the short version:

* a row is judged once, by its key, the first time it is seen;
* a credit pays the open invoice whose total it equals, if dated inside that
  invoice's window (``created_at - skew .. expired_at + skew``);
* otherwise a credit of a recently closed invoice's total is a late or a
  duplicate payment, and anything else is an unmatched credit;
* the balance carried by each row must chain from the row before it.

This module judges rows; the invoices live in ``_book``, their states in
``_state``, the remembered rows in ``_memory``, the loop over an answer's fresh rows
(the balance chain with it) in ``_ingest`` and the snapshot form in ``_snapshot``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from . import _snapshot
from ._book import InvoiceBook, Tracked
from ._chain import BalanceChain
from ._checks import require_aware, require_duration, require_positive_int
from ._ingest import judge_fresh, paid_by, unseen
from ._memory import ExpiringMemory, key_of
from ._state import Closing, State, closing_on_track, status_of
from .errors import AllocationError, TotalConflictError
from .events import (
    AmbiguousCredit,
    DuplicatePayment,
    Event,
    InvoiceCancelled,
    InvoiceExpired,
    InvoicePaid,
    LatePayment,
    RejectedRows,
    UnmatchedCredit,
)
from .models import (
    JAKARTA,
    Invoice,
    InvoiceStatus,
    Mutation,
    MutationBatch,
    RejectedRow,
)

__all__ = ["ReconciliationEngine"]

#: The default of ``ingest(rejected=...)``: take a batch's own rejected rows.
_FROM_BATCH: Any = object()


class ReconciliationEngine:
    """Turns feed rows into payment facts, safely. Pure: no I/O, no clock.

    ``started_at`` is when the service started watching the feed: rows dated
    before ``started_at - skew`` are history (remembered, not reported, except
    that a history credit still pays an open invoice). ``skew`` widens every
    invoice window (feeds drop seconds), ``late_grace`` is how long after an
    invoice closes a credit of its total is still tied to it, ``retention`` how
    long row keys are remembered; older rows are ignored.
    """

    def __init__(
        self,
        *,
        started_at: datetime,
        skew: timedelta = timedelta(minutes=2),
        late_grace: timedelta = timedelta(hours=1),
        retention: timedelta = timedelta(days=7),
    ) -> None:
        require_aware(started_at, "started_at")
        require_duration(skew, "skew")
        require_duration(late_grace, "late_grace")
        require_duration(retention, "retention")
        if not retention:
            raise ValueError("retention must be positive")
        self._started_at = started_at
        self._skew = skew
        self._late_grace = late_grace
        self._retention = retention
        self._history_before = started_at - skew

        self._book = InvoiceBook(skew, late_grace)
        self._seen = ExpiringMemory()
        # Fingerprints of unreadable rows, dated when first reported.
        self._rejected = ExpiringMemory()
        # Only moves forward: a key once forgotten must never be judged again, even
        # if a later call passes an earlier `now`.
        self._horizon: datetime | None = None
        self._chain = BalanceChain()

    # -- settings -----------------------------------------------------------------

    @property
    def started_at(self) -> datetime:
        """When the service started watching; earlier rows (minus ``skew``) are history."""
        return self._started_at

    @property
    def skew(self) -> timedelta:
        """How much every invoice window is widened on both sides."""
        return self._skew

    @property
    def late_grace(self) -> timedelta:
        """How long after closing a credit of an invoice's total is still tied to it."""
        return self._late_grace

    @property
    def retention(self) -> timedelta:
        """How long row keys are remembered; older rows are ignored."""
        return self._retention

    # -- invoices -----------------------------------------------------------------

    def track(self, invoice: Invoice, *, now: datetime) -> None:
        """Start watching ``invoice``.

        Raises ``TotalConflictError`` when an open invoice, or one closed less than
        ``late_grace + skew`` ago, holds the same total. An ``invoice_id`` already
        tracked changes nothing. An invoice already ``paid`` is recorded as a
        gateway report at ``now`` (without an event), one already ``expired`` as
        closed; any other status counts as pending, so a payment is never lost.
        """
        require_aware(now, "now")
        book = self._book
        if invoice.invoice_id in book.records:
            return
        require_aware(invoice.expired_at, "invoice.expired_at")
        if invoice.created_at is not None:
            require_aware(invoice.created_at, "invoice.created_at")
        total = invoice.total
        if not isinstance(total, int) or isinstance(total, bool):
            raise ValueError(f"invoice total must be an int, not {type(total).__name__}")
        holder = book.holder(total, now)
        if holder is not None:
            raise TotalConflictError(total, holder)

        created = now if invoice.created_at is None else invoice.created_at
        # In the feed's zone, so that judging a row compares like with like.
        record = book.add(invoice, (created - self._skew).astimezone(JAKARTA))
        closing = closing_on_track(invoice.status)
        if closing is Closing.REPORT:
            book.close(record, closing, now)
        elif closing is Closing.EXPIRY:
            book.close(record, closing, min(invoice.expired_at, now))

    def unique_total(self, amount: int, *, now: datetime, max_code: int = 999) -> int:
        """``amount`` plus the smallest code in ``1..max_code`` whose total is neither
        open nor reserved. Reserves nothing: ``track()`` the invoice before any
        ``await``. ``AllocationError`` when every code is taken."""
        require_aware(now, "now")
        require_positive_int(amount, "amount")
        require_positive_int(max_code, "max_code")
        for code in range(1, max_code + 1):
            if self._book.holder(amount + code, now) is None:
                return amount + code
        raise AllocationError(f"no free unique total for amount {amount} (codes 1..{max_code})")

    def due_for_expiry(self, cutoff: datetime) -> list[str]:
        """The ids of the open invoices past their window at ``cutoff``
        (``expired_at < cutoff``), oldest ``expired_at`` first.

        Closes nothing: pass them to ``expire(now=cutoff, invoice_ids=...)``, for
        instance after asking the gateway about each. Costs what is due, not a
        scan of every open invoice.
        """
        require_aware(cutoff, "cutoff")
        return self._book.due_for_expiry(cutoff)

    def expire(self, *, now: datetime, invoice_ids: Iterable[str] | None = None) -> list[Event]:
        """Close the open invoices past their ``expired_at`` (``now > expired_at``),
        as expired at ``expired_at``: one ``InvoiceExpired`` each, oldest first.

        With ``invoice_ids``, only those; ids that are unknown, closed or not yet
        past are skipped.
        """
        require_aware(now, "now")
        book = self._book
        events: list[Event] = []
        if invoice_ids is None:
            for record in book.expire_due(now):
                events.append(InvoiceExpired(record.invoice))
                events += self._judge_waiting(record)
            return events
        if isinstance(invoice_ids, str):
            raise TypeError("invoice_ids must be a collection of ids, not one string")
        for record in book.past_among(invoice_ids, now):
            closed = book.close(record, Closing.EXPIRY, record.invoice.expired_at)
            events.append(InvoiceExpired(closed))
            events += self._judge_waiting(record)
        return events

    def cancel(self, invoice_id: str, *, now: datetime) -> list[Event]:
        """Close an open invoice as cancelled at ``now``: ``[InvoiceCancelled]``.
        A closed invoice changes nothing (``[]``); an unknown id raises ``KeyError``."""
        require_aware(now, "now")
        record = self._book.record(invoice_id)
        if record.state is not State.OPEN:
            return []
        cancelled = InvoiceCancelled(self._book.close(record, Closing.CANCEL, now))
        return [cancelled, *self._judge_waiting(record)]

    def mark_paid(self, invoice_id: str, *, now: datetime, source: str = "gateway") -> list[Event]:
        """Record a payment reported outside the feed (by the gateway): the invoice
        closes as paid at ``now``, ``[InvoicePaid(mutation=None, source=source)]``.

        The first feed credit of its total dated inside its window, whenever it
        arrives, is that same payment and is paired silently; any further one is
        judged as usual. A closed invoice changes nothing (``[]``); an unknown id
        raises ``KeyError``.
        """
        require_aware(now, "now")
        record = self._book.record(invoice_id)
        if record.state is not State.OPEN:
            return []
        paid = InvoicePaid(self._book.close(record, Closing.REPORT, now), None, source)
        return [paid, *self._judge_waiting(record)]

    def open_invoices(self) -> list[Invoice]:
        """The invoices still open, in the order they were tracked."""
        return [record.invoice for record in self._book.open.values()]

    def get(self, invoice_id: str) -> Invoice | None:
        """The invoice as the engine knows it now (status updated), or None if unknown."""
        record = self._book.records.get(invoice_id)
        return None if record is None else record.invoice

    def state_of(self, invoice_id: str) -> InvoiceStatus | None:
        """``PENDING``, ``PAID`` or ``EXPIRED`` (also for a cancelled invoice, as the
        gateway says), or None if the id is unknown."""
        record = self._book.records.get(invoice_id)
        return None if record is None else status_of(record.state)

    def has_work(self, *, now: datetime) -> bool:
        """True while an invoice is open, or one closed less than ``late_grace`` ago
        (a late or duplicate payment may still come): the feed is worth polling."""
        require_aware(now, "now")
        busy_until = self._book.busy_until
        return bool(self._book.open) or (busy_until is not None and now <= busy_until)

    # -- the feed -----------------------------------------------------------------

    def ingest(
        self,
        rows: Iterable[Mutation],
        *,
        now: datetime,
        rejected: Iterable[RejectedRow] | None = _FROM_BATCH,
    ) -> list[Event]:
        """Judge the rows not seen before and return what they mean, in date order.

        Rows are taken oldest first (rows of equal dates in the reverse of the
        order given, since the feed lists newest first); that one order decides
        deduplication, matching and the balance chain. Rows already seen cost
        one lookup and produce nothing.

        ``rejected`` are the rows of the same answer that could not be read:
        each is reported once, as ``RejectedRows``, before the others. When it
        is not given and ``rows`` is a ``MutationBatch`` (what
        ``MutationClient.fetch()`` returns), the batch's own ``rejected`` rows
        are used, so that an unreadable row is never dropped silently; an
        explicit ``rejected`` (``None`` or ``()`` for none) always wins.
        """
        require_aware(now, "now")
        if rejected is _FROM_BATCH:
            rejected = rows.rejected if isinstance(rows, MutationBatch) else None
        fresh = self._unseen(rows, now)
        events: list[Event] = []
        if rejected:
            # The feed repeats its rows for a while; report a bad row once, not every poll.
            remember_new = self._rejected.remember_new
            first = tuple(
                row for row in rejected if remember_new(key_of((row.reason, row.raw)), now)
            )
            if first:
                events.append(RejectedRows(first))

        # In the feed's own zone: comparing datetimes of one tzinfo object skips
        # the offset arithmetic that mixed zones cost on every row.
        history_before = self._history_before.astimezone(JAKARTA)
        judge_fresh(
            fresh,
            events,
            seen=self._seen,
            chain=self._chain,
            book=self._book,
            history_before=history_before,
            judge=self._judge,
        )
        return events

    def _unseen(self, rows: Iterable[Mutation], now: datetime) -> list[Mutation]:
        """The rows not seen before and inside retention, in processing order.

        Forgets what retention lets go only after the lookups, so that a row
        remembered until now is not judged again by this call.
        """
        horizon = self._next_horizon(now)
        fresh = unseen(rows, self._seen.keys, horizon.astimezone(JAKARTA))
        self._advance(horizon)
        return fresh

    def _judge(self, row: Mutation, history: bool) -> list[Event]:
        book = self._book
        amount = row.amount
        if amount not in book.open_by_total and amount not in book.closed_by_total:
            # No invoice, open or closed, has this total: rules 4, 5 and 8 all
            # come to the same verdict (``judge_fresh`` reaches it without a call).
            return [] if history else [UnmatchedCredit(row)]
        date = row.date
        skew = self._skew
        same_total = book.open_by_total.get(amount, ())
        earliest_end = date - skew  # inside a window: start <= date <= expired_at + skew
        fitting = [
            record
            for record in same_total
            if record.start <= date and earliest_end <= record.invoice.expired_at
        ]
        if len(fitting) == 1:
            record = fitting[0]
            verdict: list[Event] = [paid_by(self._book.close(record, Closing.CREDIT, date), row)]
            if record.waiting is not None:
                verdict += self._judge_waiting(record)
            return verdict
        if fitting:
            return [AmbiguousCredit(row, tuple(record.invoice for record in fitting))]

        # Checked after the open invoices: an owed total stays reserved until no new
        # invoice's window can reach its pairing range, so both never fit one row.
        if self._pair_owed(row):
            return []
        if history:
            return []
        # Paid after the window of an invoice not yet closed (the loop closes it only
        # after a fetch past its window, often this very fetch): a late payment for
        # it, not an unmatched one, so its verdict waits for it to close.
        waiting = self._book.open_past_window(row.amount, date)
        if waiting is not None:
            if waiting.waiting is None:
                waiting.waiting = []
            waiting.waiting.append(row)
            self._book.touch(waiting)
            return []
        return [self._judge_closed(row)]

    def _pair_owed(self, row: Mutation) -> bool:
        """Rule 8: the first credit inside an owed report's range is that payment."""
        owed = self._book.owed_report(row.amount, row.date)
        if owed is not None:
            owed.owed = False
            self._book.touch(owed)
        return owed is not None

    def _judge_closed(self, row: Mutation) -> Event:
        """Rule 5: a credit of a closed invoice's total, or an unmatched one."""
        record = self._book.recently_closed(row.amount, row.date)
        if record is None:
            return UnmatchedCredit(row)
        if record.state is State.PAID:
            return DuplicatePayment(record.invoice, row)
        return LatePayment(record.invoice, row)

    def _judge_waiting(self, record: Tracked) -> list[Event]:
        waiting, record.waiting = record.waiting, None
        return [self._judge_closed(row) for row in waiting or () if not self._pair_owed(row)]

    # -- retention ----------------------------------------------------------------

    def _next_horizon(self, now: datetime) -> datetime:
        cutoff = now - self._retention
        if self._horizon is not None and cutoff <= self._horizon:
            return self._horizon
        return cutoff

    def _advance(self, horizon: datetime) -> None:
        """Forget, oldest first, what no row at or after ``horizon`` can concern."""
        self._horizon = horizon
        self._seen.forget_before(horizon)
        self._rejected.forget_before(horizon)
        self._book.forget_before(horizon)

    # -- snapshot -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the engine knows, as plain JSON-serialisable data.

        ``ReconciliationEngine.restore(snapshot)`` gives an engine that behaves
        identically from then on (also after a ``json`` round trip).
        """
        return _snapshot.dump(self)

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> ReconciliationEngine:
        """An engine in the state ``snapshot()`` recorded (``started_at`` included).

        Raises ``ValueError`` for a snapshot of another version or a damaged one.
        """
        return _snapshot.load(cls, snapshot)

    def __repr__(self) -> str:
        return (
            f"<ReconciliationEngine open={len(self._book.open)} "
            f"tracked={len(self._book.records)} seen={len(self._seen)}>"
        )
