"""A Reconciler on a store, stopped and started again, in virtual time on all
stores: the downtime's payments each get exactly one verdict, reserved
totals survive, and no event id is published twice (docs/design.md, "Stores")."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from qrispay import (
    DuplicatePayment,
    Event,
    InvoiceExpired,
    InvoicePaid,
    LatePayment,
    MemoryStore,
    Reconciler,
    UnmatchedCredit,
)
from qrispay.store import Changes, PostgresStore, SQLiteStore, Store, StoredEvent

from .test_reconciler import INTERVAL, World, _static_qris, virtual_backend
from .virtual_time import hold_time_during_threads

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest, store_kind: str) -> tuple[str, dict[str, Any]]:
    # SQLite runs in worker threads: the clock stands still while one runs.
    return virtual_backend(request.param)


@pytest.fixture(autouse=True)
def _threads_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hold_time_during_threads(monkeypatch)


@pytest.fixture
async def new_store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[[], Store]]:
    """Makes the store of this run; each call opens the same data anew, as a
    restarted process would (a MemoryStore object stands for its data)."""
    memory = MemoryStore()
    made: list[Store] = []
    pg = request.getfixturevalue("pg_schema") if store_kind == "postgres" else None

    def make() -> Store:
        store: Store
        if pg is not None:
            store = PostgresStore(pg[0], schema=pg[1])
        elif store_kind == "memory":
            store = memory
        else:
            store = SQLiteStore(tmp_path / "qrispay.db")
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(seed=5)
    async with w.feed, w.gateway:
        yield w


class Consumer:
    """A durable consumer: handles each event, then remembers its id."""

    def __init__(self) -> None:
        self.handled: list[Event] = []
        self.last_id: str | None = None

    def subscribe(self, rec: Reconciler) -> Any:
        """Made before the loop starts, so that the first poll's events reach it."""
        return rec.events() if self.last_id is None else rec.events(after=self.last_id)

    async def drain(self, subscription: Any) -> None:
        async with subscription as events:
            async for event in events:
                self.handled.append(event)
                self.last_id = event.id

    def ids(self) -> list[str]:
        return [event.id for event in self.handled]

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.handled if isinstance(event, kind)]


async def _run_for(world: World, rec: Reconciler, consumer: Consumer, seconds: float) -> None:
    subscription = consumer.subscribe(rec)
    async with anyio.create_task_group() as tg, rec:
        tg.start_soon(consumer.drain, subscription)
        await anyio.sleep(seconds)
        await anyio.sleep(1)  # let the consumer take what was just published
        tg.cancel_scope.cancel()


