"""Several Reconcilers on one store for one merchant, in virtual time on both
backends and both stores (API.md, "Several Reconcilers on one store"): one
polls, all of them report, a hand-over keeps the cache window and loses no
payment, a former poller can never commit, and no total is given twice.

A MemoryStore object shared by the workers stands for a shared database; with
SQLite each worker opens the file with its own store, as separate processes do.
"""

# ruff: noqa: F811 - new_store is test_restarts' fixture, imported by name

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import pytest

from qrispay import (
    Event,
    InvoiceCancelled,
    InvoiceCancelledError,
    InvoiceExpired,
    InvoiceExpiredError,
    InvoicePaid,
    LatePayment,
    LeaseLostError,
    Mutation,
    MutationBatch,
    MutationType,
    PollPolicy,
    Reconciler,
    TotalConflictError,
)
from qrispay._workers import FOLLOW_INTERVAL
from qrispay.models import JAKARTA
from qrispay.store import Changes, Store, StoredEvent

from .test_reconciler import INTERVAL, World, _invoice, _static_qris, virtual_backend
from .test_restarts import new_store  # noqa: F401 - a fixture: one worker's handle on the shared data
from .virtual_time import hold_time_during_threads

pytestmark = pytest.mark.anyio

#: Short, so that a crash's hand-over takes little virtual time; still past a window.
LEASE_TTL = 45.0
#: Slack for the work between two timers (none takes virtual time).
EPS = 1e-3


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest, store_kind: str) -> tuple[str, dict[str, Any]]:
    return virtual_backend(request.param)


@pytest.fixture(autouse=True)
def _threads_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hold_time_during_threads(monkeypatch)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(seed=7)
    async with w.feed, w.gateway:
        yield w


class Worker:
    """One Reconciler run in its own cancel scope, with a recorder of its live events."""

    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self.scope = anyio.CancelScope()
        self.events: list[tuple[float, Event]] = []
        self.running = False

    async def _run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        subscription = self.rec.events()
        with self.scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._record, subscription)
                self.running = True
                try:
                    await self.rec.run(task_status=task_status)
                finally:
                    self.running = False
                    tg.cancel_scope.cancel()

    async def _record(self, subscription: Any) -> None:
        async with subscription as events:
            async for event in events:
                self.events.append((anyio.current_time(), event))

    def stop(self) -> None:
        """A clean stop: the lease is released."""
        self.scope.cancel()

    def crash(self) -> None:
        """Gone without a word: the lease is not released, only lapses."""

        async def released() -> None:
            return None

        self.rec._release = released  # type: ignore[method-assign]
        self.scope.cancel()

    def ids(self) -> list[str]:
        return [event.id for _, event in self.events]

    def paid_ids(self) -> list[str]:
        return [e.invoice.invoice_id for _, e in self.events if isinstance(e, InvoicePaid)]


class Team:
    """Several workers of one merchant on one store."""

    def __init__(self, world: World, new_store: Callable[[], Store], n: int, **kw: Any) -> None:
        kw.setdefault("lease_ttl", LEASE_TTL)
        self.world = world
        self.workers = [
            Worker(world.reconciler(store=new_store(), worker_id=f"w{i}", **kw)) for i in range(n)
        ]
        self.samples: list[tuple[float, list[str]]] = []

    @property
    def recs(self) -> list[Reconciler]:
        return [worker.rec for worker in self.workers]

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        for worker in self.workers:
            await tg.start(worker._run)
        tg.start_soon(self._sample)

    async def _sample(self) -> None:
        while True:
            self.samples.append((anyio.current_time(), self.pollers()))
            await anyio.sleep(0.25)

    def pollers(self) -> list[str]:
        return [w.rec.worker_id for w in self.workers if w.running and w.rec.is_polling]

    def poller(self) -> Worker:
        (worker,) = [w for w in self.workers if w.running and w.rec.is_polling]
        return worker

    def others(self, worker: Worker) -> list[Worker]:
        return [w for w in self.workers if w is not worker and w.running]


