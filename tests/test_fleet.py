"""Fleets: many merchants shared out over processes by the store's leases, in
virtual time on both backends and on MemoryStore and SQLite (docs/design.md,
"A fleet of merchants"). Every merchant has a sandbox of its own; each fleet
stands for one process.
"""

# ruff: noqa: F811 - new_store is test_restarts' fixture, imported by name

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from qrispay import Fleet, FleetEvent, InvoicePaid, MutationClient, PollPolicy
from qrispay.fleet import SCAN_INTERVAL
from qrispay.sandbox import LoopClock, Sandbox
from qrispay.store import MemoryStore, Store

from .test_reconciler import START, RecordingTransport, _static_qris, virtual_backend
from .test_restarts import new_store  # noqa: F401 - a fixture: one process's handle on the data
from .virtual_time import hold_time_during_threads

pytestmark = pytest.mark.anyio

POLICY = PollPolicy()
INTERVAL = POLICY.interval
LEASE_TTL = 45.0


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest, store_kind: str) -> tuple[str, dict[str, Any]]:
    return virtual_backend(request.param)


@pytest.fixture(autouse=True)
def _threads_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hold_time_during_threads(monkeypatch)


class _Slow(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, merchants: Merchants) -> None:
        self.inner = inner
        self.merchants = merchants

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(self.merchants.slow)
        return await self.inner.handle_async_request(request)


