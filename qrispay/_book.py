"""The invoice book: the invoices the engine tracks, open and recently closed.

Indexed by total so that judging a row costs one lookup however many invoices
are tracked; the totals it holds or reserves are what keeps two invoices from
sharing one (docs/design.md, rule 6). It changes an invoice's state only
through ``close()``, by the table in ``_state``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

import attrs

from ._journal import Journal
from ._state import Closing, State, after, status_of
from .models import Invoice, InvoiceStatus, Mutation

__all__ = ["InvoiceBook", "Tracked", "expiry_order"]


class Tracked:
    """One invoice the engine knows. Slotted: there is one per open invoice."""

    __slots__ = ("closed_at", "invoice", "owed", "seq", "start", "state", "waiting")

    def __init__(self, invoice: Invoice, start: datetime) -> None:
        self.invoice = invoice  # its current state: the status is updated when it closes
        self.start = start  # created_at - skew: where its window, and its late range, begin
        self.state = State.OPEN
        self.closed_at: datetime | None = None
        # A gateway report is owed the feed row that backs it (rule 8).
        self.owed = False
        # Breaks ties between invoices closed at the same instant: the later close wins.
        self.seq = 0
        # Credits of its total dated after its window while it is still open: they
        # cannot pay it, and are judged (late or duplicate) when it closes.
        self.waiting: list[Mutation] | None = None

    def owed_until(self, skew: timedelta) -> datetime:
        """The last row date an owed gateway report pairs with: its window's end,
        or the report itself when that came later (the payment it saw came first)."""
        return max(self.invoice.expired_at + skew, self.closed)

    @property
    def closed(self) -> datetime:
        """When it closed; only asked of a closed invoice."""
        if self.closed_at is None:
            raise RuntimeError(f"invoice {self.invoice.invoice_id!r} is still open")
        return self.closed_at

    def recency(self) -> tuple[datetime, int]:
        """Orders closed invoices: the one closed last is the greatest."""
        return (self.closed, self.seq)


# A frozen attrs class sets each field through ``object.__setattr__``; the
# slots' own setters do the same directly (as ``_rows._model`` does for rows).
_new = object.__new__
(_id, _amount, _fee, _total, _status, _image, _expired, _created, _payload) = (
    Invoice.__dict__[field.name].__set__ for field in attrs.fields(Invoice)
)


def _with_status(invoice: Invoice, status: InvoiceStatus) -> Invoice:
    """``invoice`` with another status: what ``attrs.evolve`` gives, made directly
    (evolve inspects the class on every call, on the path of every payment)."""
    changed: Invoice = _new(Invoice)
    _id(changed, invoice.invoice_id)
    _amount(changed, invoice.amount)
    _fee(changed, invoice.fee)
    _total(changed, invoice.total)
    _status(changed, status)
    _image(changed, invoice.qris_image)
    _expired(changed, invoice.expired_at)
    _created(changed, invoice.created_at)
    _payload(changed, invoice.qris_payload)
    return changed


# What each closing of an open invoice leads to, read from the table once.
_FROM_OPEN: dict[Closing, tuple[State, InvoiceStatus]] = {
    closing: (after(State.OPEN, closing), status_of(after(State.OPEN, closing)))
    for closing in Closing
}


def expiry_order(record: Tracked) -> tuple[datetime, str]:
    """Orders invoices by when their window ends, oldest first."""
    return (record.invoice.expired_at, record.invoice.invoice_id)


class InvoiceBook:
    """Every tracked invoice, by id and by total, with the expiry and pruning heaps.

    ``skew`` and ``late_grace`` are the engine's: they decide how long a closed
    invoice keeps its total and how long it is kept at all.
    """

    def __init__(self, skew: timedelta, late_grace: timedelta) -> None:
        self._skew = skew
        self._late_grace = late_grace
        self._grace_skew = late_grace + skew
        self._two_skews = skew + skew
        self.records: dict[str, Tracked] = {}
        self.open: dict[str, Tracked] = {}
        # A list only so that an inconsistent state (two open invoices, one total)
        # can be represented and reported as ambiguous instead of silently resolved.
        self.open_by_total: dict[int, list[Tracked]] = {}
        self.closed_by_total: dict[int, list[Tracked]] = {}
        # The latest reservation of each closed total: (until, seq, invoice_id), so
        # that allocating a total costs one lookup however many invoices closed.
        self._reserved: dict[int, tuple[datetime, int, str]] = {}
        # Lazy heaps: entries of invoices closed by other means are skipped when popped.
        self._expiry: list[tuple[datetime, str]] = []
        self._expiry_stale = 0
        self._prune: list[tuple[datetime, int, str]] = []
        #: Counts the closes, so that each one gets its own ``Tracked.seq``.
        self.seq = 0
        #: When the last close's late grace ends: a late payment may come until then.
        self.busy_until: datetime | None = None
        #: Notes the records added, changed and forgotten, when a store keeps them.
        self.journal: Journal | None = None

    # -- adding -------------------------------------------------------------------

    def add(self, invoice: Invoice, start: datetime) -> Tracked:
        """Track ``invoice`` as open, its window starting at ``start``."""
        record = Tracked(invoice, start)
        self.records[invoice.invoice_id] = record
        self._add_open(record)
        self.touch(record)
        if self.journal is not None:
            self.journal.new.add(invoice.invoice_id)
        return record

    def remove(self, invoice_id: str) -> None:
        """Forget a record at once, as if never tracked (a total another worker
        took first). The lazy heaps skip it when they reach it."""
        record = self.records.pop(invoice_id, None)
        if record is None:
            return
        by_total = self.open_by_total if record.state is State.OPEN else self.closed_by_total
        self.open.pop(invoice_id, None)
        same_total = by_total.get(record.invoice.total, [])
        if record in same_total:
            same_total.remove(record)
            if not same_total:
                del by_total[record.invoice.total]
        if self.journal is not None:
            self.journal.records.discard(invoice_id)
            self.journal.new.discard(invoice_id)
            self.journal.closed.discard(invoice_id)

    def replace(self, record: Tracked) -> None:
        """Take ``record`` as another worker committed it, in place of what is
        known of that invoice here."""
        had_journal, self.journal = self.journal, None
        try:
            self.remove(record.invoice.invoice_id)
        finally:
            self.journal = had_journal
        self.adopt(record)
        self.seq = max(self.seq, record.seq)
        self.keep_busy_for(record)

    def keep_busy_for(self, record: Tracked) -> None:
        """Poll through the late grace of ``record``'s close: a worker that does not
        poll closes invoices (cancels) without writing ``busy_until``."""
        if record.closed_at is not None:
            busy_until = record.closed_at + self._late_grace
            if self.busy_until is None or busy_until > self.busy_until:
                self.busy_until = busy_until

    def touch(self, record: Tracked) -> None:
        """Note that ``record`` changed (for the store, if there is one)."""
        if self.journal is not None:
            self.journal.records.add(record.invoice.invoice_id)

    def adopt(self, record: Tracked) -> None:
        """Take back a record as it was (a restored snapshot), open or closed."""
        self.records[record.invoice.invoice_id] = record
        if record.state is State.OPEN:
            self._add_open(record)
        else:
            self._add_closed(record)

    def _add_open(self, record: Tracked) -> None:
        invoice = record.invoice
        self.open[invoice.invoice_id] = record
        self.open_by_total.setdefault(invoice.total, []).append(record)
        heapq.heappush(self._expiry, (invoice.expired_at, invoice.invoice_id))

    def _add_closed(self, record: Tracked, at: datetime | None = None) -> None:
        # ``at`` is when it closed, when the caller has it at hand.
        invoice = record.invoice
        total, seq = invoice.total, record.seq
        closed = record.closed if at is None else at
        self.closed_by_total.setdefault(total, []).append(record)
        skew = self._skew
        # Rule 6: late_grace + skew after closing. An owed gateway report keeps it
        # longer, until no new invoice's window (which starts skew before it was
        # made) can reach the report's pairing range: else a second customer's
        # payment would be taken for the first one's.
        until = closed + self._grace_skew
        if record.owed:
            until = max(until, record.owed_until(skew) + skew)
        current = self._reserved.get(total)
        if current is None or until > current[0] or (until == current[0] and seq > current[1]):
            self._reserved[total] = (until, seq, invoice.invoice_id)
        # Kept while a row could still concern it (a late or duplicate payment, the
        # pairing of a gateway report) or its total is reserved; rows dated before
        # the horizon are ignored, so past that it can go. With durations never
        # negative this is the latest of closed + late_grace + skew, expired_at +
        # skew and owed_until + skew.
        keep_until = max(closed + self._grace_skew, invoice.expired_at + self._two_skews)
        heapq.heappush(self._prune, (keep_until, seq, invoice.invoice_id))

    # -- looking up ---------------------------------------------------------------

    def record(self, invoice_id: str) -> Tracked:
        """The record of ``invoice_id``; ``KeyError(invoice_id)`` when unknown."""
        try:
            return self.records[invoice_id]
        except KeyError:
            raise KeyError(invoice_id) from None

    def holder(self, total: int, now: datetime) -> str | None:
        """The id of the invoice holding ``total`` at ``now``, if any (rule 6)."""
        opened = self.open_by_total.get(total)
        if opened:
            return opened[0].invoice.invoice_id
        reserved = self._reserved.get(total)
        if reserved is None:
            return None
        if now > reserved[0]:
            del self._reserved[total]
            return None
        return reserved[2]

    def due_for_expiry(self, cutoff: datetime) -> list[str]:
        """The ids of the open invoices with ``expired_at < cutoff``, oldest first.

        Walks only the part of the expiry heap dated before ``cutoff`` (a heap's
        entries before a date form a subtree at its root), so it costs what is
        due, not a scan of every open invoice. Closes nothing.
        """
        heap, opened = self._expiry, self.open
        due: dict[str, datetime] = {}
        stack = [0] if heap and heap[0][0] < cutoff else []
        while stack:
            index = stack.pop()
            expired_at, invoice_id = heap[index]
            record = opened.get(invoice_id)
            if record is not None and record.invoice.expired_at == expired_at:
                due[invoice_id] = expired_at
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap) and heap[child][0] < cutoff:
                    stack.append(child)
        return [invoice_id for _, invoice_id in sorted((at, i) for i, at in due.items())]

    def past_among(self, invoice_ids: Iterable[str], now: datetime) -> list[Tracked]:
        """The open invoices among ``invoice_ids`` with ``expired_at < now``, once
        each, oldest first; unknown and closed ids are skipped."""
        due = {
            record.invoice.invoice_id: record
            for record in (self.open.get(invoice_id) for invoice_id in invoice_ids)
            if record is not None and now > record.invoice.expired_at
        }
        return sorted(due.values(), key=expiry_order)

    def open_past_window(self, total: int, date: datetime) -> Tracked | None:
        """The open invoice of ``total`` whose window ended before ``date``, less
        than ``late_grace`` before (the one ending last), if any."""
        skew, late_grace = self._skew, self._late_grace
        past = [
            record
            for record in self.open_by_total.get(total, ())
            if record.invoice.expired_at + skew < date <= record.invoice.expired_at + late_grace
        ]
        return max(past, key=expiry_order) if past else None

    def owed_report(self, total: int, date: datetime) -> Tracked | None:
        """The invoice of ``total`` closed last whose gateway report is still owed a
        feed row dated ``date`` (rule 8), if any."""
        skew = self._skew
        owed = [
            record
            for record in self.closed_by_total.get(total, ())
            if record.owed and record.start <= date <= record.owed_until(skew)
        ]
        return max(owed, key=Tracked.recency) if owed else None

    def recently_closed(self, total: int, date: datetime) -> Tracked | None:
        """The invoice of ``total`` closed last that a credit dated ``date`` is still
        tied to (less than ``late_grace`` after it closed), if any (rule 5)."""
        late_grace = self._late_grace
        closed = self.closed_by_total.get(total, ())
        recent = [record for record in closed if record.start <= date <= record.closed + late_grace]
        return max(recent, key=Tracked.recency) if recent else None

    # -- closing ------------------------------------------------------------------

    def close(self, record: Tracked, closing: Closing, at: datetime) -> Invoice:
        """Close an open invoice at ``at``: the invoice as it reads now."""
        return self._close(record, closing, at, popped=False)

    def expire_due(self, now: datetime) -> Iterator[Tracked]:
        """Close as expired, oldest first, the open invoices with ``expired_at < now``,
        each at its ``expired_at``; yields each one as it closes, before the next."""
        heap = self._expiry
        while heap and heap[0][0] < now:
            expired_at, invoice_id = heapq.heappop(heap)
            record = self.open.get(invoice_id)
            if record is None or record.invoice.expired_at != expired_at:
                self._expiry_stale = max(0, self._expiry_stale - 1)
                continue
            self._close(record, Closing.EXPIRY, expired_at, popped=True)
            yield record

    def _close(self, record: Tracked, closing: Closing, at: datetime, *, popped: bool) -> Invoice:
        if record.state is State.OPEN:
            state, status = _FROM_OPEN[closing]
        else:
            state = after(record.state, closing)  # raises: a closed invoice stays closed
            status = status_of(state)
        invoice = record.invoice
        invoice_id, total = invoice.invoice_id, invoice.total
        del self.open[invoice_id]
        same_total = self.open_by_total[total]
        if len(same_total) == 1 and same_total[0] is record:
            del self.open_by_total[total]
        else:
            same_total.remove(record)
        self.seq += 1
        record.state = state
        record.closed_at = at
        record.owed = closing is Closing.REPORT
        record.seq = self.seq
        record.invoice = _with_status(invoice, status)
        self._add_closed(record, at)
        self.touch(record)
        if self.journal is not None:
            self.journal.closed.add(invoice.invoice_id)
        busy_until = at + self._late_grace
        if self.busy_until is None or busy_until > self.busy_until:
            self.busy_until = busy_until
        if not popped:
            self._expiry_stale += 1
            if self._expiry_stale > 64 and self._expiry_stale > len(self.open):
                self._expiry = [(r.invoice.expired_at, i) for i, r in self.open.items()]
                heapq.heapify(self._expiry)
                self._expiry_stale = 0
        return record.invoice

    # -- forgetting ---------------------------------------------------------------

    def forget_before(self, horizon: datetime) -> None:
        """Forget, oldest first, the closed invoices no row at or after ``horizon``
        can concern."""
        prune = self._prune
        while prune and prune[0][0] < horizon:
            _, seq, invoice_id = heapq.heappop(prune)
            record = self.records.get(invoice_id)
            if record is None or record.seq != seq or record.state is State.OPEN:
                continue
            del self.records[invoice_id]
            if self.journal is not None:
                self.journal.records.discard(invoice_id)
                self.journal.forgotten.add(invoice_id)
            same_total = self.closed_by_total[record.invoice.total]
            same_total.remove(record)
            if not same_total:
                del self.closed_by_total[record.invoice.total]
