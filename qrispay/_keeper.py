"""The Reconciler's side of a store: load, lease, claim, commit, then publish.

Every event is committed, with the engine changes that produced it, in one
transaction before it is published or wakes a waiter (docs/design.md,
"Stores"). Events are published from the store, in commit order, after each
commit and on each catch-up: an event is published once per process whoever
committed it and whatever a failed call reported. With several workers on one
store (docs/design.md, "Several workers"), only the holder of the merchant's
lease writes what polls find, every such commit is fenced by the lease's
epoch, and new invoices claim their totals in the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import attrs

from . import _durable
from ._book import Tracked
from ._codec import dump_time, load_record
from ._journal import Journal
from ._replay import PAGE
from ._state import State
from .engine import ReconciliationEngine
from .errors import LeaseLostError, TotalConflictError
from .events import Event
from .models import InvoiceStatus
from .polling import Schedule
from .store._base import Lease, SeededMeanwhile, Store

__all__ = ["Keeper"]

Publish = Callable[[list[tuple[int, Event]]], None]


class Keeper:
    """Keeps one merchant's engine in ``store`` for the worker ``holder``."""

    def __init__(
        self,
        store: Store,
        merchant: str,
        clock: Callable[[], datetime],
        *,
        holder: str,
        lease_ttl: float,
    ) -> None:
        self.store = store
        self.merchant = merchant
        self.holder = holder
        self.lease_ttl = lease_ttl
        self._clock = clock
        self._lock = anyio.Lock()
        self._pending: list[Event] = []
        # This process's events by id, until published: the store's copy of them
        # is then not read back from JSON.
        self._own: dict[str, Event] = {}
        #: The poller's own times, kept beside the engine (UTC ISO or None).
        self.poller: dict[str, Any] = {"last_fetch": None, "not_before": None, "holds": 1}
        #: The ``seq`` of the last event published here (or stored before the start).
        self.last_seq = 0
        self.records_version = 0
        self.lease: Lease | None = None
        self.loaded = False
        #: A commit failed and its changes wait: no new rows are fetched until they
        #: are stored, so a crash loses one poll at most.
        self.behind = False
        #: Totals another worker took first, for ``flush()`` to raise.
        self.conflicts: list[TotalConflictError] = []

    @property
    def polling(self) -> bool:
        return self.lease is not None

    # -- loading ------------------------------------------------------------------

    async def load(
        self, seed: ReconciliationEngine | None, make: Callable[[], ReconciliationEngine]
    ) -> ReconciliationEngine:
        """The stored engine; or, for a merchant the store does not know, ``seed``
        (or ``make()``), written to the store whole."""
        await self.store.open()
        # The version first: a record written between the two reads is read again.
        _, version = await self.store.records_since(self.merchant, 2**62)
        state = await self.store.load(self.merchant)
        if state is None or not state.meta:
            engine = seed if seed is not None else make()
            everything = _durable.everything(engine)
            everything.new = set(everything.records)
            _durable.attach(engine)
            try:
                async with self._lock:
                    self._give(engine, everything)
                    await self._claim(engine)
                    await self._write(engine, [], poller=self.poller, first=True)
            except SeededMeanwhile:
                # Another worker started first and may have polled since: its
                # state stands (the seed's invoices were claimed into it).
                return await self.load(None, make)
        else:
            engine = self._engine_from(state)
            self.last_seq = max(self.last_seq, state.last_seq)
        self.records_version = max(self.records_version, version)
        self.loaded = True
        return engine

    def _engine_from(self, state: Any) -> ReconciliationEngine:
        engine = _durable.engine_from(state)
        _durable.attach(engine)
        self.poller = {key: state.meta.get(key) for key in self.poller}
        if self.poller["holds"] != 1:
            # Written before records said how long they hold their totals (schema
            # 2): the next commit writes every record once, with it.
            self._give(engine, _durable.everything(engine))
            self.poller["holds"] = 1
        return engine

    async def reload(self, current: ReconciliationEngine | None = None) -> ReconciliationEngine:
        """The engine as the store holds it now (for a new lease holder, or after
        a commit the store refused). Changes not stored are dropped, but for the
        invoices ``current`` tracked (``track()``, ``create_invoice``): those are
        claimed in the store first, and any tracked while it is read are claimed
        after and taken in, so a reload never forgets an invoice a caller holds."""
        if current is not None:
            async with self._lock:
                await self._claim(current)
        times = dict(self.poller)
        _, version = await self.store.records_since(self.merchant, 2**62)
        state = await self.store.load(self.merchant)
        if state is None:
            raise RuntimeError(f"the store no longer holds merchant {self.merchant!r}")
        self._pending.clear()
        self._own.clear()
        self.behind = False
        engine = self._engine_from(state)
        # A fetch whose commit was refused or failed still began a cache window.
        for key in ("last_fetch", "not_before"):
            self.poller[key] = _later(self.poller.get(key), times.get(key))
        if current is not None:
            async with self._lock:
                await self._claim(current)
            records, version = await self.store.records_since(self.merchant, version)
            for text in records:
                engine._book.replace(load_record(json.loads(text)))
        self.records_version = max(self.records_version, version)
        return engine

    @staticmethod
    def _give(engine: ReconciliationEngine, journal: Journal) -> None:
        current = engine._book.journal
        assert current is not None
        current.merge_earlier(journal)

    # -- the lease ----------------------------------------------------------------

    async def claim_lease(self) -> bool:
        """Take or renew the merchant's poll lease; False while another holds it."""
        epoch = None if self.lease is None else self.lease.epoch
        self.lease = await self.store.claim_lease(
            self.merchant, self.holder, epoch, now=self._clock(), ttl=self.lease_ttl
        )
        return self.lease is not None

    def lease_fresh(self, margin: float = 0.0) -> bool:
        """Held, with more than half of ``lease_ttl`` (and more than ``margin``
        seconds) left by this worker's clock: nobody else can have taken it (a
        lease is taken only once lapsed), nor will before a fetch begun now ends."""
        lease = self.lease
        if lease is None:
            return False
        left = (lease.expires_at - self._clock()).total_seconds()
        return left > max(self.lease_ttl / 2, margin)

    async def release_lease(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            await self.store.release_lease(self.merchant, lease.holder, lease.epoch)

    def lost(self) -> None:
        """The lease is gone: what this worker judged and did not store is dropped
        (the next holder judges the same rows again)."""
        self.lease = None
        self._pending.clear()
        self._own.clear()
        self.behind = False

    # -- committing ---------------------------------------------------------------

    async def commit(
        self, engine: ReconciliationEngine, events: list[Event], publish: Publish
    ) -> None:
        """Claim new invoices' totals, commit what changed in ``engine`` and
        ``events``, then publish what the store holds that this process has not
        published, in commit order. On failure the changes and events stay
        pending for the next commit and the error is raised."""
        self._pending.extend(events)
        for event in events:
            self._own.setdefault(event.id, event)
        async with self._lock:
            await self._claim(engine)
            noted = engine._book.journal
            if not self.polling and not self._pending and noted is not None and not noted:
                # A follower with nothing to store (its round every second): no
                # write transaction, which would queue behind the poller's.
                await self._publish_stored(publish)
                return
            journal = _durable.take(engine)
            pending, self._pending = self._pending, []
            try:
                poller = self.poller if self.polling else None
                await self._write(engine, pending, journal=journal, poller=poller)
            except LeaseLostError:
                # Refused by the fence: what was judged goes, with its events, for the
                # next holder to judge again. Given back, the next commit before the
                # reload (a flush, a gateway check) would write it unfenced and
                # without its events: an invoice stored paid with no paid event.
                self.lost()
                raise
            except BaseException:
                self._give(engine, journal)
                self._pending[:0] = pending
                self.behind = True
                raise
            self.behind = False
            await self._publish_stored(publish)

    async def _claim(self, engine: ReconciliationEngine) -> None:
        journal = engine._book.journal
        assert journal is not None
        records = engine._book.records
        batch = sorted(invoice_id for invoice_id in journal.new if invoice_id in records)
        if not batch:
            return
        rows = []
        judged: set[str] = set()
        for invoice_id in batch:
            record = records[invoice_id]
            if record.state is not State.OPEN:
                # Closed since it was tracked (paid by the poll now committing, say):
                # claimed as tracked, open, since a claim is not fenced. Its close
                # goes in the fenced write that follows, with its event, or not at all.
                record = _as_tracked(record)
                judged.add(invoice_id)
            rows.append(_durable.record_row(engine, record))
        # Taken out before the await: a change made to one meanwhile notes it again.
        journal.new -= set(batch)
        journal.records -= set(batch) - judged
        try:
            refused = await self.store.claim_invoices(self.merchant, rows, now=self._clock())
        except BaseException:
            journal.new |= set(batch)
            journal.records |= set(batch)
            raise
        for invoice_id, holder in refused.items():
            if holder == invoice_id:
                continue  # stored already (an earlier claim's answer was lost)
            total = records[invoice_id].invoice.total
            engine._book.remove(invoice_id)
            self.conflicts.append(TotalConflictError(total, holder))

    async def _write(
        self,
        engine: ReconciliationEngine,
        events: list[Event],
        *,
        poller: dict[str, Any] | None,
        journal: Journal | None = None,
        first: bool = False,
    ) -> None:
        journal = journal if journal is not None else _durable.take(engine)
        lease = self.lease
        fence = None if lease is None else (lease.holder, lease.epoch)
        now = self._clock()
        # A poller's commit renews its lease in the same transaction.
        until = None if lease is None else now + timedelta(seconds=self.lease_ttl)
        # A close, or an open invoice's update, is written only over an invoice still
        # open in the store: a close is final, so another worker's close that came
        # first wins (never reopened by a stale copy), and this poll is judged again.
        records = engine._book.records
        if_open = frozenset(
            invoice_id
            for invoice_id in journal.records
            if invoice_id in journal.closed
            or (invoice_id in records and records[invoice_id].state is State.OPEN)
        )
        changes = _durable.changes(
            engine,
            journal,
            events,
            committed_at=now,
            poller=poller,
            fence=fence,
            lease_until=until,
            if_open=if_open,
        )
        if first:
            changes = attrs.evolve(changes, first=True)
        await self.store.commit(self.merchant, changes)
        if until is not None and self.lease is lease and lease is not None:
            self.lease = attrs.evolve(lease, expires_at=max(until, lease.expires_at))

    async def _publish_stored(self, publish: Publish) -> None:
        while True:
            page = await self.store.events_after(self.merchant, self.last_seq, PAGE)
            if not page:
                return
            ready = []
            for stored in page:
                event = self._own.pop(stored.id, None)
                ready.append((stored.seq, stored.event() if event is None else event))
            self.last_seq = page[-1].seq
            publish(ready)

    # -- what other workers wrote -------------------------------------------------

    async def catch_up(self, engine: ReconciliationEngine, publish: Publish) -> None:
        """Take the invoices other workers wrote, then publish the events they
        committed (and any of this process's not published yet)."""
        records, version = await self.store.records_since(self.merchant, self.records_version)
        journal = engine._book.journal
        for text in records:
            record = load_record(json.loads(text))
            # A change made here and not yet stored is newer than the stored copy.
            if journal is None or record.invoice.invoice_id not in journal.records:
                engine._book.replace(record)
        self.records_version = max(self.records_version, version)
        async with self._lock:
            await self._publish_stored(publish)

    # -- the poller's times -------------------------------------------------------

    def fetched(self, started: datetime, schedule: Schedule) -> None:
        """Note a fetch that started at ``started`` and the schedule after it."""
        self.poller["last_fetch"] = dump_time(started)
        wait = schedule.backoff if schedule.failures else 0.0
        later = started + timedelta(seconds=wait)
        self.poller["not_before"] = dump_time(later) if wait else None

    def resume(self, schedule: Schedule, now: datetime) -> None:
        """Set ``schedule`` so that the first fetch after a restart or a hand-over
        still honours the cache window (and a backoff) the last fetch began."""
        last = self.poller.get("last_fetch")
        if not last:
            return
        elapsed = (now - datetime.fromisoformat(last)).total_seconds()
        schedule.started(anyio.current_time() - max(0.0, elapsed))
        not_before = self.poller.get("not_before")
        if not_before:
            left = (datetime.fromisoformat(not_before) - now).total_seconds()
            if left > 0 and math.isfinite(left):
                schedule.failures = max(schedule.failures, 1)
                schedule.backoff = max(left + max(0.0, elapsed), schedule.policy.interval)


def _as_tracked(record: Tracked) -> Tracked:
    """``record`` as it was when it was tracked: open, nothing owed."""
    return Tracked(attrs.evolve(record.invoice, status=InvoiceStatus.PENDING), record.start)


def _later(first: str | None, second: str | None) -> str | None:
    """The later of two stored times (UTC ISO text, or None)."""
    if first is None or second is None:
        return first or second
    return max(first, second, key=datetime.fromisoformat)
