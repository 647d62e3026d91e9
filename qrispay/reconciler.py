"""The Reconciler: the I/O loop around the engine, under asyncio or trio (anyio).

It polls the feed on a schedule that respects the server's cache, feeds the
engine, declares invoices expired only when that is safe, confirms with the
gateway, and publishes events to waiters and subscribers (``_hub``). Its
invoice methods are in ``_invoices`` (made in ``_issuing``), its loop on a
store in ``_workers``.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, overload

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from . import qris
from ._checks import require_positive_int
from ._gateway_checks import FATAL_AT_START, GatewayAnswer, ask_gateway, check_at_start
from ._hub import OUTCOMES_KEPT as OUTCOMES_KEPT  # importable from here, as before
from ._hub import EventHub, EventSubscription
from ._invoices import LOCAL_TRIES as LOCAL_TRIES  # importable from here, as before
from ._invoices import InvoiceMethods
from ._issuing import CANCEL_BUDGET as CANCEL_BUDGET  # importable from here, as before
from ._issuing import MAX_CREATIONS as MAX_CREATIONS
from ._keeper import Keeper
from ._replay import ReplaySubscription
from ._stats import ReconcilerStats
from ._workers import FOLLOW_INTERVAL, StoreLoop, check_follow_interval
from .engine import ReconciliationEngine
from .errors import InvoiceStateConflictError, LeaseLostError, QrispayError, RateLimitError
from .events import Event, InvoicePaid
from .gateway import GatewayClient
from .models import MutationBatch
from .mutations import MutationClient
from .polling import PollPolicy, Schedule
from .store._base import Store

__all__ = ["EventSubscription", "Reconciler", "ReconcilerStats"]

logger = logging.getLogger("qrispay.reconciler")

#: How many gateway checks may be under way at once.
GATEWAY_CHECKS_AT_ONCE = 8


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


async def _sleep_until(deadline: float) -> None:
    left = deadline - anyio.current_time()
    if left > 0:
        await anyio.sleep(left)


class Reconciler(InvoiceMethods, StoreLoop):
    """Background reconciliation: feed rows in, paid invoices out.

    ::

        async with Reconciler(feed, gateway=gateway) as rec:
            invoice = await rec.create_invoice(10_000)
            paid = await rec.wait_for_payment(invoice.invoice_id, timeout=900)

    The feed is fetched at most once per ``policy.ttl + policy.margin``,
    however many invoices are open. An invoice is declared expired only after
    a successful fetch that started after ``expired_at + skew``, and, with a
    gateway, after asking it once. Clients passed in are never closed here.
    """

    def __init__(
        self,
        feed: MutationClient,
        *,
        gateway: GatewayClient | None = None,
        static_qris: str | None = None,
        invoice_ttl: timedelta = timedelta(minutes=15),
        engine: ReconciliationEngine | None = None,
        policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], datetime] | None = None,
        event_buffer: int = 1000,
        rng: random.Random | None = None,
        store: Store | None = None,
        lease_ttl: float = 90.0,
        worker_id: str | None = None,
        follow_interval: float | None = None,
    ):
        if static_qris is not None:
            qris.parse(static_qris)  # a bad payload fails here, not at the first invoice
        if not isinstance(invoice_ttl, timedelta) or invoice_ttl <= timedelta(0):
            raise ValueError("invoice_ttl must be a positive timedelta")
        require_positive_int(event_buffer, "event_buffer")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)):
            raise TypeError("lease_ttl must be a number of seconds")
        if not lease_ttl > policy.interval:
            raise ValueError("lease_ttl must be longer than the poll interval (ttl + margin)")
        if follow_interval is None:
            # Once a second, or more often under a lease too short for that.
            follow_interval = min(FOLLOW_INTERVAL, lease_ttl / 3)
        check_follow_interval(follow_interval, lease_ttl)
        if store is not None and not isinstance(store, Store):
            raise TypeError(f"store must be a qrispay Store, not {type(store).__name__}")
        self.feed = feed
        self.gateway = gateway
        self.static_qris = static_qris
        self.invoice_ttl = invoice_ttl
        self.policy = policy
        self.stats = ReconcilerStats()
        self._clock = clock or _utc_now
        self._engine = engine
        self.store = store
        self.lease_ttl = float(lease_ttl)
        self.follow_interval = float(follow_interval)
        # Unique per Reconciler unless given: the lease tells its holders apart by it.
        self.worker_id = worker_id or uuid.uuid4().hex[:16]
        self._keeper = (
            None
            if store is None
            else Keeper(
                store, feed.merchant, self._now, holder=self.worker_id, lease_ttl=self.lease_ttl
            )
        )
        # Seeded, the backoff jitter (and so a run with faults) repeats exactly.
        self._schedule = Schedule(policy) if rng is None else Schedule(policy, rng)
        self._hub = EventHub(event_buffer)
        self._wake = anyio.Event()
        self._running = False
        # Gateway checks run beside the loop, so a slow gateway never delays a fetch.
        self._checks: anyio.abc.TaskGroup | None = None
        self._checking: set[str] = set()
        self._check_limiter = anyio.CapacityLimiter(GATEWAY_CHECKS_AT_ONCE)
        self._task_group: Any = None
        # Set by a Fleet: where its events go besides this Reconciler's subscribers,
        # and how long a merchant never fetched waits for its first fetch.
        self._tap: Callable[[list[tuple[int, Event]]], None] | None = None
        self._first_fetch_delay = 0.0
        self._in_flight: datetime | None = None

    # -- the engine and the clock --------------------------------------------

    @property
    def engine(self) -> ReconciliationEngine:
        """The engine (made on first use, started at the clock's now). With a
        store, the stored one, available once the Reconciler has started."""
        if self._keeper is not None and not self._keeper.loaded:
            raise RuntimeError(
                "this Reconciler keeps its state in a store, which is read when it "
                "starts: start it first (async with, or task_group.start(rec.run)), or "
                "read it now with `await rec.load()`"
            )
        if self._engine is None:
            self._engine = ReconciliationEngine(started_at=self._now())
        return self._engine

    @property
    def is_polling(self) -> bool:
        """True while this Reconciler polls the feed: its loop runs and, with a
        store, it holds the merchant's poll lease."""
        if not self._running:
            return False
        lease = None if self._keeper is None else self._keeper.lease
        # A lease past its expiry is not held, even by a poller too paused to have
        # noticed yet: another worker may hold it already.
        return self._keeper is None or (lease is not None and lease.expires_at >= self._now())

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return now

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Reconciler:
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self.run)
        except BaseException:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            raise
        self._task_group = task_group
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        task_group, self._task_group = self._task_group, None
        task_group.cancel_scope.cancel()
        # The body's own exception is not handed to the task group, which would
        # wrap it in an ExceptionGroup: it propagates as it was raised.
        await task_group.__aexit__(None, None, None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until cancelled. With ``task_group.start(rec.run)`` it reports
        started after the first poll; wrong credentials or paths raise at that
        point instead of being retried for ever."""
        if self._running:
            raise RuntimeError("this Reconciler is already running")
        self._running = True
        self._hub.open()
        try:
            await self.load()
            self.engine  # noqa: B018 - made now, so started_at is the start of the loop
            fatal = await check_at_start(self.gateway)
            if fatal is not None:
                raise fatal
            async with anyio.create_task_group() as self._checks:
                if self._keeper is not None:
                    fatal = await self._run_on_store(task_status)
                else:
                    fatal = await self._run_alone(task_status)
                self._checks.cancel_scope.cancel()
            # Raised outside the task group, so the caller gets it as it is.
            assert fatal is not None
            raise fatal
        finally:
            await self._release()
            self._checking.clear()
            self._running = False
            self._hub.close()

    async def _run_alone(self, task_status: TaskStatus[None]) -> Exception | None:
        # A second run still owes the cache its window (and a 429 its wait).
        await _sleep_until(self._schedule.next_start(busy=True))
        fatal = await self._poll(first=True)
        if fatal is not None:
            return fatal
        task_status.started()
        while True:
            await self._wait_for_next_poll()
            await self._poll()

    async def load(self) -> None:
        """Read the store (once; the loop does it too when it starts). Call it
        before starting the loop to ``track()`` invoices that the first poll
        must already know, as without a store. Without a store it does nothing."""
        if self._keeper is not None and not self._keeper.loaded:
            self._engine = await self._keeper.load(self._engine, self._new_engine)
            self._keeper.resume(self._schedule, self._now())

    def _new_engine(self) -> ReconciliationEngine:
        return ReconciliationEngine(started_at=self._now())

    async def _wait_for_next_poll(self) -> None:
        while True:
            busy = self.engine.has_work(now=self._now())
            due = self._schedule.next_start(busy=busy)
            left = due - anyio.current_time()
            if left <= 0:
                return
            self._wake = anyio.Event()
            with anyio.move_on_after(left if math.isfinite(left) else None):
                await self._wake.wait()

    def _poke(self) -> None:
        # New work may shorten an idle wait; the schedule still decides.
        self._wake.set()

    # -- one poll ------------------------------------------------------------

    async def _poll(self, *, first: bool = False) -> Exception | None:
        """One fetch and what follows. Returns the error that should stop a
        starting loop (wrong credentials or paths), else None."""
        if self._keeper is not None and not await self._before_poll():
            return None
        self._schedule.started(anyio.current_time())
        fetch_started = self._now()
        self.stats.polls += 1
        # Cleared once the fetch ends; still set if the loop is stopped meanwhile.
        self._in_flight = fetch_started
        try:
            batch = await self.feed.fetch(max_retries=0)
        except RateLimitError as error:
            self._in_flight = None
            self._schedule.rate_limited(error.retry_after)
            self._failed(error, rate_limited=True)
        except FATAL_AT_START as error:
            self._in_flight = None
            if first:
                return error
            self._schedule.failed()
            self._failed(error)
        except Exception as error:
            self._in_flight = None
            # Whatever went wrong, the loop goes on; the schedule backs off.
            self._schedule.failed()
            self._failed(error)
        else:
            self._in_flight = None
            if self._keeper is not None and not await self._after_fetch():
                self._keeper.fetched(fetch_started, self._schedule)
                return None
            await self._commit(self._ingest(batch, fetch_started), fetch_started)
            return None
        # Even a failed fetch counts against the cache window (and sets a backoff).
        await self._commit([], fetch_started)
        return None

    def _ingest(self, batch: MutationBatch, fetch_started: datetime) -> list[Event]:
        self._schedule.succeeded()
        now = self._now()
        self.stats.consecutive_failures = 0
        self.stats.last_success = now
        self.stats.last_error = None
        self.stats.rows_seen += len(batch)
        self.stats.rows_rejected += len(batch.rejected)
        events = self.engine.ingest(batch, now=now, rejected=batch.rejected)
        return events + self._expire_due(fetch_started)

    async def _commit(self, events: list[Event], fetch_started: datetime | None = None) -> bool:
        """Store, then publish (without a store: publish). A poll's commit that
        fails is logged; its changes and events wait for the next commit.
        False: this worker's lease went meanwhile, so the store refused what it
        judged as poller, and it now follows the store (docs/design.md, "Several
        workers", rule 2); new invoices were claimed before the refusal."""
        if self._keeper is None:
            self._publish([(0, event) for event in events])
            return True
        if fetch_started is not None:
            self._keeper.fetched(fetch_started, self._schedule)
            await self._commit_poll(events)
            return True
        try:
            await self._keeper.commit(self.engine, events, self._publish)
        except LeaseLostError:
            await self._lease_lost()
            return False
        except InvoiceStateConflictError as error:
            # Another worker closed an invoice first: that close stands. What this
            # worker had not stored is dropped (new invoices are claimed first).
            logger.warning("another worker closed an invoice first; reading the store: %s", error)
            await self._reload()
            return False
        return True

    def _count_commit_failure(self, error: Exception) -> None:
        self.stats.commit_failures += 1
        logger.error(
            "could not commit to the store; kept, and no new rows are fetched until it "
            "is stored: %s",
            error,
        )

    def _failed(self, error: BaseException, *, rate_limited: bool = False) -> None:
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        if rate_limited:
            self.stats.rate_limited += 1
        self.stats.last_error = f"{type(error).__name__}: {error}"
        log = logger.warning if isinstance(error, QrispayError) else logger.error
        log(
            "feed fetch failed (%d in a row), next try in %.1fs: %s",
            self.stats.consecutive_failures,
            self._schedule.backoff,
            self.stats.last_error,
            exc_info=not isinstance(error, QrispayError),
            extra={
                "merchant": self.feed.merchant,
                "attempt": self.stats.consecutive_failures,
                "next_poll_in": self._schedule.backoff,
                "error": type(error).__name__,
                "method": getattr(error, "method", None),
                "path": getattr(error, "path", None),
                "status": getattr(error, "status_code", None),
            },
        )

    def _expire_due(self, fetch_started: datetime) -> list[Event]:
        engine = self.engine
        # `now` for expire() is the fetch's start minus skew, so an invoice closes
        # only if this fetch started after its expired_at + skew.
        cutoff = fetch_started - engine.skew
        due = engine.due_for_expiry(cutoff)
        if self.gateway is None:
            return engine.expire(now=cutoff, invoice_ids=due)
        assert self._checks is not None
        for invoice_id in due:
            if invoice_id not in self._checking:
                self._checking.add(invoice_id)
                self._checks.start_soon(self._check_then_expire, invoice_id, cutoff)
        return []

    async def _check_then_expire(self, invoice_id: str, cutoff: datetime) -> None:
        try:
            async with self._check_limiter:
                self.stats.gateway_checks += 1
                assert self.gateway is not None
                answer = await ask_gateway(self.gateway, self.engine, invoice_id)
                events: list[Event] = []
                if answer is GatewayAnswer.PAID:
                    events = self.engine.mark_paid(invoice_id, now=self._now())
                elif answer is GatewayAnswer.UNPAID:
                    events = self.engine.expire(now=cutoff, invoice_ids=[invoice_id])
                if events:
                    await self._commit(events)
        except Exception as error:
            # Kept for the next commit: the next poll's commit stores and publishes it.
            self.stats.commit_failures += 1
            logger.error("could not commit the gateway check of %s: %s", invoice_id, error)
        finally:
            self._checking.discard(invoice_id)

    # -- events --------------------------------------------------------------

    def _publish(self, events: list[tuple[int, Event]]) -> None:
        counts = self.stats.events
        for _, event in events:
            # Keyed by class name ("InvoicePaid"), as ReconcilerStats.events always was.
            name = type(event).__name__
            counts[name] = counts.get(name, 0) + 1
            if isinstance(event, InvoicePaid):
                # Logged once committed, in every worker that publishes it.
                logger.info(
                    "invoice %s paid (%s)",
                    event.invoice.invoice_id,
                    event.source,
                    extra={
                        "merchant": self.feed.merchant,
                        "invoice_id": event.invoice.invoice_id,
                        "event_id": event.id,
                        "amount": event.invoice.total,
                        "source": event.source,
                    },
                )
        self._hub.publish(events)
        if self._tap is not None:
            self._tap(events)

    @overload
    def events(self, *, after: None = None, buffer: int | None = None) -> EventSubscription: ...
    @overload
    def events(self, *, after: str, buffer: int | None = None) -> ReplaySubscription: ...
    def events(
        self, *, after: str | None = None, buffer: int | None = None
    ) -> EventSubscription | ReplaySubscription:
        """Subscribe to every event from now on (see ``EventSubscription``).

        With ``after=`` an event id (needs a store): first every stored event
        committed after that one, in commit order, then the live ones, with no
        gap and no duplicate between the two (see ``ReplaySubscription``). A
        consumer that remembers the id of the last event it handled resumes
        with it and misses nothing across its own restarts; ``after=""`` (no
        event handled yet) gives every stored event first.
        """
        live = self._hub.subscribe(buffer)
        if after is None:
            return live
        if self._keeper is None:
            raise ValueError("events(after=...) needs a store: Reconciler(..., store=...)")
        return ReplaySubscription(live, self._keeper.store, self._keeper.merchant, after)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Reconciler {state} feed={self.feed!r} gateway={self.gateway!r}>"
