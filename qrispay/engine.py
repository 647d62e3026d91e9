"""The reconciliation engine: invoices and feed rows in, events out.

It does no I/O and never reads the clock: every call takes ``now``, so it can
be driven by a real poller, a simulation in virtual time, or a test, and it
behaves the same. The matching rules it implements are those of DESIGN.md
("Matching rules"); the short version:

* a row is judged once, by its key, the first time it is seen;
* a credit pays the open invoice whose total it equals, if dated inside that
  invoice's window (``created_at - skew .. expired_at + skew``);
* otherwise a credit of a recently closed invoice's total is a late or a
  duplicate payment, and anything else is an unmatched credit;
* the balance carried by each row must chain from the row before it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from .errors import AllocationError, TotalConflictError
from .events import (
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
from .models import Invoice, InvoiceStatus, Mutation, MutationBatch, MutationType, RejectedRow

__all__ = ["ReconciliationEngine"]

SNAPSHOT_VERSION = 1

# The life of a tracked invoice. "cancelled" is kept apart from "expired" only
# for the event it produced; both read EXPIRED, as the gateway says.
_OPEN = "open"
_PAID = "paid"
_EXPIRED = "expired"
_CANCELLED = "cancelled"
_STATES = (_OPEN, _PAID, _EXPIRED, _CANCELLED)


class _Tracked:
    """One invoice the engine knows. Slotted: there is one per open invoice."""

    __slots__ = ("closed_at", "invoice", "owed", "seq", "start", "state", "waiting")

    def __init__(self, invoice: Invoice, start: datetime) -> None:
        self.invoice = invoice  # its current state: the status is updated when it closes
        self.start = start  # created_at - skew: where its window, and its late range, begin
        self.state = _OPEN
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
        return (self.closed, self.seq)


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
        _require_aware(started_at, "started_at")
        _require_duration(skew, "skew")
        _require_duration(late_grace, "late_grace")
        _require_duration(retention, "retention")
        if not retention:
            raise ValueError("retention must be positive")
        self._started_at = started_at
        self._skew = skew
        self._late_grace = late_grace
        self._retention = retention
        self._history_before = started_at - skew

        self._records: dict[str, _Tracked] = {}
        self._open: dict[str, _Tracked] = {}
        # Indexed by total so a row costs one lookup, however many invoices are open.
        # A list only so that an inconsistent state (two open invoices, one total)
        # can be represented and reported as ambiguous instead of silently resolved.
        self._open_by_total: dict[int, list[_Tracked]] = {}
        self._closed_by_total: dict[int, list[_Tracked]] = {}
        # The latest reservation of each closed total: (until, seq, invoice_id), so
        # that allocating a total costs one lookup however many invoices closed.
        self._reserved: dict[int, tuple[datetime, int, str]] = {}
        # Lazy heaps: entries of invoices closed by other means are skipped when popped.
        self._expiry: list[tuple[datetime, str]] = []
        self._expiry_stale = 0
        self._prune: list[tuple[datetime, int, str]] = []

        self._seen: set[str] = set()
        self._seen_order: list[tuple[datetime, str]] = []
        self._rejected_seen: set[str] = set()
        self._rejected_order: list[tuple[datetime, str]] = []
        # Only moves forward: a key once forgotten must never be judged again, even
        # if a later call passes an earlier `now`.
        self._horizon: datetime | None = None
        self._chain_last: Mutation | None = None
        self._seq = 0
        self._busy_until: datetime | None = None

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
        _require_aware(now, "now")
        if invoice.invoice_id in self._records:
            return
        _require_aware(invoice.expired_at, "invoice.expired_at")
        if invoice.created_at is not None:
            _require_aware(invoice.created_at, "invoice.created_at")
        total = invoice.total
        if not isinstance(total, int) or isinstance(total, bool):
            raise ValueError(f"invoice total must be an int, not {type(total).__name__}")
        holder = self._holder(total, now)
        if holder is not None:
            raise TotalConflictError(total, holder)

        created = now if invoice.created_at is None else invoice.created_at
        record = _Tracked(invoice, created - self._skew)
        self._records[invoice.invoice_id] = record
        self._add_open(record)
        status = _status(invoice.status)
        if status is InvoiceStatus.PAID:
            self._close(record, _PAID, now, owed=True)
        elif status is InvoiceStatus.EXPIRED:
            self._close(record, _EXPIRED, min(invoice.expired_at, now))

    def unique_total(self, amount: int, *, now: datetime, max_code: int = 999) -> int:
        """``amount`` plus the smallest code in ``1..max_code`` whose total is neither
        open nor reserved. Reserves nothing: ``track()`` the invoice before any
        ``await``. ``AllocationError`` when every code is taken."""
        _require_aware(now, "now")
        _require_positive_int(amount, "amount")
        _require_positive_int(max_code, "max_code")
        for code in range(1, max_code + 1):
            if self._holder(amount + code, now) is None:
                return amount + code
        raise AllocationError(f"no free unique total for amount {amount} (codes 1..{max_code})")

    def expire(self, *, now: datetime, invoice_ids: Iterable[str] | None = None) -> list[Event]:
        """Close the open invoices past their ``expired_at`` (``now > expired_at``),
        as expired at ``expired_at``: one ``InvoiceExpired`` each, oldest first.

        With ``invoice_ids``, only those; ids that are unknown, closed or not yet
        past are skipped.
        """
        _require_aware(now, "now")
        events: list[Event] = []
        if invoice_ids is None:
            heap = self._expiry
            while heap and heap[0][0] < now:
                expired_at, invoice_id = heapq.heappop(heap)
                record = self._open.get(invoice_id)
                if record is None or record.invoice.expired_at != expired_at:
                    self._expiry_stale = max(0, self._expiry_stale - 1)
                    continue
                closed = self._close(record, _EXPIRED, expired_at, popped=True)
                events.append(InvoiceExpired(closed))
                events += self._judge_waiting(record)
            return events
        if isinstance(invoice_ids, str):
            raise TypeError("invoice_ids must be a collection of ids, not one string")
        due = {
            record.invoice.invoice_id: record
            for record in (self._open.get(invoice_id) for invoice_id in invoice_ids)
            if record is not None and now > record.invoice.expired_at
        }
        for record in sorted(due.values(), key=_expiry_order):
            closed = self._close(record, _EXPIRED, record.invoice.expired_at)
            events.append(InvoiceExpired(closed))
            events += self._judge_waiting(record)
        return events

    def cancel(self, invoice_id: str, *, now: datetime) -> list[Event]:
        """Close an open invoice as cancelled at ``now``: ``[InvoiceCancelled]``.
        A closed invoice changes nothing (``[]``); an unknown id raises ``KeyError``."""
        _require_aware(now, "now")
        record = self._record(invoice_id)
        if record.state != _OPEN:
            return []
        cancelled = InvoiceCancelled(self._close(record, _CANCELLED, now))
        return [cancelled, *self._judge_waiting(record)]

    def mark_paid(self, invoice_id: str, *, now: datetime, source: str = "gateway") -> list[Event]:
        """Record a payment reported outside the feed (by the gateway): the invoice
        closes as paid at ``now``, ``[InvoicePaid(mutation=None, source=source)]``.

        The first feed credit of its total dated inside its window, whenever it
        arrives, is that same payment and is paired silently; any further one is
        judged as usual. A closed invoice changes nothing (``[]``); an unknown id
        raises ``KeyError``.
        """
        _require_aware(now, "now")
        record = self._record(invoice_id)
        if record.state != _OPEN:
            return []
        paid = InvoicePaid(self._close(record, _PAID, now, owed=True), None, source)
        return [paid, *self._judge_waiting(record)]

    def open_invoices(self) -> list[Invoice]:
        """The invoices still open, in the order they were tracked."""
        return [record.invoice for record in self._open.values()]

    def get(self, invoice_id: str) -> Invoice | None:
        """The invoice as the engine knows it now (status updated), or None if unknown."""
        record = self._records.get(invoice_id)
        return None if record is None else record.invoice

    def state_of(self, invoice_id: str) -> InvoiceStatus | None:
        """``PENDING``, ``PAID`` or ``EXPIRED`` (also for a cancelled invoice, as the
        gateway says), or None if the id is unknown."""
        record = self._records.get(invoice_id)
        if record is None:
            return None
        if record.state == _OPEN:
            return InvoiceStatus.PENDING
        return InvoiceStatus.PAID if record.state == _PAID else InvoiceStatus.EXPIRED

    def has_work(self, *, now: datetime) -> bool:
        """True while an invoice is open, or one closed less than ``late_grace`` ago
        (a late or duplicate payment may still come): the feed is worth polling."""
        _require_aware(now, "now")
        return bool(self._open) or (self._busy_until is not None and now <= self._busy_until)

    # -- the feed -----------------------------------------------------------------

    def ingest(self, rows: Iterable[Mutation], *, now: datetime) -> list[Event]:
        """Judge the rows not seen before and return what they mean, in date order.

        Rows are taken oldest first (rows of equal dates in the reverse of the
        order given, since the feed lists newest first); that one order decides
        deduplication, matching and the balance chain. Rows already seen cost
        one lookup and produce nothing. A ``MutationBatch``'s unreadable rows are
        reported once, as ``RejectedRows``, before the others.
        """
        _require_aware(now, "now")
        horizon = self._next_horizon(now)
        seen = self._seen
        fresh: list[tuple[datetime, int, Mutation]] = []
        for position, row in enumerate(rows):
            if row.key in seen:
                continue
            date = row.date
            if date.tzinfo is None or date.utcoffset() is None:
                raise ValueError(
                    f"row {row.key!r} has a naive date; feed dates must be timezone-aware"
                )
            if date >= horizon:
                fresh.append((date, -position, row))
        self._advance(horizon)

        events: list[Event] = []
        if isinstance(rows, MutationBatch) and rows.rejected:
            rejected = self._first_rejections(rows.rejected, now)
            if rejected:
                events.append(RejectedRows(rejected))

        fresh.sort(key=_processing_order)
        for date, _, row in fresh:
            key = row.key
            if key in seen:  # the same key earlier in this call: the first one stands
                continue
            seen.add(key)
            heapq.heappush(self._seen_order, (date, key))
            history = date < self._history_before
            gap = self._chain(row, history)
            if gap is not None:
                events.append(gap)
            if row.type == MutationType.CREDIT:
                events += self._judge(row, history)
            elif row.type != MutationType.DEBIT and not history:
                events.append(UnknownRow(row))
        return events

    def _judge(self, row: Mutation, history: bool) -> list[Event]:
        date = row.date
        skew = self._skew
        same_total = self._open_by_total.get(row.amount, ())
        fitting = [
            record
            for record in same_total
            if record.start <= date <= record.invoice.expired_at + skew
        ]
        if len(fitting) == 1:
            paid = self._close(fitting[0], _PAID, date)
            return [InvoicePaid(paid, row, "mutation"), *self._judge_waiting(fitting[0])]
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
        late_grace = self._late_grace
        past = [
            record
            for record in same_total
            if record.invoice.expired_at + skew < date <= record.invoice.expired_at + late_grace
        ]
        if past:
            waiting = max(past, key=_expiry_order)
            if waiting.waiting is None:
                waiting.waiting = []
            waiting.waiting.append(row)
            return []
        return [self._judge_closed(row)]

    def _pair_owed(self, row: Mutation) -> bool:
        """Rule 8: the first credit inside an owed report's range is that payment."""
        date, skew = row.date, self._skew
        owed = [
            record
            for record in self._closed_by_total.get(row.amount, ())
            if record.owed and record.start <= date <= record.owed_until(skew)
        ]
        if not owed:
            return False
        max(owed, key=_Tracked.recency).owed = False
        return True

    def _judge_closed(self, row: Mutation) -> Event:
        """Rule 5: a credit of a closed invoice's total, or an unmatched one."""
        date = row.date
        late_grace = self._late_grace
        closed = self._closed_by_total.get(row.amount, ())
        recent = [record for record in closed if record.start <= date <= record.closed + late_grace]
        if not recent:
            return UnmatchedCredit(row)
        record = max(recent, key=_Tracked.recency)
        if record.state == _PAID:
            return DuplicatePayment(record.invoice, row)
        return LatePayment(record.invoice, row)

    def _judge_waiting(self, record: _Tracked) -> list[Event]:
        waiting, record.waiting = record.waiting, None
        return [self._judge_closed(row) for row in waiting or () if not self._pair_owed(row)]

    def _chain(self, row: Mutation, history: bool) -> BalanceGap | None:
        if row.balance is None:
            return None
        before = self._chain_last
        if before is not None and row.date < before.date:
            # A straggler from the past: chaining it would turn one gap into two.
            return None
        self._chain_last = row
        if before is None or before.balance is None:
            return None
        if row.type == MutationType.CREDIT:
            expected = before.balance + row.amount
        elif row.type == MutationType.DEBIT:
            expected = before.balance - row.amount
        else:  # no sign to apply: the chain starts again from this row's balance
            return None
        if row.balance == expected or history:
            return None
        return BalanceGap(before, row, row.balance - expected)

    def _first_rejections(
        self, rejected: Iterable[RejectedRow], now: datetime
    ) -> tuple[RejectedRow, ...]:
        # The feed repeats its rows for a while; report a bad row once, not every poll.
        first: list[RejectedRow] = []
        for row in rejected:
            fingerprint = _fingerprint(row)
            if fingerprint in self._rejected_seen:
                continue
            self._rejected_seen.add(fingerprint)
            heapq.heappush(self._rejected_order, (now, fingerprint))
            first.append(row)
        return tuple(first)

    # -- bookkeeping --------------------------------------------------------------

    def _record(self, invoice_id: str) -> _Tracked:
        try:
            return self._records[invoice_id]
        except KeyError:
            raise KeyError(invoice_id) from None

    def _holder(self, total: int, now: datetime) -> str | None:
        """The id of the invoice holding ``total`` at ``now``, if any (rule 6)."""
        opened = self._open_by_total.get(total)
        if opened:
            return opened[0].invoice.invoice_id
        reserved = self._reserved.get(total)
        if reserved is None:
            return None
        if now > reserved[0]:
            del self._reserved[total]
            return None
        return reserved[2]

    def _reserve(self, record: _Tracked) -> None:
        # Rule 6: late_grace + skew after closing. An owed gateway report keeps it
        # longer, until no new invoice's window (which starts skew before it was
        # made) can reach the report's pairing range: else a second customer's
        # payment would be taken for the first one's.
        until = record.closed + self._late_grace + self._skew
        if record.owed:
            until = max(until, record.owed_until(self._skew) + self._skew)
        total = record.invoice.total
        current = self._reserved.get(total)
        if current is None or (until, record.seq) > current[:2]:
            self._reserved[total] = (until, record.seq, record.invoice.invoice_id)

    def _add_open(self, record: _Tracked) -> None:
        invoice = record.invoice
        self._open[invoice.invoice_id] = record
        self._open_by_total.setdefault(invoice.total, []).append(record)
        heapq.heappush(self._expiry, (invoice.expired_at, invoice.invoice_id))

    def _close(
        self,
        record: _Tracked,
        state: str,
        at: datetime,
        *,
        owed: bool = False,
        popped: bool = False,
    ) -> Invoice:
        invoice = record.invoice
        del self._open[invoice.invoice_id]
        same_total = self._open_by_total[invoice.total]
        same_total.remove(record)
        if not same_total:
            del self._open_by_total[invoice.total]
        self._seq += 1
        record.state = state
        record.closed_at = at
        record.owed = owed
        record.seq = self._seq
        status = InvoiceStatus.PAID if state == _PAID else InvoiceStatus.EXPIRED
        record.invoice = attrs.evolve(invoice, status=status)
        self._add_closed(record)
        busy_until = at + self._late_grace
        if self._busy_until is None or busy_until > self._busy_until:
            self._busy_until = busy_until
        if not popped:
            self._expiry_stale += 1
            if self._expiry_stale > 64 and self._expiry_stale > len(self._open):
                self._expiry = [(r.invoice.expired_at, i) for i, r in self._open.items()]
                heapq.heapify(self._expiry)
                self._expiry_stale = 0
        return record.invoice

    def _add_closed(self, record: _Tracked) -> None:
        invoice = record.invoice
        self._closed_by_total.setdefault(invoice.total, []).append(record)
        self._reserve(record)
        # Kept while a row could still concern it (a late or duplicate payment, the
        # pairing of a gateway report) or its total is reserved; rows dated before
        # the horizon are ignored, so past that it can go.
        keep_until = max(
            record.closed + self._late_grace + self._skew,
            invoice.expired_at + self._skew,
            record.owed_until(self._skew) + self._skew,
        )
        heapq.heappush(self._prune, (keep_until, record.seq, invoice.invoice_id))

    def _next_horizon(self, now: datetime) -> datetime:
        cutoff = now - self._retention
        if self._horizon is not None and cutoff <= self._horizon:
            return self._horizon
        return cutoff

    def _advance(self, horizon: datetime) -> None:
        """Forget, oldest first, what no row at or after ``horizon`` can concern."""
        self._horizon = horizon
        for order, keys in (
            (self._seen_order, self._seen),
            (self._rejected_order, self._rejected_seen),
        ):
            while order and order[0][0] < horizon:
                keys.discard(heapq.heappop(order)[1])
        prune = self._prune
        while prune and prune[0][0] < horizon:
            _, seq, invoice_id = heapq.heappop(prune)
            record = self._records.get(invoice_id)
            if record is None or record.seq != seq or record.state == _OPEN:
                continue
            del self._records[invoice_id]
            same_total = self._closed_by_total[record.invoice.total]
            same_total.remove(record)
            if not same_total:
                del self._closed_by_total[record.invoice.total]

    # -- snapshot -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the engine knows, as plain JSON-serialisable data.

        ``ReconciliationEngine.restore(snapshot)`` gives an engine that behaves
        identically from then on (also after a ``json`` round trip).
        """
        return {
            "version": SNAPSHOT_VERSION,
            "started_at": self._started_at.isoformat(),
            "skew_us": _micros(self._skew),
            "late_grace_us": _micros(self._late_grace),
            "retention_us": _micros(self._retention),
            "horizon": _iso(self._horizon),
            "busy_until": _iso(self._busy_until),
            "seq": self._seq,
            "seen": [[key, date.isoformat()] for date, key in sorted(self._seen_order)],
            "rejected_seen": [
                [fingerprint, at.isoformat()] for at, fingerprint in sorted(self._rejected_order)
            ],
            "invoices": [_dump_record(record) for record in self._records.values()],
            "chain_last": None if self._chain_last is None else _dump_row(self._chain_last),
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> ReconciliationEngine:
        """An engine in the state ``snapshot()`` recorded (``started_at`` included).

        Raises ``ValueError`` for a snapshot of another version or a damaged one.
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
            return cls._restore(snapshot)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"damaged engine snapshot: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _restore(cls, data: Mapping[str, Any]) -> ReconciliationEngine:
        engine = cls(
            started_at=_load_datetime(data["started_at"]),
            skew=timedelta(microseconds=data["skew_us"]),
            late_grace=timedelta(microseconds=data["late_grace_us"]),
            retention=timedelta(microseconds=data["retention_us"]),
        )
        engine._horizon = _load_optional_datetime(data["horizon"])
        engine._busy_until = _load_optional_datetime(data["busy_until"])
        engine._seq = int(data["seq"])
        engine._seen_order = [(_load_datetime(at), str(key)) for key, at in data["seen"]]
        heapq.heapify(engine._seen_order)
        engine._seen = {key for _, key in engine._seen_order}
        engine._rejected_order = [
            (_load_datetime(at), str(fingerprint)) for fingerprint, at in data["rejected_seen"]
        ]
        heapq.heapify(engine._rejected_order)
        engine._rejected_seen = {fingerprint for _, fingerprint in engine._rejected_order}
        for item in data["invoices"]:
            record = _load_record(item)
            engine._records[record.invoice.invoice_id] = record
            if record.state == _OPEN:
                engine._add_open(record)
            else:
                engine._add_closed(record)
        chain_last = data["chain_last"]
        engine._chain_last = None if chain_last is None else _load_row(chain_last)
        return engine

    def __repr__(self) -> str:
        return (
            f"<ReconciliationEngine open={len(self._open)} "
            f"tracked={len(self._records)} seen={len(self._seen)}>"
        )