class Merchants:
    """One sandbox per merchant, on one clock; each fetch's virtual time recorded."""

    def __init__(self, count: int) -> None:
        self.clock = LoopClock(START)
        self.ids = [f"M{i:03d}" for i in range(count)]
        self.sandboxes = {
            m: Sandbox(clock=self.clock, seed=i, merchant=m, auth=f"a-{m}", token=f"t-{m}")
            for i, m in enumerate(self.ids)
        }
        self.transports = {m: RecordingTransport(s) for m, s in self.sandboxes.items()}
        for transport in self.transports.values():
            transport.inner = _Slow(transport.inner, self)
        self.bad_token: set[str] = set()
        #: Virtual seconds each request takes.
        self.slow = 0.0

    def feed_for(self, merchant: str) -> MutationClient:
        sandbox = self.sandboxes[merchant]
        token = "wrong-token" if merchant in self.bad_token else sandbox.token
        return MutationClient(
            sandbox.auth,
            merchant,
            token,
            base_url="http://sandbox.invalid",
            transport=self.transports[merchant],
        )

    def fetches(self, merchant: str) -> list[float]:
        return [t for t, _ in self.transports[merchant].feed]

    def assert_one_fetch_per_window(self) -> None:
        for merchant in self.ids:
            gaps = [b - a for a, b in itertools.pairwise(self.fetches(merchant))]
            assert min(gaps, default=INTERVAL) >= INTERVAL - 1e-6, (merchant, min(gaps))

    def worst_gap(self, merchant: str, after: float = 0.0) -> float:
        times = [t for t in self.fetches(merchant) if t >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


class Process:
    """A fleet run in its own cancel scope, as one process would run it, with a
    recorder of the events it publishes."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.scope = anyio.CancelScope()
        self.events: list[FleetEvent] = []

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            async with anyio.create_task_group() as tg:
                subscription = self.fleet.events()
                tg.start_soon(self._record, subscription)
                await self.fleet.run(task_status=task_status)

    async def _record(self, subscription: Any) -> None:
        async with subscription as events:
            async for item in events:
                self.events.append(item)

    def crash(self) -> None:
        """Gone without a word: no lease is released, they all lapse."""

        async def nothing() -> None:
            return None

        self.fleet._leave = nothing  # type: ignore[method-assign]
        for merchant in self.fleet.held:
            self.fleet.reconciler(merchant)._release = nothing  # type: ignore[method-assign]
        self.scope.cancel()


def fleet(merchants: Merchants, store: Store, worker_id: str, **kw: Any) -> Fleet:
    kw.setdefault("lease_ttl", LEASE_TTL)
    kw.setdefault("reconciler_options", {"static_qris": _static_qris()})
    return Fleet(
        store,
        kw.pop("ids", merchants.ids),
        merchants.feed_for,
        worker_id=worker_id,
        policy=POLICY,
        clock=merchants.clock,
        **kw,
    )


async def wait_until(check: Callable[[], bool], limit: float) -> float:
    """Virtual seconds until ``check()`` holds; fails past ``limit``."""
    began = anyio.current_time()
    with anyio.fail_after(limit):
        while not check():  # noqa: ASYNC110 - polls state that no event signals
            await anyio.sleep(0.25)
    return anyio.current_time() - began


async def invoice_each(world: Merchants, amount: int, *procs: Process) -> dict[str, int]:
    """An invoice of ``amount`` for every merchant, made in the process that
    holds it; each merchant's total."""
    totals = {}
    for merchant in world.ids:
        holder = next(p for p in procs if merchant in p.fleet.held)
        invoice = await holder.fleet.reconciler(merchant).create_invoice(amount)
        totals[merchant] = invoice.total
    return totals


def held_by(*processes: Process) -> list[str]:
    return sorted(m for p in processes for m in p.fleet.held)


def split(world: Merchants, *counts: tuple[Process, int]) -> Callable[[], bool]:
    """Each process polls its count of merchants, and together every merchant once."""
    return lambda: (
        all(len(p.fleet.held) == n for p, n in counts)
        and held_by(*(p for p, _ in counts)) == world.ids
    )


# -- sharing out ------------------------------------------------------------------------


async def test_two_fleets_share_merchants_evenly_and_fetch_once_per_window(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(20)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await tg.start(b.run)
            await wait_until(split(world, (a, 10), (b, 10)), 120)
            await invoice_each(world, 10_000, a, b)
            await anyio.sleep(10 * INTERVAL)
            assert held_by(a, b) == world.ids, "a merchant held twice, or not at all"
            status = a.fleet.status
            assert status is not None
            assert (status.share, status.wanted, dict(status.members)) == (
                10,
                20,
                {"A": 1000, "B": 1000},
            )
            tg.cancel_scope.cancel()
    world.assert_one_fetch_per_window()
    for merchant in world.ids:
        # Busy merchants: one fetch per window, none skipped.
        assert world.worst_gap(merchant, after=INTERVAL * 2) <= INTERVAL + SCAN_INTERVAL + 1e-6


async def test_first_fetches_of_merchants_taken_at_once_are_spread_over_an_interval(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(40)
    a = Process(fleet(world, new_store(), "A"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            began = anyio.current_time()
            await tg.start(a.run)
            await wait_until(lambda: all(world.fetches(m) for m in world.ids), 3 * INTERVAL)
            tg.cancel_scope.cancel()
    firsts = sorted(world.fetches(m)[0] - began for m in world.ids)
    assert firsts[-1] - firsts[0] >= INTERVAL * 0.9, "the first fetches were not spread"
    per_second = max(sum(1 for t in firsts if s <= t < s + 1) for s in range(int(INTERVAL)))
    assert per_second <= 3, f"{per_second} first fetches in one second"


async def test_capacity_is_never_exceeded_and_what_is_left_over_is_reported(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(12)
    a = Process(fleet(world, new_store(), "A", capacity=5))
    b = Process(fleet(world, new_store(), "B", capacity=4))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await tg.start(b.run)
            await wait_until(lambda: (len(a.fleet.held), len(b.fleet.held)) == (5, 4), 120)
            await anyio.sleep(5 * INTERVAL)
            assert (len(a.fleet.held), len(b.fleet.held)) == (5, 4)
            assert not set(a.fleet.held) & set(b.fleet.held)
            status = b.fleet.status
            assert status is not None
            assert status.unheld == 3
            tg.cancel_scope.cancel()


# -- hand-overs -----------------------------------------------------------------------


async def test_a_crashed_fleet_s_merchants_are_taken_within_the_lease(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(20)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await tg.start(b.run)
            await wait_until(split(world, (a, 10), (b, 10)), 120)
            await invoice_each(world, 10_000, a, b)
            await anyio.sleep(3 * INTERVAL)
            orphans = sorted(b.fleet.held)
            b.crash()
            crashed = anyio.current_time()
            took = await wait_until(lambda: len(a.fleet.held) == 20, LEASE_TTL * 2)
            # Its lease lapses lease_ttl after its last renewal at the latest.
            assert took <= LEASE_TTL + SCAN_INTERVAL + 1
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    world.assert_one_fetch_per_window()
    for merchant in orphans:
        assert world.worst_gap(merchant, after=crashed - INTERVAL) <= LEASE_TTL + INTERVAL + 2


async def test_a_payment_made_during_a_crash_hand_over_is_reported_once(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(6)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    totals: dict[str, int] = {}
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await tg.start(b.run)
            await wait_until(split(world, (a, 3), (b, 3)), 120)
            totals.update(await invoice_each(world, 25_000, a, b))
            await anyio.sleep(2 * INTERVAL)
            b.crash()
            for merchant, total in totals.items():
                world.sandboxes[merchant].pay(total)
            await wait_until(lambda: len(a.fleet.held) == 6, LEASE_TTL * 2)
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    paid = [
        (item.merchant, item.event.invoice.total, item.event.id)
        for item in a.events + b.events
        if isinstance(item.event, InvoicePaid)
    ]
    assert sorted((m, t) for m, t, _ in paid) == sorted(totals.items())
    assert len({event_id for _, _, event_id in paid}) == len(paid)


async def test_a_new_fleet_takes_half_of_an_old_one_s_merchants(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(20)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await wait_until(lambda: len(a.fleet.held) == 20, 60)
            for merchant in world.ids:
                await a.fleet.reconciler(merchant).create_invoice(10_000)
            await anyio.sleep(2 * INTERVAL)
            joined = anyio.current_time()
            await tg.start(b.run)
            took = await wait_until(split(world, (a, 10), (b, 10)), 60)
            assert took <= 5 * SCAN_INTERVAL
            await anyio.sleep(3 * INTERVAL)
            assert held_by(a, b) == world.ids
            tg.cancel_scope.cancel()
    world.assert_one_fetch_per_window()
    for merchant in world.ids:
        # A clean hand-over costs at most the wait for the cache window.
        assert world.worst_gap(merchant, after=joined - INTERVAL) <= INTERVAL + 5 * SCAN_INTERVAL


async def test_a_clean_stop_hands_every_merchant_over_at_once(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(10)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await tg.start(b.run)
            await wait_until(split(world, (a, 5), (b, 5)), 120)
            b.scope.cancel()
            took = await wait_until(lambda: len(a.fleet.held) == 10, 60)
            assert took <= 3 * SCAN_INTERVAL
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    world.assert_one_fetch_per_window()


async def test_a_fleet_stopped_during_a_fetch_hands_its_window_on(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(1)
    a = Process(fleet(world, new_store(), "A"))
    b = Process(fleet(world, new_store(), "B"))
    transport = world.transports["M000"]
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await wait_until(lambda: a.fleet.held == {"M000"}, 60)
            await a.fleet.reconciler("M000").create_invoice(10_000)
            await tg.start(b.run)
            await anyio.sleep(2 * INTERVAL)
            world.slow = 5.0
            await wait_until(lambda: transport.feed[-1][1] == 0, 2 * INTERVAL)
            a.scope.cancel()  # mid-fetch: the request may have reached the server
            await wait_until(lambda: b.fleet.held == {"M000"}, 10)
            world.slow = 0.0
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    world.assert_one_fetch_per_window()
    assert len(transport.feed) >= 6


# -- merchants coming and going, and failing ---------------------------------------------


async def test_merchants_come_and_go_with_the_application_s_list(
    new_store: Callable[[], Store],
) -> None:
    world = Merchants(8)
    wanted = list(world.ids[:4])

    async def merchants() -> list[str]:
        return list(wanted)

    store = new_store()
    a = Process(fleet(world, store, "A", ids=merchants))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await wait_until(lambda: a.fleet.held == set(world.ids[:4]), 30)
            wanted[:] = world.ids[2:]
            await wait_until(lambda: a.fleet.held == set(world.ids[2:]), 30)
            leases = await store.leases()
            for merchant in world.ids[:2]:
                assert leases[merchant].expires_at < world.clock(), "a dropped lease not released"
            tg.cancel_scope.cancel()


async def test_a_merchant_with_wrong_credentials_rests_and_the_others_go_on(
    new_store: Callable[[], Store], caplog: pytest.LogCaptureFixture
) -> None:
    world = Merchants(4)
    world.bad_token.add("M001")
    a = Process(fleet(world, new_store(), "A"))
    caplog.set_level(logging.DEBUG, logger="qrispay")
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await tg.start(a.run)
            await anyio.sleep(3 * INTERVAL)
            assert a.fleet.held == {"M000", "M002", "M003"}
            tg.cancel_scope.cancel()
    assert "M001" in caplog.text
    assert "wrong-token" not in caplog.text
    assert "t-M0" not in caplog.text


async def test_fleet_arguments_are_checked_at_once() -> None:
    world = Merchants(1)
    store = MemoryStore()
    with pytest.raises(ValueError, match="capacity"):
        Fleet(store, world.ids, world.feed_for, capacity=0)
    with pytest.raises(TypeError, match="one str"):
        Fleet(store, "M000", world.feed_for)
    with pytest.raises(TypeError, match="no option 'colour'"):
        Fleet(store, world.ids, world.feed_for, reconciler_options={"colour": 1})
    with pytest.raises(TypeError, match="the fleet sets it"):
        Fleet(store, world.ids, world.feed_for, reconciler_options={"store": store})
    with pytest.raises(ValueError, match="'/'"):
        Fleet(store, world.ids, world.feed_for, worker_id="a/b")
    with pytest.raises(ValueError, match="lease_ttl"):
        Fleet(store, world.ids, world.feed_for, lease_ttl=10)
    with pytest.raises(TypeError, match="Store"):
        Fleet(object(), world.ids, world.feed_for)  # type: ignore[arg-type]


async def test_a_feed_for_another_merchant_is_refused(
    new_store: Callable[[], Store], caplog: pytest.LogCaptureFixture
) -> None:
    world = Merchants(2)
    swapped = {"M000": "M001", "M001": "M001"}
    store = new_store()
    one = Fleet(
        store,
        world.ids,
        lambda m: world.feed_for(swapped[m]),
        policy=POLICY,
        clock=world.clock,
        lease_ttl=LEASE_TTL,
    )
    with anyio.fail_after(600):
        async with one:
            await anyio.sleep(2 * SCAN_INTERVAL)
            assert one.held == {"M001"}
    assert "gave the client of another merchant" in caplog.text
