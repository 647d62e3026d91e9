"""The Reconciler: the I/O loop around the engine, under asyncio or trio (anyio).

It polls the feed on a schedule that respects the server's cache, feeds the
engine, declares invoices expired only when that is safe, confirms with the
gateway, and publishes events to waiters and subscribers (``_hub``). Invoices
are made in ``_issuing``.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.abc import TaskStatus

from . import qris
from ._checks import require_positive_int
from ._hub import OUTCOMES_KEPT as OUTCOMES_KEPT  # importable from here, as before
from ._hub import EventHub, EventSubscription, paid_or_raise
from ._issuing import CANCEL_BUDGET as CANCEL_BUDGET  # importable from here, as before
from ._issuing import MAX_CREATIONS as MAX_CREATIONS
from ._issuing import create_at_gateway, create_local
from .engine import ReconciliationEngine
from .errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    QrispayError,
    RateLimitError,
)
from .events import Event, InvoicePaid
from .gateway import GatewayClient
from .models import Invoice, InvoiceStatus
from .mutations import MutationClient
from .polling import PollPolicy, Schedule

__all__ = ["EventSubscription", "Reconciler", "ReconcilerStats"]

logger = logging.getLogger("qrispay.reconciler")

#: How many gateway checks may be under way at once.
GATEWAY_CHECKS_AT_ONCE = 8

# Answers that mean the configuration is wrong, not that the feed is down: at
# start-up they are raised instead of retried forever.
_FATAL_AT_START = (AuthenticationError, BadRequestError, NotFoundError)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@attrs.define
class ReconcilerStats:
    """Counters of a running Reconciler (read them; do not change them)."""

    polls: int = 0
    failures: int = 0
    rate_limited: int = 0
    consecutive_failures: int = 0
    rows_seen: int = 0
    rows_rejected: int = 0
    events: dict[str, int] = attrs.field(factory=dict)
    last_success: datetime | None = None
    last_error: str | None = None
    gateway_checks: int = 0


async def _sleep_until(deadline: float) -> None:
    left = deadline - anyio.current_time()
    if left > 0:
        await anyio.sleep(left)


class GatewayAnswer(enum.Enum):
    """What asking the gateway about an invoice past its expiry decided."""

    PAID = "paid"  # paid there: mark it paid here
    UNPAID = "unpaid"  # not paid there: expire it
    UNKNOWN = "unknown"  # no answer, or nothing to act on: ask again after the next fetch


class Reconciler:
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
    ):
        if static_qris is not None:
            qris.parse(static_qris)  # a bad payload fails here, not at the first invoice
        if not isinstance(invoice_ttl, timedelta) or invoice_ttl <= timedelta(0):
            raise ValueError("invoice_ttl must be a positive timedelta")
        require_positive_int(event_buffer, "event_buffer")
        self.feed = feed
        self.gateway = gateway
        self.static_qris = static_qris
        self.invoice_ttl = invoice_ttl
        self.policy = policy
        self.stats = ReconcilerStats()
        self._clock = clock or _utc_now
        self._engine = engine
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

    # -- the engine and the clock --------------------------------------------

    @property
    def engine(self) -> ReconciliationEngine:
        """The engine (made on first use, started at the clock's now)."""
        if self._engine is None:
            self._engine = ReconciliationEngine(started_at=self._now())
        return self._engine

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
            self.engine  # noqa: B018 - made now, so started_at is the start of the loop
            # A second run still owes the cache its window (and a 429 its wait).
            await _sleep_until(self._schedule.next_start(busy=True))
            async with anyio.create_task_group() as self._checks:
                fatal = await self._poll(first=True)
                if fatal is None:
                    task_status.started()
                    while True:
                        await self._wait_for_next_poll()
                        await self._poll()
                self._checks.cancel_scope.cancel()
            # Raised outside the task group, so the caller gets it as it is.
            assert fatal is not None
            raise fatal
        finally:
            self._checking.clear()
            self._running = False
            self._hub.close()

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
        self._schedule.started(anyio.current_time())
        fetch_started = self._now()
        self.stats.polls += 1
        try:
            batch = await self.feed.fetch(max_retries=0)
        except RateLimitError as error:
            self._schedule.rate_limited(error.retry_after)
            self._failed(error, rate_limited=True)
            return None
        except _FATAL_AT_START as error:
            if first:
                return error
            self._schedule.failed()
            self._failed(error)
            return None
        except Exception as error:
            # Whatever went wrong, the loop goes on; the schedule backs off.
            self._schedule.failed()
            self._failed(error)
            return None
        self._schedule.succeeded()
        now = self._now()
        self.stats.consecutive_failures = 0
        self.stats.last_success = now
        self.stats.last_error = None
        self.stats.rows_seen += len(batch)
        self.stats.rows_rejected += len(batch.rejected)
        self._publish(self.engine.ingest(batch, now=now, rejected=batch.rejected))
        self._expire_due(fetch_started)
        return None

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
        )

    def _expire_due(self, fetch_started: datetime) -> None:
        engine = self.engine
        # `now` for expire() is the fetch's start minus skew, so an invoice closes
        # only if this fetch started after its expired_at + skew.
        cutoff = fetch_started - engine.skew
        due = engine.due_for_expiry(cutoff)
        if self.gateway is None:
            self._publish(engine.expire(now=cutoff, invoice_ids=due))
            return
        assert self._checks is not None
        for invoice_id in due:
            if invoice_id not in self._checking:
                self._checking.add(invoice_id)
                self._checks.start_soon(self._check_then_expire, invoice_id, cutoff)

    async def _check_then_expire(self, invoice_id: str, cutoff: datetime) -> None:
        try:
            async with self._check_limiter:
                self.stats.gateway_checks += 1
                answer = await self._ask_gateway(invoice_id)
                if answer is GatewayAnswer.PAID:
                    self._publish(self.engine.mark_paid(invoice_id, now=self._now()))
                elif answer is GatewayAnswer.UNPAID:
                    self._publish(self.engine.expire(now=cutoff, invoice_ids=[invoice_id]))
        finally:
            self._checking.discard(invoice_id)

    async def _ask_gateway(self, invoice_id: str) -> GatewayAnswer:
        """What the gateway says of an invoice the feed shows unpaid past its
        expiry. It only asks (and logs); the caller acts on the answer."""
        assert self.gateway is not None
        try:
            invoice = await self.gateway.get_invoice(invoice_id)
        except NotFoundError:
            # Unknown there, so never paid there; the feed already says unpaid.
            logger.warning("the gateway does not know invoice %s; expiring it", invoice_id)
            return GatewayAnswer.UNPAID
        except Exception as error:
            # Unknown is not "unpaid": ask again after the next fetch.
            logger.warning("could not confirm invoice %s with the gateway: %s", invoice_id, error)
            return GatewayAnswer.UNKNOWN
        if self.engine.state_of(invoice_id) is not InvoiceStatus.PENDING:
            return GatewayAnswer.UNKNOWN  # settled while we asked: nothing left to decide
        if invoice.status is InvoiceStatus.PAID:
            return GatewayAnswer.PAID
        if invoice.status not in (InvoiceStatus.PENDING, InvoiceStatus.EXPIRED):
            logger.warning(
                "gateway reports invoice %s as %r; not declaring it expired",
                invoice_id,
                invoice.status,
            )
            return GatewayAnswer.UNKNOWN
        return GatewayAnswer.UNPAID

    # -- events --------------------------------------------------------------

    def _publish(self, events: list[Event]) -> None:
        counts = self.stats.events
        for event in events:
            # Keyed by class name ("InvoicePaid"), as ReconcilerStats.events always was.
            name = type(event).__name__
            counts[name] = counts.get(name, 0) + 1
        self._hub.publish(events)

    def events(self, *, buffer: int | None = None) -> EventSubscription:
        """Subscribe to every event from now on (see ``EventSubscription``)."""
        return self._hub.subscribe(buffer)

    # -- invoices ------------------------------------------------------------

    def track(self, invoice: Invoice) -> None:
        """Watch an invoice made elsewhere (``TotalConflictError`` if its total is taken).

        Track the invoices you already have before the first poll, so a payment
        made while the service was down still pays them.
        """
        self.engine.track(invoice, now=self._now())
        self._poke()

    async def create_invoice(self, amount: int) -> Invoice:
        """A new invoice, tracked at once.

        Through the gateway when there is one: if it hands out a total that is
        taken, a replacement is created first and the taken one is then
        cancelled; after three creations, ``TotalConflictError``. Without a
        gateway but with ``static_qris``: made locally, with a unique total and
        a dynamic QRIS payload (``qris_payload``) that carries it.
        """
        if self.gateway is not None:
            return await create_at_gateway(
                self.gateway, self.engine, amount, clock=self._now, on_tracked=self._poke
            )
        if self.static_qris is None:
            raise RuntimeError("create_invoice needs a gateway or a static_qris")
        invoice = create_local(
            self.engine, self.static_qris, amount, now=self._now(), ttl=self.invoice_ttl
        )
        self._poke()
        return invoice

    async def cancel_invoice(self, invoice_id: str) -> list[Event]:
        """Cancel an open invoice: at the gateway (if any), then here.

        A paid invoice raises ``InvoiceNotCancellableError`` from the gateway.
        """
        if self.engine.state_of(invoice_id) is None:
            raise KeyError(invoice_id)
        if self.gateway is not None:
            await self.gateway.cancel_invoice(invoice_id)
        events = self.engine.cancel(invoice_id, now=self._now())
        self._publish(events)
        return events

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
        outcome = await self._hub.wait_for_outcome(invoice_id, self.engine, timeout=timeout)
        return paid_or_raise(outcome)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Reconciler {state} feed={self.feed!r} gateway={self.gateway!r}>"
