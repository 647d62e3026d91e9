"""The store contract of the HTTP service: idempotency keys and the webhook
outbox, on every store (PostgreSQL where QRISPAY_TEST_POSTGRES names a server),
and both surviving a reopen of the store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest

from qrispay.store import Changes, SQLiteStore, Store

from .test_store import make_store

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with make_store(request.param, request) as opened:
        yield opened


async def add_events(store: Store, *ids: str, merchant: str = "m") -> None:
    events = [(event_id, "payment.unmatched", json.dumps({"n": event_id})) for event_id in ids]
    await store.commit(merchant, Changes(meta=None, events=events, committed_at=at(0)))


# -- idempotency keys ----------------------------------------------------------------


async def test_a_key_is_claimed_once_then_answers_what_was_settled(store: Store) -> None:
    entry, how = await store.idempotency_claim("s", "k", "d1", now=at(0), stale_before=at(-60))
    assert how == "new"
    assert (entry.state, entry.digest, entry.status, entry.body) == ("pending", "d1", None, None)
    again, how = await store.idempotency_claim("s", "k", "d1", now=at(1), stale_before=at(-59))
    assert how == "held"
    assert again.state == "pending"
    await store.idempotency_settle("s", "k", status=201, body='{"a": 1}', now=at(2))
    done, how = await store.idempotency_claim("s", "k", "d1", now=at(3), stale_before=at(-57))
    assert how == "held"
    assert (done.state, done.status, done.body) == ("done", 201, '{"a": 1}')
    # Another digest does not touch it; the caller sees the digest differ.
    other, how = await store.idempotency_claim("s", "k", "d2", now=at(4), stale_before=at(3))
    assert (how, other.digest, other.state) == ("held", "d1", "done")
    # Scopes are apart.
    _, how = await store.idempotency_claim("t", "k", "d2", now=at(5), stale_before=at(-55))
    assert how == "new"


async def test_a_stale_pending_key_is_claimed_again_once(store: Store) -> None:
    await store.idempotency_claim("s", "k", "d", now=at(0), stale_before=at(-600))
    # Another digest never takes over, however stale.
    _, how = await store.idempotency_claim("s", "k", "x", now=at(700), stale_before=at(100))
    assert how == "held"
    entry, how = await store.idempotency_claim("s", "k", "d", now=at(700), stale_before=at(100))
    assert how == "stale"
    assert entry.updated_at == at(700)
    assert entry.created_at == at(0)
    # Taken again just now: the next claimant finds it held, not stale.
    _, how = await store.idempotency_claim("s", "k", "d", now=at(701), stale_before=at(101))
    assert how == "held"


async def test_a_freed_key_is_new_again(store: Store) -> None:
    await store.idempotency_claim("s", "k", "d", now=at(0), stale_before=at(-60))
    await store.idempotency_settle("s", "k", status=None, body=None, now=at(1))
    _, how = await store.idempotency_claim("s", "k", "e", now=at(2), stale_before=at(-58))
    assert how == "new"
    with pytest.raises(KeyError):
        await store.idempotency_settle("s", "nope", status=200, body="{}", now=at(3))


async def test_concurrent_claims_of_one_key_give_one_new(store: Store) -> None:
    hows: list[str] = []

    async def claim() -> None:
        _, how = await store.idempotency_claim("s", "k", "d", now=at(0), stale_before=at(-60))
        hows.append(how)

    async with anyio.create_task_group() as tasks:
        for _ in range(8):
            tasks.start_soon(claim)
    assert sorted(hows) == ["held"] * 7 + ["new"]


# -- the webhook outbox ----------------------------------------------------------------


async def test_enqueue_follows_the_events_once_per_endpoint(store: Store) -> None:
    await add_events(store, "e1", "e2")
    assert await store.webhook_enqueue("m", "A", now=at(1)) == 2
    assert await store.webhook_enqueue("m", "A", now=at(2)) == 0
    await add_events(store, "e3")
    await add_events(store, "x1", merchant="other")
    assert await store.webhook_enqueue("m", "A", now=at(3)) == 1
    # A new endpoint starts from the first event: nothing is lost to it.
    assert await store.webhook_enqueue("m", "B", now=at(4)) == 3
    listed = await store.webhook_deliveries("m")
    assert [(d.event_id, d.endpoint) for d in listed] == [
        ("e1", "A"),
        ("e1", "B"),
        ("e2", "A"),
        ("e2", "B"),
        ("e3", "A"),
        ("e3", "B"),
    ]
    assert {d.state for d in listed} == {"pending"}
    assert [d.seq for d in listed] == sorted(d.seq for d in listed)


async def test_next_takes_the_oldest_due_delivery_and_holds_it(store: Store) -> None:
    await add_events(store, "e1", "e2")
    await store.webhook_enqueue("m", "A", now=at(0))
    head = await store.webhook_next("m", "A", now=at(1), hold_until=at(31))
    assert head is not None
    assert (head.event_id, head.attempts, head.next_attempt_at) == ("e1", 0, at(0))
    # Held: a second worker sees it, not due, and does not take it.
    held = await store.webhook_next("m", "A", now=at(2), hold_until=at(32))
    assert held is not None
    assert (held.event_id, held.next_attempt_at) == ("e1", at(31))
    # A failed attempt: retried later; the next one waits behind it (order).
    await store.webhook_attempted(
        "m", "A", "e1", state="pending", status=503, error="HTTP 503",
        next_attempt_at=at(60), now=at(3),
    )  # fmt: skip
    later = await store.webhook_next("m", "A", now=at(4), hold_until=at(34))
    assert later is not None
    assert (later.event_id, later.attempts, later.last_status) == ("e1", 1, 503)
    assert later.last_error == "HTTP 503"
    assert later.next_attempt_at == at(60)
    await store.webhook_attempted(
        "m", "A", "e1", state="delivered", status=200, error=None,
        next_attempt_at=at(61), now=at(61),
    )  # fmt: skip
    following = await store.webhook_next("m", "A", now=at(62), hold_until=at(92))
    assert following is not None
    assert following.event_id == "e2"
    await store.webhook_attempted(
        "m", "A", "e2", state="failed", status=None, error="timed out",
        next_attempt_at=at(62), now=at(62),
    )  # fmt: skip
    assert await store.webhook_next("m", "A", now=at(63), hold_until=at(93)) is None
    assert [d.event_id for d in await store.webhook_deliveries("m", state="failed")] == ["e2"]
    assert [d.event_id for d in await store.webhook_deliveries("m", state="delivered")] == ["e1"]
    with pytest.raises(KeyError):
        await store.webhook_attempted(
            "m", "A", "nope", state="failed", status=None, error=None,
            next_attempt_at=at(0), now=at(0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="state"):
        await store.webhook_attempted(
            "m", "A", "e1", state="lost", status=None, error=None,
            next_attempt_at=at(0), now=at(0),
        )  # fmt: skip


async def test_replay_makes_every_delivery_of_an_event_pending(store: Store) -> None:
    await add_events(store, "e1")
    await store.webhook_enqueue("m", "A", now=at(0))
    await store.webhook_enqueue("m", "B", now=at(0))
    for endpoint in ("A", "B"):
        await store.webhook_attempted(
            "m", endpoint, "e1", state="failed", status=500, error="HTTP 500",
            next_attempt_at=at(1), now=at(1),
        )  # fmt: skip
    assert await store.webhook_replay("m", "e1", now=at(5)) == 2
    pending = await store.webhook_deliveries("m", state="pending")
    assert [(d.endpoint, d.attempts, d.next_attempt_at) for d in pending] == [
        ("A", 0, at(5)),
        ("B", 0, at(5)),
    ]
    with pytest.raises(KeyError):
        await store.webhook_replay("m", "nope", now=at(5))
    assert await store.webhook_deliveries("m", limit=1) == pending[:1]


async def test_concurrent_next_takes_a_delivery_once(store: Store) -> None:
    await add_events(store, "e1")
    await store.webhook_enqueue("m", "A", now=at(0))
    taken: list[str] = []

    async def take() -> None:
        head = await store.webhook_next("m", "A", now=at(1), hold_until=at(31))
        if head is not None and head.next_attempt_at <= at(1):
            taken.append(head.event_id)

    async with anyio.create_task_group() as tasks:
        for _ in range(6):
            tasks.start_soon(take)
    assert taken == ["e1"]


async def test_keys_and_deliveries_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as first:
        await add_events(first, "e1")
        await first.webhook_enqueue("m", "A", now=at(0))
        await first.idempotency_claim("s", "k", "d", now=at(0), stale_before=at(-1))
        await first.idempotency_settle("s", "k", status=201, body="{}", now=at(1))
    async with SQLiteStore(path) as second:
        entry, how = await second.idempotency_claim("s", "k", "d", now=at(2), stale_before=at(1))
        assert (how, entry.state, entry.status) == ("held", "done", 201)
        assert await second.webhook_enqueue("m", "A", now=at(2)) == 0
        assert [d.event_id for d in await second.webhook_deliveries("m")] == ["e1"]