# -- helpers ------------------------------------------------------------------------


def _require_aware(value: object, name: str) -> None:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} is a naive datetime; pass a timezone-aware one (UTC, or qrispay.JAKARTA "
            "for WIB): a naive time compared with WIB feed dates is off by hours"
        )


def _require_duration(value: object, name: str) -> None:
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative")


def _require_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, not {value!r}")


def _status(status: InvoiceStatus | str) -> InvoiceStatus | str:
    # Any case, as the models read it; an unknown value stays a string (and counts as open).
    parsed: InvoiceStatus | str = InvoiceStatus.parse(status) if isinstance(status, str) else status
    return parsed


def _processing_order(item: tuple[datetime, int, Mutation]) -> tuple[datetime, int]:
    return (item[0], item[1])


def _expiry_order(record: _Tracked) -> tuple[datetime, str]:
    return (record.invoice.expired_at, record.invoice.invoice_id)


def _fingerprint(row: RejectedRow) -> str:
    try:
        text = json.dumps([row.reason, row.raw], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr((row.reason, row.raw))
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()


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


_STATUS_VALUES = frozenset(status.value for status in InvoiceStatus)


def _dump_record(record: _Tracked) -> dict[str, Any]:
    return {
        "invoice": _dump_invoice(record.invoice),
        "window_start": record.start.isoformat(),
        "state": record.state,
        "closed_at": _iso(record.closed_at),
        "pairing_owed": record.owed,
        "seq": record.seq,
        "waiting": [_dump_row(row) for row in record.waiting or ()],
    }


def _load_record(data: Mapping[str, Any]) -> _Tracked:
    record = _Tracked(_load_invoice(data["invoice"]), _load_datetime(data["window_start"]))
    state = data["state"]
    if state not in _STATES:
        raise ValueError(f"unknown invoice state {state!r}")
    record.state = state
    record.closed_at = _load_optional_datetime(data["closed_at"])
    if (state == _OPEN) != (record.closed_at is None):
        raise ValueError(f"invoice {record.invoice.invoice_id!r}: closed_at does not fit {state}")
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
