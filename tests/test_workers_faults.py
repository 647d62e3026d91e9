"""Several workers under faults an adversarial review found: a failed or
refused commit, a lost answer, a slow fetch, a track() during a reload. Each
case failed before its fix (docs/design.md, "Several workers")."""

# ruff: noqa: F811 - the fixtures of test_workers are imported by name
# ruff: noqa: ASYNC110 - conditions with no event to await

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from qrispay import Store
from qrispay.errors import StoreError
from qrispay.store import Changes, StoredEvent

from .test_reconciler import INTERVAL, World, _static_qris
from .test_workers import (  # noqa: F401 - fixtures
    EPS,
    FOLLOW_INTERVAL,
    Team,
    _threads_hold_time,
    anyio_backend,
    assert_window_kept,
    fetch_times,
    new_store,
    store_kind,
    world,
)

pytestmark = pytest.mark.anyio


class FlakyCommits:
    """A worker's handle on the store whose commits raise StoreError while
    ``fail`` says so (a lost connection, 'database is locked')."""

    def __init__(self, inner: Store, fail: Callable[[Changes], bool]) -> None:
        self._inner = inner
        self.fail = fail
        self.failed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        if self.fail(changes):
            self.failed += 1
            raise StoreError("connection lost")
        return await self._inner.commit(merchant, changes)


async def test_a_poller_whose_last_commit_failed_does_not_hand_over_inside_the_window(
    world: World, new_store: Callable[[], Store]
) -> None:
    # The poller fetches, its commit fails (store blip), then it stops cleanly
    # (deploy). The lease is released at once; the next holder reads the
    # stored last_fetch (the poll before) and fetches at once: two fetches
    # within one cache window.
    team = Team(world, new_store, 2)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            await team.recs[0].create_invoice(10_000)
            await anyio.sleep(2 * INTERVAL + 3)
            old = team.poller()
            assert old.rec._keeper is not None
            flaky = FlakyCommits(old.rec._keeper.store, lambda c: c.fence is not None)
            old.rec._keeper.store = flaky  # type: ignore[assignment]
            fetched = len(world.transport.feed)
            while len(world.transport.feed) == fetched or not flaky.failed:
                await anyio.sleep(0.1)
            old.stop()
            await anyio.sleep(3 * INTERVAL)
            tg.cancel_scope.cancel()
    assert_window_kept(world)


async def test_a_follower_whose_close_lost_the_race_reads_the_store_and_goes_on(
    world: World, new_store: Callable[[], Store]
) -> None:
    # A follower's cancel commit fails once (store blip); the customer's payment
    # is committed by the poller meanwhile. The follower's pending cancel is
    # retried at every round, refused with InvoiceStateConflictError every time,
    # and _try_lease never gets to catch_up: the follower never again publishes
    # an event, so an invoice paid later is never reported there.
    team = Team(world, new_store, 2, gateway=False, static_qris=_static_qris())
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            poller = team.poller()
            (follower,) = team.others(poller)
            invoice = await poller.rec.create_invoice(10_000)
            await anyio.sleep(FOLLOW_INTERVAL + EPS)
            assert follower.rec._keeper is not None
            real = follower.rec._keeper.store
            flaky = FlakyCommits(real, lambda c: bool(c.events))
            follower.rec._keeper.store = flaky  # type: ignore[assignment]
            world.sandbox.pay(invoice.total)
            with pytest.raises(StoreError):
                await follower.rec.cancel_invoice(invoice.invoice_id)
            # The follower's connection stays bad until the poller has committed the payment.
            await poller.rec.wait_for_payment(invoice.invoice_id, timeout=3 * INTERVAL)
            follower.rec._keeper.store = real  # the store is back
            await anyio.sleep(3 * FOLLOW_INTERVAL)
            # Later business, on the same follower:
            second = await poller.rec.create_invoice(20_000)
            world.sandbox.pay(second.total)
            await poller.rec.wait_for_payment(second.invoice_id, timeout=3 * INTERVAL)
            await anyio.sleep(3 * FOLLOW_INTERVAL)
            tg.cancel_scope.cancel()
    assert poller.paid_ids() == [invoice.invoice_id, second.invoice_id]
    assert second.invoice_id in follower.paid_ids(), (
        f"the follower never reported the later payment; it saw {follower.ids()}"
    )


