"""The Reconciler against the in-process sandbox, in virtual time on both backends.

Every test runs under a virtual deadline (``anyio.fail_after``), so a broken
loop fails instead of hanging; pytest-timeout is the real-time backstop.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest

from qrispay import (
    AuthenticationError,
    EventsOverflowError,
    Invoice,
    InvoiceCancelled,
    InvoiceCancelledError,
    InvoiceExpired,
    InvoiceExpiredError,
    InvoicePaid,
    InvoiceStatus,
    OutcomeUnknownError,
    PollPolicy,
    Reconciler,
    ReconcilerStoppedError,
    ReconciliationEngine,
    TotalConflictError,
)
from qrispay._http import asgi_transport
from qrispay.sandbox import LoopClock, Sandbox

from .virtual_time import virtual_backend

pytestmark = pytest.mark.anyio

START = datetime(2025, 7, 1, 3, 0, tzinfo=timezone.utc)
POLICY = PollPolicy()
INTERVAL = POLICY.interval


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_backend(request.param)


class RecordingTransport(httpx.AsyncBaseTransport):
    """The sandbox in-process, with the (virtual) start time and status of each request."""

    def __init__(self, sandbox: Sandbox):
        self.inner = asgi_transport(sandbox.app)
        self.feed: list[tuple[float, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/check-payment":
            return await self.inner.handle_async_request(request)
        index = len(self.feed)
        self.feed.append((anyio.current_time(), 0))  # 0 while in flight
        response = await self.inner.handle_async_request(request)
        self.feed[index] = (self.feed[index][0], response.status_code)
        return response

    def gaps(self) -> list[float]:
        starts = [t for t, _ in self.feed]
        return [b - a for a, b in itertools.pairwise(starts)]


class World:
    """A sandbox, its clients and a clock shared by all of them."""

    def __init__(self, **sandbox_kw: Any):
        self.clock = LoopClock(START)
        self.sandbox = Sandbox(clock=self.clock, **sandbox_kw)
        self.transport = RecordingTransport(self.sandbox)
        self.feed = self.sandbox.mutation_client(transport=self.transport)
        self.gateway = self.sandbox.gateway_client()
        self.events: list[tuple[datetime, Any]] = []

    def reconciler(self, *, gateway: bool = True, **kw: Any) -> Reconciler:
        kw.setdefault("policy", POLICY)
        return Reconciler(
            self.feed, gateway=self.gateway if gateway else None, clock=self.clock, **kw
        )

    async def record(
        self, rec: Reconciler, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with rec.events() as events:
            task_status.started()
            async for event in events:
                self.events.append((self.clock(), event))

    @staticmethod
    async def stop(tg: anyio.abc.TaskGroup) -> None:
        """Let the recorder catch up with events just published, then stop."""
        await anyio.sleep(1)
        tg.cancel_scope.cancel()

    def of(self, kind: type) -> list[Any]:
        return [event for _, event in self.events if isinstance(event, kind)]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(seed=5)
    async with w.feed, w.gateway:
        yield w


async def test_simulated_hour_one_fetch_per_window_none_missed_none_doubled(world: World) -> None:
    rng = random.Random(11)
    paid_at: dict[str, datetime] = {}
    invoices: dict[str, Invoice] = {}

    async def customer(rec: Reconciler, when: float, amount: int, pays: float | None) -> None:
        await anyio.sleep(when)
        invoice = await rec.create_invoice(amount)
        invoices[invoice.invoice_id] = invoice
        if pays is not None:
            await anyio.sleep(pays)
            world.sandbox.pay(invoice.total)
            paid_at[invoice.invoice_id] = world.clock()

    with anyio.fail_after(3 * 3600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            await tg.start(world.record, rec)
            first_fetch = anyio.current_time()
            async with anyio.create_task_group() as customers:
                for _ in range(200):
                    pays = rng.uniform(1, 14 * 60) if rng.random() < 0.75 else None
                    amount = rng.randrange(10_000, 500_000, 500)
                    customers.start_soon(customer, rec, rng.uniform(0, 2700), amount, pays)
            # Let every invoice close: 15 min validity, 2 min skew, one window.
            await anyio.sleep(15 * 60 + 120 + 2 * INTERVAL)
            elapsed = anyio.current_time() - first_fetch
            await world.stop(tg)

    assert len(invoices) == 200
    fetches = len(world.transport.feed)
    assert fetches <= elapsed / INTERVAL + 1
    assert min(world.transport.gaps()) >= INTERVAL - 1e-6
    paid = {
        event.invoice.invoice_id: (when, event)
        for when, event in world.events
        if isinstance(event, InvoicePaid)
    }
    assert len(world.of(InvoicePaid)) == len(paid)  # none doubled
    assert set(paid) == set(paid_at)  # none missed, none invented
    for invoice_id, (when, event) in paid.items():
        assert event.source == "mutation"
        assert event.mutation.amount == invoices[invoice_id].total
        assert when - paid_at[invoice_id] <= timedelta(seconds=INTERVAL)
    expired = {event.invoice.invoice_id for event in world.of(InvoiceExpired)}
    assert expired == set(invoices) - set(paid_at)
    assert not [e for _, e in world.events if not isinstance(e, (InvoicePaid, InvoiceExpired))]


async def test_no_invoice_is_declared_expired_before_expired_at_plus_skew(world: World) -> None:
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            await tg.start(world.record, rec)
            made = [await rec.create_invoice(10_000 * (i + 1)) for i in range(3)]
            for invoice in made:
                tg.start_soon(_expect_expired, rec, invoice.invoice_id)
            await anyio.sleep(20 * 60)
            await world.stop(tg)
    expired = world.of(InvoiceExpired)
    assert len(expired) == 3
    skew = rec.engine.skew
    for when, event in world.events:
        if isinstance(event, InvoiceExpired):
            assert when > event.invoice.expired_at + skew
            assert when <= event.invoice.expired_at + skew + timedelta(seconds=INTERVAL)
    # Each was confirmed with the gateway once before being declared expired.
    assert world.sandbox.stats.requests["invoice_status"] == 3


async def _expect_expired(rec: Reconciler, invoice_id: str) -> None:
    with pytest.raises(InvoiceExpiredError) as caught:
        await rec.wait_for_payment(invoice_id)
    assert caught.value.invoice.status is InvoiceStatus.EXPIRED


async def test_gateway_only_payment_becomes_paid_not_expired(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(25_000)
            await anyio.sleep(60)
            # The customer pays, but the feed never shows the row.
            world.sandbox.pay(invoice.total, hidden=True)
            paid = await rec.wait_for_payment(invoice.invoice_id)
            when = world.clock()
    assert paid.source == "gateway"
    assert paid.mutation is None
    # Learned when the invoice was due to expire, and not declared expired.
    assert when > invoice.expired_at + rec.engine.skew
    assert rec.engine.state_of(invoice.invoice_id) is InvoiceStatus.PAID
    assert rec.stats.events.get("InvoiceExpired", 0) == 0


async def test_payment_in_the_last_second_is_paid_not_expired(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(30_000)
            await anyio.sleep((invoice.expired_at - world.clock()).total_seconds() - 1)
            world.sandbox.pay(invoice.total)
            paid = await rec.wait_for_payment(invoice.invoice_id)
    assert paid.source == "mutation"


async def test_payment_just_after_the_window_is_late_not_unmatched(world: World) -> None:
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            await tg.start(world.record, rec)
            invoice = await rec.create_invoice(35_000)
            window_end = invoice.expired_at + rec.engine.skew
            await anyio.sleep((window_end - world.clock()).total_seconds() + 1)
            # Paid a second after the window, before any fetch could expire it.
            world.sandbox.pay(invoice.total)
            await anyio.sleep(2 * INTERVAL)
            await world.stop(tg)
    kinds = [type(e).__name__ for _, e in world.events]
    assert kinds == ["InvoiceExpired", "LatePayment"]


async def test_rate_limit_is_waited_out_with_retry_after(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            rec.track(_local_invoice(world, 10_001))
            await anyio.sleep(INTERVAL / 2)
            world.sandbox.fail_next(
                "rate_limit", endpoint="check_payment", times=2, retry_after=100
            )
            await anyio.sleep(600)
    feed = world.transport.feed
    statuses = [status for _, status in feed]
    assert statuses[:4] == [200, 429, 429, 200]
    gaps = world.transport.gaps()
    assert gaps[0] == pytest.approx(INTERVAL)
    assert gaps[1] == pytest.approx(100)  # max(Retry-After, ttl + margin)
    assert gaps[2] == pytest.approx(200)  # doubled on the second 429
    assert gaps[3] == pytest.approx(INTERVAL)  # back to normal after a success
    assert rec.stats.rate_limited == 2


async def test_other_failures_back_off_from_the_interval_to_the_cap(world: World) -> None:
    policy = PollPolicy(max_backoff=200)
    with anyio.fail_after(3600):
        async with world.reconciler(policy=policy) as rec:
            rec.track(_local_invoice(world, 10_001))
            world.sandbox.faults.error_rate = 1.0
            await anyio.sleep(1500)
    gaps = world.transport.gaps()
    assert all(gap >= INTERVAL - 1e-6 for gap in gaps)
    assert max(gaps) == pytest.approx(200)
    assert gaps[1] > gaps[0]
    assert rec.stats.failures >= 5
    assert rec.stats.consecutive_failures == rec.stats.failures


async def test_feed_down_for_ten_minutes_loses_no_payment(world: World) -> None:
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            await tg.start(world.record, rec)
            invoices = [await rec.create_invoice(10_000 * (i + 1)) for i in range(6)]
            await anyio.sleep(40)
            world.sandbox.faults.error_rate = 1.0
            for invoice in invoices[:5]:
                await anyio.sleep(100)
                world.sandbox.pay(invoice.total)
            await anyio.sleep(600 - 500)
            world.sandbox.faults.error_rate = 0.0
            paid = [await rec.wait_for_payment(i.invoice_id) for i in invoices[:5]]
            await world.stop(tg)
    assert [p.invoice.invoice_id for p in paid] == [i.invoice_id for i in invoices[:5]]
    assert all(p.source == "mutation" for p in paid)
    assert rec.stats.failures > 0
    assert len(world.of(InvoicePaid)) == 5
    assert rec.engine.state_of(invoices[5].invoice_id) is InvoiceStatus.PENDING


async def test_outage_past_expiry_still_pays_invoices_paid_in_time(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(40_000)
            world.sandbox.faults.error_rate = 1.0
            await anyio.sleep(14 * 60)
            world.sandbox.pay(invoice.total)  # in time, while the feed is down
            await anyio.sleep(10 * 60)  # past expired_at + skew, feed still down
            assert rec.engine.state_of(invoice.invoice_id) is InvoiceStatus.PENDING
            world.sandbox.faults.error_rate = 0.0
            paid = await rec.wait_for_payment(invoice.invoice_id)
    assert paid.source == "mutation"


async def test_smallest_free_code_gateway_still_yields_a_fresh_total(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            first = await rec.create_invoice(10_000)
            world.sandbox.pay(first.total)
            await rec.wait_for_payment(first.invoice_id)
            # The gateway only keeps totals unique among *pending* invoices, so it
            # hands out first.total again; that total is reserved here.
            second = await rec.create_invoice(10_000)
    assert second.total != first.total
    ids = world.sandbox.invoice_ids()
    assert len(ids) == 3
    taken = [i for i in ids if i not in (first.invoice_id, second.invoice_id)]
    assert world.sandbox.invoice(taken[0])["total"] == first.total
    assert world.sandbox.invoice(taken[0])["status"] == "expired"  # cancelled
    assert world.sandbox.invoice(second.invoice_id)["status"] == "pending"
    assert world.sandbox.stats.requests["cancel_invoice"] == 1
    assert rec.engine.state_of(second.invoice_id) is InvoiceStatus.PENDING


async def test_three_taken_totals_raise_and_cancel_all_three(world: World) -> None:
    engine = ReconciliationEngine(started_at=START)
    for code in (1, 2, 3):
        engine.track(_invoice(f"old{code}", 10_000 + code), now=START)
        engine.mark_paid(f"old{code}", now=START)
    with anyio.fail_after(600):
        async with world.reconciler(engine=engine) as rec:
            with pytest.raises(TotalConflictError):
                await rec.create_invoice(10_000)
    statuses = [world.sandbox.invoice(i)["status"] for i in world.sandbox.invoice_ids()]
    assert statuses == ["expired", "expired", "expired"]
    assert rec.engine.open_invoices() == []


async def test_wait_for_payment_timeout_and_cancel(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(12_000)
            with pytest.raises(TimeoutError):
                await rec.wait_for_payment(invoice.invoice_id, timeout=45)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_expect_cancelled, rec, invoice.invoice_id)
                await anyio.sleep(1)
                events = await rec.cancel_invoice(invoice.invoice_id)
            assert isinstance(events[0], InvoiceCancelled)
            # Asking after the fact answers at once.
            with pytest.raises(InvoiceCancelledError):
                await rec.wait_for_payment(invoice.invoice_id)
            with pytest.raises(KeyError):
                await rec.wait_for_payment("nope")
    assert world.sandbox.invoice(invoice.invoice_id)["status"] == "expired"


async def _expect_cancelled(rec: Reconciler, invoice_id: str) -> None:
    with pytest.raises(InvoiceCancelledError):
        await rec.wait_for_payment(invoice_id)


async def test_wait_for_an_invoice_tracked_already_paid_answers_at_once(world: World) -> None:
    rec = world.reconciler()
    paid = attrs.evolve(_invoice("done", 10_009), status=InvoiceStatus.PAID)
    expired = attrs.evolve(_invoice("gone", 10_008), status=InvoiceStatus.EXPIRED)
    rec.track(paid)
    rec.track(expired)
    with anyio.fail_after(1):
        event = await rec.wait_for_payment("done")
        with pytest.raises(InvoiceExpiredError):
            await rec.wait_for_payment("gone")
    assert event.source == "record"
    assert event.invoice.invoice_id == "done"


async def test_errors_in_the_body_propagate_unwrapped(world: World) -> None:
    with anyio.fail_after(60), pytest.raises(KeyError, match="boom"):
        async with world.reconciler():
            raise KeyError("boom")


async def test_waiters_are_woken_when_the_loop_stops(world: World) -> None:
    failures: list[BaseException] = []

    async def wait(rec: Reconciler, invoice_id: str) -> None:
        try:
            await rec.wait_for_payment(invoice_id)
        except ReconcilerStoppedError as error:
            failures.append(error)

    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            invoice = await rec.create_invoice(16_000)
            tg.start_soon(wait, rec, invoice.invoice_id)
            await anyio.sleep(5)
    assert len(failures) == 1
    assert rec.engine.state_of(invoice.invoice_id) is InvoiceStatus.PENDING


async def test_many_waiters_on_one_invoice(world: World) -> None:
    results: list[InvoicePaid] = []

    async def wait(rec: Reconciler, invoice_id: str) -> None:
        results.append(await rec.wait_for_payment(invoice_id, timeout=600))

    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(15_000)
            async with anyio.create_task_group() as tg:
                for _ in range(500):
                    tg.start_soon(wait, rec, invoice.invoice_id)
                await anyio.sleep(5)
                world.sandbox.pay(invoice.total)
    assert len(results) == 500
    assert len({id(r) for r in results}) == 1
    assert rec._hub._waiters == {}


async def test_events_subscriber_that_falls_behind_gets_an_error_not_a_gap(world: World) -> None:
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg, world.reconciler() as rec:
            await tg.start(world.record, rec)
            slow = rec.events(buffer=2)
            made = [await rec.create_invoice(10_000 * (i + 1)) for i in range(5)]
            for invoice in made:
                world.sandbox.pay(invoice.total)
            await anyio.sleep(2 * INTERVAL)
            received: list[Any] = []

            async def drain() -> None:
                async for event in slow:
                    received.append(event)

            with pytest.raises(EventsOverflowError):
                await drain()
            await world.stop(tg)
    # It got the first two, in order, then the error; the fast one got all five.
    assert [e.invoice.total for e in received] == [i.total for i in made[:2]]
    assert len(world.of(InvoicePaid)) == 5


async def test_idle_interval_and_waking_up(world: World) -> None:
    policy = PollPolicy(idle_interval=300)
    with anyio.fail_after(7200):
        async with world.reconciler(policy=policy) as rec:
            await anyio.sleep(1000)
            idle_fetches = len(world.transport.feed)
            rec.track(_local_invoice(world, 10_001))
            await anyio.sleep(INTERVAL + 1)
            busy_fetches = len(world.transport.feed)
    assert idle_fetches == 4  # at 0, 300, 600, 900
    assert busy_fetches >= idle_fetches + 1
    assert min(world.transport.gaps()) >= INTERVAL - 1e-6


async def test_no_polling_when_idle_and_configured_so(world: World) -> None:
    with anyio.fail_after(7200):
        async with world.reconciler(policy=PollPolicy(idle_interval=None)) as rec:
            await anyio.sleep(3000)
            assert len(world.transport.feed) == 1  # the start-up poll only
            invoice = await rec.create_invoice(20_000)
            world.sandbox.pay(invoice.total)
            await rec.wait_for_payment(invoice.invoice_id)
    assert len(world.transport.feed) >= 2


async def test_late_grace_keeps_polling_after_the_last_invoice_closes(world: World) -> None:
    with anyio.fail_after(7200):
        async with world.reconciler(policy=PollPolicy(idle_interval=None)) as rec:
            invoice = await rec.create_invoice(20_000)
            world.sandbox.pay(invoice.total)
            await rec.wait_for_payment(invoice.invoice_id)
            before = len(world.transport.feed)
            await anyio.sleep(1800)
            during_grace = len(world.transport.feed) - before
            await anyio.sleep(3600)
            after_grace = len(world.transport.feed) - before - during_grace
    assert during_grace >= 1800 / INTERVAL - 1
    assert after_grace <= 1800 / INTERVAL + 1


async def test_cancelling_mid_poll_leaves_the_engine_consistent(world: World) -> None:
    with anyio.fail_after(600):
        rec = world.reconciler()
        async with rec:
            invoice = await rec.create_invoice(11_000)
            world.sandbox.pay(invoice.total)
            world.sandbox.faults.latency = 20.0  # the next fetch hangs in flight
            await anyio.sleep(INTERVAL + 5)
            assert world.transport.feed[-1][1] == 0  # in flight
            snapshot = rec.engine.snapshot()
        # Leaving the block cancelled the fetch in flight; nothing half-applied.
        assert rec.engine.snapshot() == snapshot
        assert rec.engine.state_of(invoice.invoice_id) is InvoiceStatus.PENDING
        world.sandbox.faults.latency = 0.0
        async with rec:
            paid = await rec.wait_for_payment(invoice.invoice_id)
    assert paid.source == "mutation"


async def test_start_in_a_task_group_and_clients_stay_open(world: World) -> None:
    with anyio.fail_after(600):
        rec = world.reconciler()
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            assert len(world.transport.feed) == 1  # started after the first poll
            with pytest.raises(RuntimeError, match="already running"):
                await rec.run()
            tg.cancel_scope.cancel()
    assert (await world.gateway.get_balance()).balance >= 0
    assert len(await world.feed.fetch()) >= 0


async def test_wrong_credentials_fail_at_start_up() -> None:
    clock = LoopClock(START)
    sandbox = Sandbox(clock=clock)
    bad = sandbox.mutation_client()
    bad._core._secrets["token"] = "wrong"  # as if the user mistyped it
    with anyio.fail_after(60):
        async with bad:
            with pytest.raises(AuthenticationError):
                async with Reconciler(bad, clock=clock):
                    pass


async def test_transient_failure_at_start_up_does_not_stop_the_loop(world: World) -> None:
    world.sandbox.fail_next("error", endpoint="check_payment")
    with anyio.fail_after(600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(13_000)
            world.sandbox.pay(invoice.total)
            await rec.wait_for_payment(invoice.invoice_id)
    assert rec.stats.failures == 1


async def test_invoices_tracked_before_the_first_poll_are_paid_by_history(world: World) -> None:
    # The service was down: the invoice was made and paid before it started.
    made = world.sandbox.create_invoice(50_000)
    world.sandbox.pay(made["total"])
    await anyio.sleep(3600)
    invoice = await world.gateway.get_invoice(made["invoice_id"])
    pending = Invoice(
        invoice_id=invoice.invoice_id,
        amount=invoice.amount,
        fee=invoice.fee,
        total=invoice.total,
        status=InvoiceStatus.PENDING,
        qris_image=invoice.qris_image,
        expired_at=invoice.expired_at,
        created_at=invoice.created_at,
    )
    rec = world.reconciler(gateway=False)
    rec.track(pending)
    with anyio.fail_after(600):
        async with rec:
            paid = await rec.wait_for_payment(invoice.invoice_id)
    assert paid.source == "mutation"
    assert paid.mutation is not None
    assert paid.mutation.amount == invoice.total


async def test_stats(world: World) -> None:
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            invoice = await rec.create_invoice(14_000)
            world.sandbox.pay(invoice.total)
            world.sandbox.add_row({"date": "kemarin", "amount": "?"})
            await rec.wait_for_payment(invoice.invoice_id)
    stats = rec.stats
    assert stats.polls == len(world.transport.feed)
    assert stats.rows_seen >= 1
    assert stats.rows_rejected >= 1
    assert stats.events["InvoicePaid"] == 1
    assert stats.events["RejectedRows"] == 1
    assert stats.last_success is not None
    assert stats.failures == 0


async def test_local_invoices_from_a_static_qris_are_paid_with_only_the_feed(world: World) -> None:
    from qrispay import qris

    static = _static_qris()
    with anyio.fail_after(3600):
        async with world.reconciler(gateway=False, static_qris=static) as rec:
            first = await rec.create_invoice(10_000)
            second = await rec.create_invoice(10_000)
            assert first.total != second.total
            for invoice in (first, second):
                assert invoice.qris_payload is not None
                payload = qris.parse(invoice.qris_payload)
                assert payload.is_dynamic
                assert payload.amount == invoice.total
            world.sandbox.pay(second.total)
            paid = await rec.wait_for_payment(second.invoice_id)
            assert rec.engine.state_of(first.invoice_id) is InvoiceStatus.PENDING
    assert paid.source == "mutation"
    assert world.sandbox.stats.requests["create_invoice"] == 0


async def test_create_invoice_needs_a_gateway_or_a_static_qris(world: World) -> None:
    rec = world.reconciler(gateway=False)
    with pytest.raises(RuntimeError, match="static_qris"):
        await rec.create_invoice(10_000)


async def test_re_entering_respects_the_cache_window(world: World) -> None:
    rec = world.reconciler()
    with anyio.fail_after(600):
        async with rec:
            await anyio.sleep(5)
        async with rec:
            await anyio.sleep(1)
    assert len(world.transport.feed) == 2
    assert world.transport.gaps()[0] >= INTERVAL - 1e-6


async def test_a_slow_gateway_does_not_delay_the_next_fetch(world: World) -> None:
    with anyio.fail_after(7200):
        async with world.reconciler() as rec:
            for i in range(8):
                await rec.create_invoice(10_000 * (i + 1))
            world.sandbox.faults.latency = 20.0
            world.sandbox.faults.endpoints = frozenset({"invoice_status"})
            await anyio.sleep(20 * 60)
    gaps = world.transport.gaps()
    assert max(gaps) <= INTERVAL + INTERVAL / 2 + 1e-6
    assert rec.stats.events.get("InvoiceExpired") == 8


async def test_after_stopping_waits_and_subscriptions_end_at_once(world: World) -> None:
    rec = world.reconciler()
    with anyio.fail_after(600):
        async with rec:
            invoice = await rec.create_invoice(17_000)
        with pytest.raises(ReconcilerStoppedError):
            await rec.wait_for_payment(invoice.invoice_id)
        assert [event async for event in rec.events()] == []


async def test_an_invoice_the_gateway_does_not_know_still_expires(world: World) -> None:
    stranger = _invoice("not-at-the-gateway", 10_007)
    stranger = attrs.evolve(stranger, expired_at=START + timedelta(minutes=5))
    with anyio.fail_after(3600):
        async with world.reconciler() as rec:
            rec.track(stranger)
            with pytest.raises(InvoiceExpiredError):
                await rec.wait_for_payment(stranger.invoice_id)
    assert rec.stats.gateway_checks == 1


async def test_a_gateway_that_repeats_an_id_is_not_trusted(world: World) -> None:
    with anyio.fail_after(600):
        async with world.reconciler() as rec:
            first = await rec.create_invoice(10_000)
            original = world.gateway.create_invoice

            async def same_id(amount: int) -> Invoice:
                made = await original(amount)
                return attrs.evolve(made, invoice_id=first.invoice_id)

            world.gateway.create_invoice = same_id  # type: ignore[method-assign]
            with pytest.raises(OutcomeUnknownError, match="already tracked"):
                await rec.create_invoice(20_000)


async def test_taken_invoices_are_cancelled_even_if_the_caller_gives_up(world: World) -> None:
    engine = ReconciliationEngine(started_at=START)
    engine.track(_invoice("old", 10_001), now=START)
    engine.mark_paid("old", now=START)
    world.sandbox.faults.latency = 5.0
    world.sandbox.faults.endpoints = frozenset({"create_invoice"})
    with anyio.fail_after(600):
        async with world.reconciler(engine=engine) as rec:
            with anyio.move_on_after(7):  # after the first creation, during the second
                await rec.create_invoice(10_000)
            await anyio.sleep(60)
    statuses = {
        world.sandbox.invoice(i)["total"]: world.sandbox.invoice(i)["status"]
        for i in world.sandbox.invoice_ids()
    }
    assert statuses[10_001] == "expired"  # the taken one, cancelled


def _invoice(invoice_id: str, total: int) -> Invoice:
    return Invoice(
        invoice_id=invoice_id,
        amount=total - total % 1000,
        fee=total % 1000,
        total=total,
        status=InvoiceStatus.PENDING,
        qris_image="",
        expired_at=START + timedelta(hours=10),
        created_at=START,
    )


def _local_invoice(world: World, total: int) -> Invoice:
    return _invoice(f"local-{total}", total)


def _tlv(tag: str, value: str) -> str:
    return f"{tag}{len(value):02d}{value}"


def _static_qris() -> str:
    from qrispay import qris

    merchant = _tlv("00", "ID.CO.QRIS.WWW") + _tlv("02", "ID1020000001")
    core = (
        _tlv("00", "01")
        + _tlv("01", "11")
        + _tlv("26", merchant)
        + _tlv("52", "5812")
        + _tlv("53", "360")
        + _tlv("58", "ID")
        + _tlv("59", "TOKO SARI")
        + _tlv("60", "JAKARTA")
        + "6304"
    )
    return core + qris.crc16(core)