async def test_the_downtime_s_payments_each_get_one_verdict(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    consumer = Consumer()
    with anyio.fail_after(4 * 3600):
        rec = world.reconciler(store=store)
        subscription = consumer.subscribe(rec)
        async with anyio.create_task_group() as tg, rec:
            tg.start_soon(consumer.drain, subscription)
            on_time = await rec.create_invoice(10_000)
            late = await rec.create_invoice(20_000)
            twice = await rec.create_invoice(30_000)
            # Paid within the skew before the stop: seen by the last poll or not.
            soon = await rec.create_invoice(40_000)
            await anyio.sleep(3 * INTERVAL)
            world.sandbox.pay(soon.total)
            await anyio.sleep(5)
            await anyio.sleep(1)
            tg.cancel_scope.cancel()

        # Down for 20 minutes: customers pay anyway.
        await anyio.sleep(60)
        world.sandbox.pay(on_time.total)
        world.sandbox.pay(twice.total)
        await anyio.sleep(60)
        world.sandbox.pay(twice.total)
        world.sandbox.pay(12_345)  # a wrong amount: nobody's invoice
        await anyio.sleep(16 * 60)  # past `late`'s window (15 min + 2 min skew)
        world.sandbox.pay(late.total)
        await anyio.sleep(60)

        rec2 = world.reconciler(store=new_store())
        await _run_for(world, rec2, consumer, 20 * 60)

    ids = consumer.ids()
    assert len(ids) == len(set(ids)), "an event id was published twice"
    paid = {event.invoice.invoice_id for event in consumer.of(InvoicePaid)}
    assert paid == {on_time.invoice_id, twice.invoice_id, soon.invoice_id}
    assert [e.invoice.invoice_id for e in consumer.of(DuplicatePayment)] == [twice.invoice_id]
    assert [e.invoice.invoice_id for e in consumer.of(LatePayment)] == [late.invoice_id]
    assert [e.invoice.invoice_id for e in consumer.of(InvoiceExpired)] == [late.invoice_id]
    assert [e.mutation.amount for e in consumer.of(UnmatchedCredit)] == [12_345]
    # Each credit row of the feed got exactly one verdict.
    credits = [row for row in world.sandbox.rows() if row["type"] == "CR"]
    verdict_rows = [
        event.mutation.issuer_reff
        for event in consumer.handled
        if getattr(event, "mutation", None) is not None
    ]
    assert sorted(verdict_rows) == sorted(row["issuer_reff"] for row in credits)


async def test_a_reserved_total_survives_the_restart(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    consumer = Consumer()
    with anyio.fail_after(4 * 3600):
        rec = world.reconciler(store=store)
        subscription = consumer.subscribe(rec)
        async with anyio.create_task_group() as tg, rec:
            tg.start_soon(consumer.drain, subscription)
            first = await rec.create_invoice(10_000)
            # Let it expire (15 min + skew + a window), then stop.
            await anyio.sleep(18 * 60 + 2 * INTERVAL)
            tg.cancel_scope.cancel()
        assert [e.invoice.invoice_id for e in consumer.of(InvoiceExpired)] == [first.invoice_id]

        rec2 = world.reconciler(store=new_store())
        subscription = consumer.subscribe(rec2)
        async with anyio.create_task_group() as tg, rec2:
            tg.start_soon(consumer.drain, subscription)
            # The gateway hands out the smallest free code, first's total again:
            # it is still reserved here, so a replacement is made.
            second = await rec2.create_invoice(10_000)
            assert second.total != first.total
            world.sandbox.pay(first.total)  # first's customer, late
            await anyio.sleep(2 * INTERVAL + 1)
            tg.cancel_scope.cancel()
    assert [e.invoice.invoice_id for e in consumer.of(LatePayment)] == [first.invoice_id]
    assert not consumer.of(InvoicePaid)


async def test_static_qris_invoices_survive_and_a_consumer_resumes(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    consumer = Consumer()
    with anyio.fail_after(3600):
        rec = world.reconciler(store=store, gateway=False, static_qris=_static_qris())
        subscription = consumer.subscribe(rec)
        async with anyio.create_task_group() as tg, rec:
            tg.start_soon(consumer.drain, subscription)
            first = await rec.create_invoice(10_000)
            second = await rec.create_invoice(10_000)
            world.sandbox.pay(first.total)
            await anyio.sleep(2 * INTERVAL)
            tg.cancel_scope.cancel()
        assert [e.invoice.invoice_id for e in consumer.of(InvoicePaid)] == [first.invoice_id]
        resume_from = consumer.last_id
        assert resume_from == f"paid:{first.invoice_id}"

        world.sandbox.pay(second.total)  # while down
        await anyio.sleep(60)
        rec2 = world.reconciler(store=new_store(), gateway=False, static_qris=_static_qris())
        await _run_for(world, rec2, consumer, 2 * INTERVAL)
        invoice = rec2.engine.get(second.invoice_id)
        assert invoice is not None
        assert invoice.qris_payload == second.qris_payload

    paid = [e.invoice.invoice_id for e in consumer.of(InvoicePaid)]
    assert paid == [first.invoice_id, second.invoice_id]


async def test_replay_after_an_id_then_live_without_gap_or_duplicate(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    with anyio.fail_after(3600):
        async with world.reconciler(store=store) as rec:
            invoices = [await rec.create_invoice(10_000 + i * 1000) for i in range(4)]
            for invoice in invoices[:3]:
                world.sandbox.pay(invoice.total)
            await anyio.sleep(2 * INTERVAL)
            stored = await store.events_after(world.feed.merchant, 0, 100)
            assert [s.id for s in stored] == [f"paid:{i.invoice_id}" for i in invoices[:3]]
            got: list[str] = []
            async with rec.events(after=stored[0].id) as events:
                world.sandbox.pay(invoices[3].total)
                async for event in events:
                    got.append(event.id)
                    if len(got) == 3:
                        break
    assert got == [f"paid:{i.invoice_id}" for i in invoices[1:]]


async def test_replay_from_an_unknown_id_raises_key_error(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    with anyio.fail_after(600):
        async with world.reconciler(store=store) as rec:
            with pytest.raises(KeyError):
                async with rec.events(after="paid:nope") as events:
                    await events.__anext__()
            # Without ``async with`` too, the failed subscription leaves no live buffer.
            events = rec.events(after="paid:nope")
            with pytest.raises(KeyError):
                await events.__anext__()
            assert rec._hub._subscribers == []


async def test_create_invoice_returns_once_committed(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    with anyio.fail_after(600):
        async with world.reconciler(store=store) as rec:
            invoice = await rec.create_invoice(10_000)
            state = await store.load(world.feed.merchant)
            assert state is not None
            assert any(invoice.invoice_id in text for text in state.records)


async def test_track_needs_a_started_reconciler_with_a_store(world: World) -> None:
    rec = world.reconciler(store=MemoryStore())
    with pytest.raises(RuntimeError, match="store"):
        rec.engine  # noqa: B018


class FlakyStore(MemoryStore):
    """Refuses the commits it is told to, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = 0

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        if self.refuse:
            self.refuse -= 1
            raise OSError("disk full")
        return await super().commit(merchant, changes)


async def test_a_failed_commit_publishes_nothing_until_a_later_one_succeeds(world: World) -> None:
    store = FlakyStore()
    consumer = Consumer()
    with anyio.fail_after(3600):
        rec = world.reconciler(store=store)
        subscription = consumer.subscribe(rec)
        async with anyio.create_task_group() as tg, rec:
            tg.start_soon(consumer.drain, subscription)
            invoice = await rec.create_invoice(10_000)
            store.refuse = 1
            world.sandbox.pay(invoice.total)
            await anyio.sleep(INTERVAL + 1)  # one poll: its commit fails
            assert not consumer.handled
            assert rec.stats.commit_failures == 1
            await anyio.sleep(INTERVAL + 1)  # the next one commits and publishes
            await anyio.sleep(1)
            tg.cancel_scope.cancel()
    assert [e.id for e in consumer.handled] == [f"paid:{invoice.invoice_id}"]
    stored = await store.events_after(world.feed.merchant, 0, 10)
    assert [s.id for s in stored] == [f"paid:{invoice.invoice_id}"]


async def test_the_cache_window_is_honoured_across_a_restart(
    world: World, new_store: Callable[[], Store]
) -> None:
    store = new_store()
    with anyio.fail_after(3600):
        async with world.reconciler(store=store) as rec:
            await rec.create_invoice(10_000)
            await anyio.sleep(INTERVAL / 3)
        async with world.reconciler(store=new_store()):
            await anyio.sleep(1)
    assert len(world.transport.feed) >= 2
    assert min(world.transport.gaps()) >= INTERVAL - 1e-6


async def test_replay_from_the_start_gives_every_stored_event(
    world: World, new_store: Callable[[], Store]
) -> None:
    # A consumer that never handled an event (it crashed before remembering the
    # first one) asks for everything with after="": nothing committed is missed.
    store = new_store()
    with anyio.fail_after(3600):
        async with world.reconciler(store=store) as rec:
            invoice = await rec.create_invoice(10_000)
            world.sandbox.pay(invoice.total)
            world.sandbox.pay(99_999)
            await anyio.sleep(2 * INTERVAL)
        rec2 = world.reconciler(store=new_store())
        got: list[str] = []
        subscription = rec2.events(after="")
        async with rec2, subscription as events:
            async for event in events:
                got.append(event.id)
                if len(got) == 2:
                    break
    assert got[0] == f"paid:{invoice.invoice_id}"
    assert got[1].startswith("unmatched:")


async def test_two_workers_on_one_store_one_polls_and_both_report(
    world: World, new_store: Callable[[], Store]
) -> None:
    """Two Reconcilers on one store (two processes on the same data): one polls,
    an invoice made by the other is paid and reported in both, once each."""
    one, two = Consumer(), Consumer()
    with anyio.fail_after(3600):
        rec1 = world.reconciler(store=new_store(), worker_id="w1", lease_ttl=90)
        rec2 = world.reconciler(store=new_store(), worker_id="w2", lease_ttl=90)
        sub1, sub2 = one.subscribe(rec1), two.subscribe(rec2)
        async with anyio.create_task_group() as tg, rec1, rec2:
            tg.start_soon(one.drain, sub1)
            tg.start_soon(two.drain, sub2)
            await anyio.sleep(2 * INTERVAL)
            assert [rec1.is_polling, rec2.is_polling].count(True) == 1
            first = await rec2.create_invoice(10_000)
            second = await rec1.create_invoice(10_000)
            assert second.total != first.total
            world.sandbox.pay(first.total)
            await anyio.sleep(3 * INTERVAL)
            await anyio.sleep(1)
            tg.cancel_scope.cancel()
    for consumer in (one, two):
        paid = [event.invoice.invoice_id for event in consumer.of(InvoicePaid)]
        assert paid == [first.invoice_id]
        assert len(consumer.ids()) == len(set(consumer.ids()))
