"""The store contract for several workers: the poll lease, fencing, claiming
totals, compare-and-set closes and reading what others wrote, on every store.

Every store must give the same answers to the same calls (PostgreSQL where a
server is configured: QRISPAY_TEST_POSTGRES).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import anyio
import pytest

from qrispay import InvoiceStateConflictError, LeaseLostError
from qrispay.store import Changes, Store
from qrispay.store._base import HOLDS_FOREVER, micros

from .test_store import make_store

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
TTL = 90.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rec(
    invoice_id: str, total: int, state: str = "open", holds: int = HOLDS_FOREVER
) -> tuple[str, int, str, str, int]:
    return (invoice_id, total, state, json.dumps({"id": invoice_id, "state": state}), holds)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with make_store(request.param, request) as opened:
        yield opened


# -- the lease ----------------------------------------------------------------------


async def test_one_holder_until_the_lease_lapses(store: Store) -> None:
    first = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    assert first is not None
    assert first.holder == "a"
    assert first.expires_at == at(TTL)
    assert await store.claim_lease("m", "b", None, now=at(TTL - 1), ttl=TTL) is None
    # Renewed by its holder at its epoch: the epoch stays.
    renewed = await store.claim_lease("m", "a", first.epoch, now=at(30), ttl=TTL)
    assert renewed is not None
    assert renewed.epoch == first.epoch
    assert await store.claim_lease("m", "b", None, now=at(TTL + 1), ttl=TTL) is None
    # Lapsed: taken, under a new epoch.
    taken = await store.claim_lease("m", "b", None, now=at(30 + TTL + 1), ttl=TTL)
    assert taken is not None
    assert taken.holder == "b"
    assert taken.epoch > first.epoch
    # The former holder's renewal at its old epoch is refused.
    assert await store.claim_lease("m", "a", first.epoch, now=at(30 + TTL + 2), ttl=TTL) is None


async def test_leases_are_per_merchant(store: Store) -> None:
    assert await store.claim_lease("m1", "a", None, now=at(0), ttl=TTL) is not None
    assert await store.claim_lease("m2", "b", None, now=at(0), ttl=TTL) is not None


async def test_leases_lists_every_lease_live_or_lapsed(store: Store) -> None:
    assert await store.leases() == {}
    one = await store.claim_lease("m1", "a", None, now=at(0), ttl=TTL)
    two = await store.claim_lease("m2", "b", None, now=at(10), ttl=TTL)
    assert one is not None
    assert two is not None
    await store.release_lease("m2", "b", two.epoch)
    leases = await store.leases()
    assert set(leases) == {"m1", "m2"}
    assert (leases["m1"].holder, leases["m1"].epoch) == ("a", one.epoch)
    assert leases["m1"].expires_at == at(TTL)
    assert leases["m2"].holder == "b"
    assert leases["m2"].expires_at < at(10), "a released lease lists as lapsed"


async def test_a_released_lease_is_taken_at_once(store: Store) -> None:
    lease = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    assert lease is not None
    await store.release_lease("m", "b", lease.epoch)  # not b's: nothing happens
    assert await store.claim_lease("m", "b", None, now=at(1), ttl=TTL) is None
    await store.release_lease("m", "a", lease.epoch)
    taken = await store.claim_lease("m", "b", None, now=at(1), ttl=TTL)
    assert taken is not None
    assert taken.epoch > lease.epoch


async def test_a_restarted_holder_takes_its_own_lease_under_a_new_epoch(store: Store) -> None:
    # Same worker_id, a new process that does not know the epoch: it is not
    # the old incarnation, whose commits must now be refused.
    old = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    new = await store.claim_lease("m", "a", None, now=at(5), ttl=TTL)
    assert old is not None
    assert new is not None
    assert new.epoch > old.epoch
    with pytest.raises(LeaseLostError):
        await store.commit("m", Changes(meta={"x": 1}, fence=("a", old.epoch)))


async def test_concurrent_claims_give_one_holder(store: Store) -> None:
    won: list[str] = []

    async def claim(holder: str) -> None:
        if await store.claim_lease("m", holder, None, now=at(0), ttl=TTL) is not None:
            won.append(holder)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claim, f"w{i}")
    assert len(won) == 1


# -- fencing ------------------------------------------------------------------------


async def test_a_fenced_commit_after_a_take_over_writes_nothing(store: Store) -> None:
    lease = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    assert lease is not None
    await store.commit("m", Changes(meta={"by": "a"}, fence=("a", lease.epoch)))
    assert await store.claim_lease("m", "b", None, now=at(TTL + 1), ttl=TTL) is not None
    with pytest.raises(LeaseLostError):
        await store.commit(
            "m",
            Changes(
                meta={"by": "a, late"},
                records=[rec("i1", 10_001)],
                seen=[("k", 1)],
                events=[("paid:i1", "invoice.paid", "{}")],
                fence=("a", lease.epoch),
            ),
        )
    state = await store.load("m")
    assert state is not None
    assert state.meta == {"by": "a"}
    assert state.records == []
    assert state.seen == []
    assert await store.events_after("m", 0, 10) == []


async def test_a_poll_commit_renews_the_lease(store: Store) -> None:
    lease = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    assert lease is not None
    until = micros(at(60 + TTL))
    await store.commit("m", Changes(meta={}, fence=("a", lease.epoch), lease_until=until))
    # Past the first expiry, not past the renewed one: still a's.
    assert await store.claim_lease("m", "b", None, now=at(TTL + 10), ttl=TTL) is None
    assert await store.claim_lease("m", "b", None, now=at(60 + TTL + 1), ttl=TTL) is not None


async def test_a_refused_commit_does_not_renew(store: Store) -> None:
    lease = await store.claim_lease("m", "a", None, now=at(0), ttl=TTL)
    assert lease is not None
    await store.commit("m", Changes(meta={}, records=[rec("i1", 10_001, "paid")]))
    with pytest.raises(InvoiceStateConflictError):
        await store.commit(
            "m",
            Changes(
                meta={},
                records=[rec("i1", 10_001, "cancelled")],
                fence=("a", lease.epoch),
                lease_until=micros(at(1_000)),
                if_open=frozenset({"i1"}),
            ),
        )
    assert await store.claim_lease("m", "b", None, now=at(TTL + 1), ttl=TTL) is not None


# -- compare-and-set closes -----------------------------------------------------------


async def test_a_close_over_a_closed_invoice_is_refused(store: Store) -> None:
    await store.commit("m", Changes(meta={}, records=[rec("i1", 10_001), rec("i2", 10_002)]))
    await store.commit("m", Changes(meta=None, records=[rec("i1", 10_001, "paid")]))
    with pytest.raises(InvoiceStateConflictError):
        await store.commit(
            "m",
            Changes(
                meta=None,
                records=[rec("i1", 10_001, "cancelled"), rec("i2", 10_002, "cancelled")],
                events=[("cancelled:i1", "invoice.cancelled", "{}")],
                if_open=frozenset({"i1", "i2"}),
            ),
        )
    state = await store.load("m")
    assert state is not None
    assert [json.loads(text)["state"] for text in state.records] == ["paid", "open"]
    assert await store.events_after("m", 0, 10) == []
    # Over an open one it is written.
    await store.commit(
        "m", Changes(meta=None, records=[rec("i2", 10_002, "cancelled")], if_open=frozenset({"i2"}))
    )
    state = await store.load("m")
    assert state is not None
    assert [json.loads(text)["state"] for text in state.records] == ["paid", "cancelled"]


# -- claiming totals ------------------------------------------------------------------


async def test_a_total_has_one_holder_while_it_holds(store: Store) -> None:
    refused = await store.claim_invoices("m", [rec("a", 10_001)], now=at(0))
    assert refused == {}
    refused = await store.claim_invoices("m", [rec("b", 10_001), rec("c", 10_002)], now=at(1))
    assert refused == {"b": "a"}
    # Claiming an invoice that is stored already names itself.
    assert await store.claim_invoices("m", [rec("a", 10_001)], now=at(2)) == {"a": "a"}
    state = await store.load("m")
    assert state is not None
    assert [json.loads(text)["id"] for text in state.records] == ["a", "c"]


async def test_a_total_is_free_once_its_reservation_ends(store: Store) -> None:
    await store.claim_invoices("m", [rec("a", 10_001)], now=at(0))
    # Closed, reserved until at(100): still held before, free after.
    await store.commit(
        "m", Changes(meta={}, records=[rec("a", 10_001, "expired", micros(at(100)))])
    )
    assert await store.claim_invoices("m", [rec("b", 10_001)], now=at(99)) == {"b": "a"}
    assert await store.claim_invoices("m", [rec("b", 10_001)], now=at(101)) == {}


async def test_totals_are_per_merchant(store: Store) -> None:
    assert await store.claim_invoices("m1", [rec("a", 10_001)], now=at(0)) == {}
    assert await store.claim_invoices("m2", [rec("b", 10_001)], now=at(0)) == {}


async def test_concurrent_claims_of_one_total_give_one_invoice(store: Store) -> None:
    results: list[dict[str, str]] = []

    async def claim(invoice_id: str) -> None:
        results.append(await store.claim_invoices("m", [rec(invoice_id, 10_001)], now=at(0)))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(claim, f"i{i}")
    assert sum(1 for refused in results if not refused) == 1
    state = await store.load("m")
    assert state is not None
    assert len(state.records) == 1


# -- reading what others wrote ----------------------------------------------------------


async def test_records_since_gives_what_was_written_after_a_version(store: Store) -> None:
    records, v0 = await store.records_since("m", 0)
    assert records == []
    await store.claim_invoices("m", [rec("a", 10_001)], now=at(0))
    records, v1 = await store.records_since("m", v0)
    assert [json.loads(text)["id"] for text in records] == ["a"]
    assert v1 > v0
    # Nothing new: nothing, and the same version.
    assert await store.records_since("m", v1) == ([], v1)
    # A commit that writes no record leaves the version alone.
    await store.commit("m", Changes(meta={"x": 1}, seen=[("k", 1)]))
    assert await store.records_since("m", v1) == ([], v1)
    await store.commit("m", Changes(meta=None, records=[rec("a", 10_001, "paid")]))
    records, v2 = await store.records_since("m", v1)
    assert [json.loads(text)["state"] for text in records] == ["paid"]
    assert v2 > v1
    # Version 0 gives them all.
    records, _ = await store.records_since("m", 0)
    assert len(records) == 1


# -- the Keeper over the contract ---------------------------------------------------------


async def test_a_stale_open_copy_never_reopens_an_invoice_another_worker_closed(
    store: Store,
) -> None:
    from qrispay._keeper import Keeper
    from qrispay.engine import ReconciliationEngine
    from qrispay.models import Invoice, InvoiceStatus

    def keeper(holder: str) -> Keeper:
        return Keeper(store, "m", lambda: at(10), holder=holder, lease_ttl=TTL)

    def publish(events: object) -> None:
        pass

    invoice = Invoice(
        invoice_id="x",
        amount=10_000,
        fee=0,
        total=10_001,
        status=InvoiceStatus.PENDING,
        qris_image="",
        created_at=at(0),
        expired_at=at(3_600),
    )
    poller, other = keeper("a"), keeper("b")
    engine = await poller.load(None, lambda: ReconciliationEngine(started_at=at(0)))
    engine.track(invoice, now=at(1))
    await poller.commit(engine, [], publish)
    assert await poller.claim_lease()
    # Another worker cancels it; the poller's copy is still open, and changes.
    other_engine = await other.load(None, lambda: ReconciliationEngine(started_at=at(0)))
    await other.catch_up(other_engine, publish)
    events = other_engine.cancel("x", now=at(5))
    await other.commit(other_engine, events, publish)
    journal = engine._book.journal
    assert journal is not None
    journal.records.add("x")  # as a waiting late row or a gateway report would
    with pytest.raises(InvoiceStateConflictError):
        await poller.commit(engine, [], publish)
    state = await store.load("m")
    assert state is not None
    assert [json.loads(text)["invoice"]["status"] for text in state.records] == ["expired"]


async def test_a_first_state_is_written_only_once(store: Store) -> None:
    from qrispay.store._base import SeededMeanwhile

    # A lease claimed before any state does not count as a state.
    assert await store.claim_lease("m", "a", None, now=at(0), ttl=TTL) is not None
    await store.commit("m", Changes(meta={"by": "a"}, first=True))
    with pytest.raises(SeededMeanwhile):
        await store.commit(
            "m", Changes(meta={"by": "b"}, records=[rec("i", 10_001)], seen=[("k", 1)], first=True)
        )
    state = await store.load("m")
    assert state is not None
    assert state.meta == {"by": "a"}
    assert state.records == []
    assert state.seen == []


async def test_two_workers_starting_on_a_new_store_share_the_first_state(store: Store) -> None:
    from qrispay._keeper import Keeper
    from qrispay.engine import ReconciliationEngine

    starts = iter([at(0), at(50)])

    def make() -> ReconciliationEngine:
        return ReconciliationEngine(started_at=next(starts))

    keepers = [Keeper(store, "m", lambda: at(60), holder=h, lease_ttl=TTL) for h in "ab"]
    engines: list[ReconciliationEngine] = []

    async def start(keeper: Keeper) -> None:
        engines.append(await keeper.load(None, make))

    async with anyio.create_task_group() as tg:
        for keeper in keepers:
            tg.start_soon(start, keeper)
    # Whichever wrote first, both run on its state: one started_at, not two.
    state = await store.load("m")
    assert state is not None
    assert engines[0].started_at == engines[1].started_at