class LostAnswers:
    """A handle whose next commit with events is applied, and then the answer is
    lost (the connection drops after COMMIT)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        stored = await self._inner.commit(merchant, changes)
        if self.armed and changes.events:
            self.armed = False
            raise StoreError("connection lost after COMMIT")
        return stored


async def test_a_follower_whose_cancel_answer_was_lost_goes_on(
    world: World, new_store: Callable[[], Store]
) -> None:
    # No race at all: the follower's cancel IS committed, only its answer is
    # lost. The follower keeps the close pending, retries it every second with
    # if_open, which the store refuses (the invoice is cancelled, by itself),
    # for ever: no more catch-up, events, lease take-over or invoices there.
    team = Team(world, new_store, 2, gateway=False, static_qris=_static_qris())
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            poller = team.poller()
            (follower,) = team.others(poller)
            first = await follower.rec.create_invoice(10_000)
            assert follower.rec._keeper is not None
            await anyio.sleep(FOLLOW_INTERVAL / 2)  # between two of its rounds
            lost = LostAnswers(follower.rec._keeper.store)
            follower.rec._keeper.store = lost  # type: ignore[assignment]
            try:
                got = await follower.rec.cancel_invoice(first.invoice_id)
            except StoreError:
                pass
            else:
                raise AssertionError(f"cancel returned {got}, armed={lost.armed}")
            await anyio.sleep(3 * FOLLOW_INTERVAL)
            second = await poller.rec.create_invoice(20_000)
            world.sandbox.pay(second.total)
            await poller.rec.wait_for_payment(second.invoice_id, timeout=3 * INTERVAL)
            await anyio.sleep(3 * FOLLOW_INTERVAL)
            made_in_follower: Exception | None = None
            try:
                await follower.rec.create_invoice(30_000)
            except Exception as error:
                made_in_follower = error
            tg.cancel_scope.cancel()
    assert second.invoice_id in poller.paid_ids()
    assert made_in_follower is None, f"follower cannot create invoices: {made_in_follower!r}"
    assert second.invoice_id in follower.paid_ids(), (
        f"the follower never reported the payment; it saw {follower.ids()}"
    )


class SlowThenHungFeed:
    """A worker's feed: fetches as usual; ``slow`` fetches answer 10 s late; after
    ``hang_after`` slow ones, the next fetch reaches the server and never answers
    (the worker is paused or partitioned in flight)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.merchant = world.feed.merchant
        self.slow = 0
        self.hang = False

    async def fetch(self, *, max_retries: int | None = None) -> Any:
        batch = await self.world.feed.fetch(max_retries=max_retries)
        if self.hang:
            await anyio.sleep_forever()
        if self.slow:
            self.slow -= 1
            await anyio.sleep(18.5)
            if not self.slow:
                self.hang = True
        return batch


async def test_a_slow_fetch_with_a_short_lease_keeps_the_window(
    world: World, new_store: Callable[[], Store]
) -> None:
    # lease_ttl=40 (> interval 30.5, accepted). An 18.5 s fetch makes the commit
    # renew the lease to fetch+58.5; the idle renewal (every ttl/3 = 13.3 s) does
    # not come before the next fetch, at fetch+30.5, which finds 28 s left
    # (> ttl/2: "fresh", not renewed), and hangs. The lease lapses 28 s later, the
    # follower takes it and fetches at once: ~29 s after the hung worker's fetch,
    # inside the 30.5 s window.
    from qrispay import Reconciler

    from .test_workers import LEASE_TTL, Worker

    feed = SlowThenHungFeed(world)
    slow = Worker(
        Reconciler(
            feed,  # type: ignore[arg-type]
            gateway=world.gateway,
            clock=world.clock,
            store=new_store(),
            lease_ttl=40.0,
            worker_id="slow",
        )
    )
    team = Team(world, new_store, 1, lease_ttl=40.0)
    team.workers.insert(0, slow)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            assert slow.rec.is_polling
            await slow.rec.create_invoice(10_000)  # work: a poll every window
            await anyio.sleep(INTERVAL + 1)
            feed.slow = 1
            await anyio.sleep(LEASE_TTL + 3 * INTERVAL)
            tg.cancel_scope.cancel()
    assert_window_kept(world)