def fetch_times(world: World) -> list[float]:
    return [t for t, _ in world.transport.feed]


def assert_window_kept(world: World) -> None:
    gaps = world.transport.gaps()
    assert gaps, "the feed was not fetched twice"
    assert min(gaps) >= INTERVAL - 1e-6, f"two fetches {min(gaps):.3f}s apart"


# -- one poller, everything reported in every worker ---------------------------------


@pytest.mark.parametrize("n", [2, 3])
async def test_exactly_one_worker_polls_and_all_fetch_once_per_window(
    world: World, new_store: Callable[[], Store], n: int
) -> None:
    team = Team(world, new_store, n)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            started = anyio.current_time()
            # Open invoices in every worker: each one has work, so each would poll.
            for rec in team.recs:
                await rec.create_invoice(10_000)
            await anyio.sleep(5 * 60)
            elapsed = anyio.current_time() - started
            tg.cancel_scope.cancel()
    assert {len(pollers) for _, pollers in team.samples} == {1}
    assert len({tuple(p) for _, p in team.samples}) == 1, "the lease moved without a cause"
    fetches = len(world.transport.feed)
    assert fetches <= elapsed / INTERVAL + 1
    assert fetches >= elapsed / INTERVAL - 1
    assert_window_kept(world)


async def test_an_invoice_made_in_one_worker_is_paid_and_reported_in_all(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            invoices = [
                await rec.create_invoice(10_000 + 1000 * i) for i, rec in enumerate(team.recs)
            ]
            for invoice in invoices:
                world.sandbox.pay(invoice.total)
            world.sandbox.pay(77_777)  # nobody's
            for rec in team.recs:
                for invoice in invoices:
                    paid = await rec.wait_for_payment(invoice.invoice_id)
                    assert paid.invoice.invoice_id == invoice.invoice_id
                    assert paid.invoice.total == invoice.total
            await anyio.sleep(2 * FOLLOW_INTERVAL)
            stored = await team.recs[0].store.events_after(world.feed.merchant, 0, 100)  # type: ignore[union-attr]
            replays: list[list[str]] = []
            for rec in team.recs:
                got: list[str] = []
                async with rec.events(after=stored[0].id) as events:
                    async for event in events:
                        got.append(event.id)
                        if len(got) == len(stored) - 1:
                            break
                replays.append(got)
            tg.cancel_scope.cancel()
    expected = [f"paid:{invoice.invoice_id}" for invoice in invoices]
    ids = [s.id for s in stored]
    assert sorted(ids[:3]) == sorted(expected)
    assert ids[3].startswith("unmatched:")
    assert len(ids) == 4
    for worker in team.workers:
        assert worker.ids() == ids, f"{worker.rec.worker_id} published another order"
    assert replays == [ids[1:]] * 3


async def test_cancel_works_in_a_worker_that_did_not_create_the_invoice(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 2)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            maker, other = team.recs
            invoice = await maker.create_invoice(10_000)
            # At once: the other worker has not caught up with the store yet.
            events = await other.cancel_invoice(invoice.invoice_id)
            assert [type(e) for e in events] == [InvoiceCancelled]
            with pytest.raises(InvoiceCancelledError):
                await maker.wait_for_payment(invoice.invoice_id, timeout=5)
            with pytest.raises(InvoiceCancelledError):
                await other.wait_for_payment(invoice.invoice_id, timeout=5)
            with pytest.raises(KeyError):
                await other.cancel_invoice("no-such-invoice")
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    assert world.sandbox.invoice(invoice.invoice_id)["status"] == "expired"  # cancelled
    for worker in team.workers:
        assert worker.ids() == [f"cancelled:{invoice.invoice_id}"]


async def test_a_follower_sees_committed_events_within_about_a_second(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            poller = team.poller()
            invoice = await poller.rec.create_invoice(10_000)
            # A follower knows an invoice made elsewhere within a second, unasked.
            await anyio.sleep(FOLLOW_INTERVAL + EPS)
            for worker in team.others(poller):
                assert worker.rec.engine.get(invoice.invoice_id) is not None
            world.sandbox.pay(invoice.total)
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    (when_committed,) = [t for t, e in poller.events if isinstance(e, InvoicePaid)]
    for worker in [w for w in team.workers if w is not poller]:
        (when_seen,) = [t for t, e in worker.events if isinstance(e, InvoicePaid)]
        assert 0 <= when_seen - when_committed <= FOLLOW_INTERVAL + EPS


# -- hand-over --------------------------------------------------------------------


async def test_a_clean_stop_hands_the_lease_on_within_one_window(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            invoice = await team.recs[1].create_invoice(10_000)
            await anyio.sleep(2 * INTERVAL + 7)
            old = team.poller()
            old.stop()
            stopped = anyio.current_time()
            world.sandbox.pay(invoice.total)  # during the hand-over
            await anyio.sleep(FOLLOW_INTERVAL + EPS)
            assert len(team.pollers()) == 1, "nobody took the released lease"
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    assert not old.rec.is_polling
    after = [t for t in fetch_times(world) if t > stopped]
    assert after, "nobody fetched after the stop"
    assert after[0] - stopped <= INTERVAL + EPS, "the next holder waited too long"
    assert_window_kept(world)
    for worker in [w for w in team.workers if w is not old]:
        assert worker.paid_ids() == [invoice.invoice_id]
    assert {len(p) for t, p in team.samples if t > stopped + FOLLOW_INTERVAL + EPS} == {1}


async def test_a_crashed_poller_is_replaced_within_the_lease_and_a_window(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            first = await team.recs[1].create_invoice(10_000)
            second = await team.recs[2].create_invoice(20_000)
            await anyio.sleep(INTERVAL + 3)
            old = team.poller()
            world.sandbox.pay(first.total)  # maybe seen by the crashed one, maybe not
            old.crash()
            crashed = anyio.current_time()
            await anyio.sleep(5)
            world.sandbox.pay(second.total)  # while nobody polls
            assert team.pollers() == [], "the crashed poller's lease was taken at once"
            await anyio.sleep(LEASE_TTL + INTERVAL + 2)
            assert len(team.pollers()) == 1
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    survivors = [w for w in team.workers if w is not old]
    # The lease lapses lease_ttl after its last renewal at most; a follower takes
    # it within about a second (samples are a quarter of a second apart).
    taken = min(t for t, pollers in team.samples if t > crashed and pollers)
    assert taken - crashed <= LEASE_TTL + FOLLOW_INTERVAL + 0.25 + EPS
    after = [t for t in fetch_times(world) if t > crashed]
    assert after
    assert after[0] - crashed <= LEASE_TTL + INTERVAL + FOLLOW_INTERVAL + EPS
    assert_window_kept(world)
    for worker in survivors:
        assert sorted(worker.paid_ids()) == sorted([first.invoice_id, second.invoice_id])
        ids = worker.ids()
        assert len(ids) == len(set(ids))


async def test_a_hand_over_during_a_long_backoff_keeps_one_poller(
    world: World, new_store: Callable[[], Store]
) -> None:
    # The next holder waits out the backoff the last fetch set (it travels with the
    # lease); it must keep renewing the lease meanwhile, or a third worker takes it.
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            invoice = await team.recs[1].create_invoice(10_000)
            await anyio.sleep(INTERVAL / 2)
            world.sandbox.fail_next(
                "rate_limit", endpoint="check_payment", times=1, retry_after=3 * LEASE_TTL
            )
            await anyio.sleep(INTERVAL)  # the 429 is fetched
            old = team.poller()
            old.stop()
            stopped = anyio.current_time()
            world.sandbox.pay(invoice.total)
            await anyio.sleep(3 * LEASE_TTL + 2 * INTERVAL)
            tg.cancel_scope.cancel()
    statuses = [status for _, status in world.transport.feed]
    assert 429 in statuses
    late = [p for t, p in team.samples if t > stopped + FOLLOW_INTERVAL + EPS]
    assert {len(p) for p in late} == {1}, "no poller, or two, during the backoff"
    assert len({tuple(p) for p in late}) == 1, "the lease lapsed during the backoff"
    gaps = world.transport.gaps()
    assert min(gaps) >= INTERVAL - 1e-6
    assert max(gaps) >= 3 * LEASE_TTL - 1e-6  # the Retry-After was honoured
    for worker in [w for w in team.workers if w is not old]:
        assert worker.paid_ids() == [invoice.invoice_id]


# -- fencing ------------------------------------------------------------------------


class PausedFeed:
    """A worker's view of the feed whose next fetch hangs until ``release()``, then
    answers with a row only this worker ever sees (so its events are told apart)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.merchant = world.feed.merchant
        self.paused = False
        self.hanging = anyio.Event()
        self.resume = anyio.Event()
        self.secret = Mutation(
            date=world.clock().astimezone(JAKARTA),
            amount=66_666,
            type=MutationType.CREDIT,
            qris="static",
            brand_name="GOPAY",
            issuer_reff="only-the-paused-worker-sees-this",
            buyer_reff="",
            balance=None,
        )

    async def fetch(self, *, max_retries: int | None = None) -> MutationBatch:
        if not self.paused:
            return await self.world.feed.fetch(max_retries=max_retries)
        self.hanging.set()
        await self.resume.wait()
        batch = await self.world.feed.fetch(max_retries=max_retries)
        return MutationBatch(rows=(self.secret, *batch.rows), rejected=batch.rejected)


async def test_a_poller_paused_past_its_lease_never_commits_or_publishes(
    world: World, new_store: Callable[[], Store]
) -> None:
    feed = PausedFeed(world)
    paused = Worker(
        Reconciler(
            feed,  # type: ignore[arg-type]
            gateway=world.gateway,
            clock=world.clock,
            store=new_store(),
            lease_ttl=LEASE_TTL,
            worker_id="paused",
        )
    )
    team = Team(world, new_store, 2)
    team.workers.insert(0, paused)  # started first: it polls
    store = new_store()
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            assert paused.rec.is_polling
            invoice = await team.recs[1].create_invoice(10_000)
            feed.paused = True
            await feed.hanging.wait()
            world.sandbox.pay(invoice.total)
            # Paused past its lease: another worker takes over and reports the payment.
            await anyio.sleep(LEASE_TTL + INTERVAL + 2)
            (taker,) = [w for w in team.workers if w.rec.is_polling]
            assert taker is not paused
            assert taker.paid_ids() == [invoice.invoice_id]
            # Its lease is gone, though it has not noticed: it does not say it polls.
            assert not paused.rec.is_polling
            feed.resume.set()
            await anyio.sleep(FOLLOW_INTERVAL)
            assert not paused.rec.is_polling
            await anyio.sleep(2 * INTERVAL)
            assert team.pollers() == [taker.rec.worker_id]
            tg.cancel_scope.cancel()
    assert max(len(pollers) for _, pollers in team.samples) == 1, "two said they poll"
    secret = f"unmatched:{feed.secret.key}"
    stored = [s.id for s in await store.events_after(world.feed.merchant, 0, 100)]
    assert secret not in stored
    for worker in team.workers:
        assert secret not in worker.ids()
        assert worker.paid_ids() == [invoice.invoice_id]


class HeldCommits:
    """A worker's handle on the store whose commits wait while ``hold`` is set,
    and which notes how each held one ended."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.hold = False
        self.holding = anyio.Event()
        self.release = anyio.Event()
        self.outcomes: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        if not (self.hold and changes.fence is not None):
            return await self._inner.commit(merchant, changes)
        self.holding.set()
        await self.release.wait()
        try:
            stored = await self._inner.commit(merchant, changes)
        except LeaseLostError:
            self.outcomes.append("refused")
            raise
        self.outcomes.append("committed")
        return stored


async def test_a_poller_whose_commit_is_held_past_its_lease_is_refused(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 3)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            old = team.poller()
            assert old.rec._keeper is not None
            held = HeldCommits(old.rec._keeper.store)
            old.rec._keeper.store = held  # type: ignore[assignment]
            invoice = await team.others(old)[0].rec.create_invoice(10_000)
            world.sandbox.pay(invoice.total)
            held.hold = True
            await held.holding.wait()  # its poll found the payment; the commit waits
            await anyio.sleep(LEASE_TTL + INTERVAL + 2)
            new = [w for w in team.others(old) if w.rec.is_polling]
            assert len(new) == 1
            held.release.set()
            await anyio.sleep(FOLLOW_INTERVAL)
            assert not old.rec.is_polling
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    assert held.outcomes == ["refused"]
    for worker in team.workers:
        assert worker.paid_ids() == [invoice.invoice_id]
        assert len(worker.ids()) == len(set(worker.ids()))


# -- totals across workers ------------------------------------------------------------


@pytest.mark.parametrize("via", ["static_qris", "gateway"])
async def test_workers_creating_at_once_never_share_a_total(
    world: World, new_store: Callable[[], Store], via: str
) -> None:
    kw: dict[str, Any] = (
        {"gateway": False, "static_qris": _static_qris()} if via == "static_qris" else {}
    )
    team = Team(world, new_store, 2, **kw)
    made: dict[str, list[Any]] = {"w0": [], "w1": []}
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            a, b = team.recs
            if via == "gateway":
                # A paid invoice keeps its total reserved; the gateway, which only
                # keeps pending totals apart, hands it out again at once.
                first = await a.create_invoice(10_000)
                world.sandbox.pay(first.total)
                await a.wait_for_payment(first.invoice_id)
                await b.wait_for_payment(first.invoice_id)
                made["w0"].append(first)

            async def create(rec: Reconciler) -> None:
                for _ in range(4):
                    made[rec.worker_id].append(await rec.create_invoice(10_000))

            async with anyio.create_task_group() as creators:
                creators.start_soon(create, a)
                creators.start_soon(create, b)
            opened = made["w0"] + made["w1"]
            target = made["w1"][-1]
            world.sandbox.pay(target.total)
            for rec in team.recs:
                paid = await rec.wait_for_payment(target.invoice_id)
                assert paid.invoice.invoice_id == target.invoice_id
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    totals = [invoice.total for invoice in opened]
    assert len(totals) == len(set(totals)) == len(opened), "one total given twice"
    for worker in team.workers:
        paid = worker.paid_ids()
        assert target.invoice_id in paid
        assert len(paid) == len(set(paid))
        assert set(paid) <= {target.invoice_id, made["w0"][0].invoice_id}


async def test_flush_raises_when_another_worker_holds_a_tracked_total(
    world: World, new_store: Callable[[], Store]
) -> None:
    team = Team(world, new_store, 2)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            a, b = team.recs
            mine = _invoice("mine", 10_500)
            theirs = _invoice("theirs", 10_500)
            a.track(mine)
            await a.flush()
            # b has not caught up yet: it takes the total locally, and the store says no.
            b.track(theirs)
            with pytest.raises(TotalConflictError) as caught:
                await b.flush()
            assert caught.value.total == 10_500
            assert caught.value.invoice_id == "mine"
            assert b.engine.state_of("theirs") is None
            await b.flush()  # raised once
            world.sandbox.pay(10_500)
            for rec in team.recs:
                paid = await rec.wait_for_payment("mine")
                assert paid.invoice.invoice_id == "mine"
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
    state = await team.recs[0].store.load(world.feed.merchant)  # type: ignore[union-attr]
    assert state is not None
    assert not any('"theirs"' in text for text in state.records)
    for worker in team.workers:
        assert worker.paid_ids() == ["mine"]


@pytest.mark.parametrize("via", ["static_qris", "gateway"])
async def test_a_tracked_invoice_s_conflict_does_not_cost_a_created_invoice(
    world: World, new_store: Callable[[], Store], via: str
) -> None:
    # The conflict belongs to the track()ed invoice: create_invoice keeps (and
    # returns) its own invoice, and the conflict is left for flush() to raise.
    kw: dict[str, Any] = (
        {"gateway": False, "static_qris": _static_qris()} if via == "static_qris" else {}
    )
    team = Team(world, new_store, 2, **kw)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            a, b = team.recs
            a.track(_invoice("mine", 50_500))
            await a.flush()
            b.track(_invoice("theirs", 50_500))
            created = await b.create_invoice(10_000)
            assert b.engine.state_of(created.invoice_id) is not None
            with pytest.raises(TotalConflictError) as caught:
                await b.flush()
            assert caught.value.invoice_id == "mine"
            world.sandbox.pay(created.total)
            for rec in team.recs:
                paid = await rec.wait_for_payment(created.invoice_id)
                assert paid.invoice.invoice_id == created.invoice_id
            tg.cancel_scope.cancel()
    if via == "gateway":
        assert world.sandbox.invoice_ids() == [created.invoice_id]
        assert world.sandbox.invoice(created.invoice_id)["status"] == "paid"


class HeldClaims:
    """A worker's handle on the store whose first claim of a total waits until
    ``release`` is set."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.holding = anyio.Event()
        self.release = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim_invoices(
        self, merchant: str, claims: list[tuple[str, int, str, str, int]], *, now: Any
    ) -> dict[str, str]:
        if not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        return await self._inner.claim_invoices(merchant, claims, now=now)


async def test_a_total_another_worker_took_meanwhile_is_replaced_then_cancelled(
    world: World, new_store: Callable[[], Store]
) -> None:
    # b got a total from the gateway and tracked it; before b's claim reaches the
    # store, a takes that total (a tracked invoice the gateway does not know). As
    # for a total taken in one worker: a replacement first, then the taken one is
    # cancelled (so the gateway cannot hand it back), at most three creations.
    team = Team(world, new_store, 2)
    with anyio.fail_after(600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            a, b = team.recs
            assert b._keeper is not None
            held = HeldClaims(b._keeper.store)
            b._keeper.store = held  # type: ignore[assignment]

            async def take_it_meanwhile() -> None:
                await held.holding.wait()
                a.track(_invoice("mine", 10_001))
                await a.flush()
                held.release.set()

            tg.start_soon(take_it_meanwhile)
            created = await b.create_invoice(10_000)
            assert created.total != 10_001
            await anyio.sleep(1)
            tg.cancel_scope.cancel()
    statuses = {
        world.sandbox.invoice(i)["total"]: world.sandbox.invoice(i)["status"]
        for i in world.sandbox.invoice_ids()
    }
    assert statuses == {10_001: "expired", created.total: "pending"}
    assert world.sandbox.stats.requests["create_invoice"] == 2


async def test_a_cancel_committed_during_the_poll_that_saw_the_payment_stands(
    world: World, new_store: Callable[[], Store]
) -> None:
    # The poller fetched a payment of an invoice that another worker cancelled
    # while the fetch was in flight: its commit is refused, the rows are judged
    # again against the cancelled invoice, and no worker ever reports it paid.
    team = Team(world, new_store, 2, gateway=False, static_qris=_static_qris())
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            poller = team.poller()
            (other,) = team.others(poller)
            invoice = await other.rec.create_invoice(10_000)
            await anyio.sleep(INTERVAL + 2)  # past a poll
            row = world.sandbox.pay(invoice.total)
            world.sandbox.faults.latency = 5.0
            world.sandbox.faults.endpoints = frozenset({"check_payment"})
            fetched = len(world.transport.feed)
            await anyio.sleep(fetch_times(world)[-1] + INTERVAL + 1 - anyio.current_time())
            assert world.transport.feed[fetched][1] == 0  # in flight, its answer made
            world.sandbox.faults.latency = 0.0
            events = await other.rec.cancel_invoice(invoice.invoice_id)
            assert [type(e) for e in events] == [InvoiceCancelled]
            cancelled = anyio.current_time()
            await anyio.sleep(3 * INTERVAL)
            for worker in team.workers:
                with pytest.raises(InvoiceCancelledError):
                    await worker.rec.wait_for_payment(invoice.invoice_id, timeout=1)
            tg.cancel_scope.cancel()
    for worker in team.workers:
        assert worker.paid_ids() == []
        assert worker.ids()[0] == f"cancelled:{invoice.invoice_id}"
        verdicts = [(t, e) for t, e in worker.events if getattr(e, "mutation", None) == row]
        assert [type(e) for _, e in verdicts] == [LatePayment]
        # Judged again at the next poll: the late grace keeps the loop polling.
        assert verdicts[0][0] - cancelled <= 2 * INTERVAL + FOLLOW_INTERVAL
    assert team.workers[0].ids() == team.workers[1].ids()


async def test_a_new_holder_keeps_polling_through_a_cancel_s_late_grace(
    world: World, new_store: Callable[[], Store]
) -> None:
    # Without idle polling, only the late grace of the cancelled invoice keeps
    # the feed polled. The cancel was committed by a worker that does not poll,
    # just before the poller stopped: the next holder must still know of it.
    policy = PollPolicy(idle_interval=None)
    kw: dict[str, Any] = {"gateway": False, "static_qris": _static_qris(), "policy": policy}
    team = Team(world, new_store, 2, **kw)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            old = team.poller()
            (new,) = team.others(old)
            invoice = await new.rec.create_invoice(10_000)
            await anyio.sleep(INTERVAL + 2)
            await new.rec.cancel_invoice(invoice.invoice_id)
            old.stop()
            await anyio.sleep(INTERVAL)
            world.sandbox.pay(invoice.total)  # the customer pays anyway, late
            await anyio.sleep(3 * INTERVAL)
            assert new.rec.is_polling
            tg.cancel_scope.cancel()
    late = [e for _, e in new.events if isinstance(e, LatePayment)]
    assert [e.invoice.invoice_id for e in late] == [invoice.invoice_id]


async def test_an_invoice_made_elsewhere_is_awaited_at_once_and_expires_in_all(
    world: World, new_store: Callable[[], Store]
) -> None:
    # wait_for_payment in a worker that has not caught up reads the store first,
    # rather than answering KeyError; the expiry is reported once in every worker.
    ttl = timedelta(minutes=1)
    kw: dict[str, Any] = {"gateway": False, "static_qris": _static_qris(), "invoice_ttl": ttl}
    team = Team(world, new_store, 3, **kw)
    outcomes: list[str] = []
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            invoice = await team.recs[2].create_invoice(10_000)

            async def wait(rec: Reconciler) -> None:
                with pytest.raises(InvoiceExpiredError):
                    await rec.wait_for_payment(invoice.invoice_id)
                outcomes.append(rec.worker_id)

            async with anyio.create_task_group() as waiters:
                for rec in team.recs:
                    waiters.start_soon(wait, rec)
            tg.cancel_scope.cancel()
    assert sorted(outcomes) == ["w0", "w1", "w2"]
    skew = team.recs[0].engine.skew
    for worker in team.workers:
        expired = [(t, e) for t, e in worker.events if isinstance(e, InvoiceExpired)]
        assert [e.invoice.invoice_id for _, e in expired] == [invoice.invoice_id]
        assert worker.ids() == [f"expired:{invoice.invoice_id}"]
    assert world.clock() > invoice.expired_at + skew