class SlowLease:
    """A worker's handle on the store whose lease round trips take ``delay``
    seconds (a database across a network). ``during`` runs while the answer of
    a follower's successful claim travels back (the app calls track() then)."""

    def __init__(self, inner: Store, delay: float) -> None:
        self._inner = inner
        self.delay = delay
        self.during: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim_lease(self, merchant: str, holder: str, epoch: Any, **kw: Any) -> Any:
        lease = await self._inner.claim_lease(merchant, holder, epoch, **kw)
        if lease is not None and epoch is None and self.during is not None:
            self.during()
            self.during = None
        await anyio.sleep(self.delay)
        return lease


async def test_a_track_during_a_take_over_is_kept_and_paid(
    world: World, new_store: Callable[[], Store]
) -> None:
    # track() is synchronous and committed "no later than the next poll". A
    # follower's round commits, then claims the lease, then _take_over() reloads
    # the engine from the store, dropping every change not stored. An invoice
    # track()ed while the claim is in flight is silently forgotten: its payment
    # becomes an UnmatchedCredit and wait_for_payment says KeyError.
    from .test_reconciler import _invoice

    team = Team(world, new_store, 2)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            old = team.poller()
            (heir,) = team.others(old)
            assert heir.rec._keeper is not None
            slow = SlowLease(heir.rec._keeper.store, 0.2)
            heir.rec._keeper.store = slow  # type: ignore[assignment]
            await anyio.sleep(INTERVAL + 0.5)
            invoice = _invoice("tracked-in-the-heir", 12_345)
            slow.during = lambda: heir.rec.track(invoice)
            old.stop()  # a deploy: the lease is released
            while slow.during is not None:
                await anyio.sleep(0.01)
            world.sandbox.pay(invoice.total)
            await anyio.sleep(3 * INTERVAL)
            state = heir.rec.engine.state_of(invoice.invoice_id)
            tg.cancel_scope.cancel()
    assert state is not None, f"the tracked invoice was dropped; the heir reported {heir.ids()}"
    assert heir.paid_ids() == [invoice.invoice_id], heir.ids()


async def test_a_track_during_a_refused_poll_commit_is_kept_and_paid(
    world: World, new_store: Callable[[], Store]
) -> None:
    # Same root cause, in the poller: its poll's commit is refused with
    # InvoiceStateConflictError (a follower cancelled an invoice the poll paid),
    # _commit_poll reloads, and an invoice track()ed while that commit was in
    # flight is dropped. Its payment later is an UnmatchedCredit.
    from .test_reconciler import _invoice
    from .test_workers import HeldCommits

    team = Team(world, new_store, 2, gateway=False, static_qris=_static_qris())
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            await team.start(tg)
            poller = team.poller()
            (follower,) = team.others(poller)
            x = await follower.rec.create_invoice(10_000)
            await anyio.sleep(FOLLOW_INTERVAL + EPS)
            assert poller.rec._keeper is not None
            held = HeldCommits(poller.rec._keeper.store)
            poller.rec._keeper.store = held  # type: ignore[assignment]
            world.sandbox.pay(x.total)
            held.hold = True
            await held.holding.wait()  # the poll that pays x is committing
            held.hold = False
            await follower.rec.cancel_invoice(x.invoice_id)  # commits first
            y = _invoice("tracked-in-the-poller", 12_345)
            poller.rec.track(y)  # meanwhile, in the poller
            held.release.set()
            await anyio.sleep(FOLLOW_INTERVAL)
            world.sandbox.pay(y.total)
            await anyio.sleep(3 * INTERVAL)
            state = poller.rec.engine.state_of(y.invoice_id)
            tg.cancel_scope.cancel()
    assert state is not None, f"y was dropped; the poller reported {poller.ids()}"
    assert y.invoice_id in poller.paid_ids(), poller.ids()
