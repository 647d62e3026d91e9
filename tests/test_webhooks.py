"""Webhooks: Standard Webhooks signatures (the specification's test vector and
the independent ``standardwebhooks`` verifier), endpoint names without
credentials, and the delivery worker in virtual time: a receiver down for an
hour, a dead receiver beside a live one, giving up after 3 days, a crash in
the middle of an attempt."""

from __future__ import annotations

import base64
import json
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import standardwebhooks

from qrispay.errors import StoreError
from qrispay.store import Changes, MemoryStore, SQLiteStore, Store
from qrispay.webhooks import (
    RetryPolicy,
    WebhookDispatcher,
    WebhookSigner,
    endpoint_name,
    parse_secret,
    verify,
)

from .conftest import SECRET
from .virtual_time import hold_time_during_threads, virtual_backend

WHSEC = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER = "whsec_" + base64.b64encode(b"o" * 24).decode()
T0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)

# -- signing ----------------------------------------------------------------------------


def test_the_specifications_test_vector() -> None:
    signer = WebhookSigner(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
    signature = signer.signature(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_independent_verifier_accepts_our_signature_and_each_rotated_secret() -> None:
    body = b'{"id":"paid:INV1","type":"invoice.paid"}'
    now = int(time.time())
    headers = WebhookSigner([WHSEC, OTHER]).headers("paid:INV1", now, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (WHSEC, OTHER):
        assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)
        assert verify(secret, headers, body, now=now)
    third = "whsec_" + base64.b64encode(b"t" * 24).decode()
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(third).verify(body, headers)
    assert not verify(third, headers, body, now=now)
    assert not verify(WHSEC, headers, body + b" ", now=now)
    assert not verify(WHSEC, headers, body, now=now + 301)
    # A forged timestamp is refused, never raised on (int() refuses "\u00b2").
    for stamp in ("\u00b2", "\u0661\u0662", "", "-1", "1e9"):
        assert not verify(WHSEC, {**headers, "webhook-timestamp": stamp}, body, now=now)


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_!!!", "sk_abc", "whsec_" + "YWJj"])
def test_a_bad_secret_is_refused_without_being_quoted(bad: str) -> None:
    with pytest.raises(ValueError, match="webhook secret") as caught:
        parse_secret(bad)
    if bad[6:]:
        assert bad[6:] not in str(caught.value)


def test_the_signer_shows_no_secret() -> None:
    assert WHSEC not in repr(WebhookSigner([WHSEC]))
    assert WHSEC[6:] not in repr(WebhookSigner([WHSEC]))


def test_endpoint_names_hold_no_credential() -> None:
    quoted = urllib.parse.quote(SECRET, safe="")
    url = f"https://user:{quoted}@hooks.example:8443/in?token={quoted}&x=1"
    name = endpoint_name(url)
    assert quoted not in name
    assert SECRET not in name
    assert name.startswith("https://hooks.example:8443/in?token=***&x=***")
    assert endpoint_name(url.replace("x=1", "x=2")) != name
    with pytest.raises(ValueError, match="webhook URL"):
        endpoint_name("ftp://example/")
    with pytest.raises(ValueError, match="webhook URL") as caught:
        endpoint_name(f"https://user:{SECRET}@hooks.example/in")
    assert "s3cr3t" not in str(caught.value)


# -- delivery in virtual time -------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_backend(request.param)


@pytest.fixture(autouse=True)
def _threads_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hold_time_during_threads(monkeypatch)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "w.db")
    async with made:
        yield made


def virtual_clock() -> datetime:
    return T0 + timedelta(seconds=anyio.current_time())


class Receiver:
    """An in-process webhook receiver: down until ``up_at`` (virtual seconds),
    then it verifies and records each delivery."""

    def __init__(self, up_at: float = 0.0, *, dead: bool = False, status: int = 503) -> None:
        self.up_at = up_at
        self.dead = dead
        self.status = status
        self.attempts = 0
        self.got: list[tuple[str, dict[str, Any]]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.dead:
            raise httpx.ConnectError("refused", request=request)
        if anyio.current_time() < self.up_at:
            return httpx.Response(self.status)
        body = request.read()
        stamp = int(request.headers["webhook-timestamp"])
        assert verify(WHSEC, dict(request.headers), body, now=stamp)
        event = json.loads(body)
        assert request.headers["webhook-id"] == event["id"]
        self.got.append((request.headers["webhook-id"], event))
        return httpx.Response(204)


class Router(httpx.AsyncBaseTransport):
    def __init__(self, receivers: dict[str, Receiver]) -> None:
        self.receivers = receivers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.01)  # a receiver takes a moment
        return self.receivers[request.url.host].handle(request)


async def add_events(store: Store, ids: list[str], *, merchant: str = "m") -> None:
    events = [(i, "payment.unmatched", json.dumps({"amount": n})) for n, i in enumerate(ids)]
    await store.commit(merchant, Changes(meta=None, events=events, committed_at=virtual_clock()))


def dispatcher(store: Store, receivers: dict[str, Receiver], **options: Any) -> WebhookDispatcher:
    return WebhookDispatcher(
        store,
        "m",
        [f"http://{host}/hook" for host in receivers],
        WebhookSigner([WHSEC]),
        clock=virtual_clock,
        rng=random.Random(3),
        transport=Router(receivers),
        poll_interval=options.pop("poll_interval", 60.0),
        recheck=options.pop("recheck", 3600.0),
        **options,
    )


async def wait_until(check: Callable[[], bool], limit: float) -> None:
    with anyio.fail_after(limit):
        while not check():  # noqa: ASYNC110 - a check in virtual time, not an event
            await anyio.sleep(5)


@pytest.mark.anyio
async def test_a_receiver_down_for_an_hour_gets_every_event_once_in_order(store: Store) -> None:
    down = Receiver(up_at=3600.0)
    ids = [f"e{n}" for n in range(20)]
    work = dispatcher(store, {"down.example": down})
    async with anyio.create_task_group() as tasks:
        await tasks.start(work.run)
        await add_events(store, ids[:10])
        work.wake()
        await anyio.sleep(1800)
        await add_events(store, ids[10:])
        work.wake()
        await wait_until(lambda: len(down.got) == 20, 3 * 3600)
        assert anyio.current_time() >= 3600
        await anyio.sleep(600)  # nothing more comes
        tasks.cancel_scope.cancel()
    assert [webhook_id for webhook_id, _ in down.got] == ids
    assert [event["id"] for _, event in down.got] == ids
    assert down.got[0][1]["type"] == "payment.unmatched"
    assert down.got[0][1]["data"] == {"amount": 0}
    # It was retried, with growing waits, not hammered: a handful of attempts an hour.
    assert 5 <= down.attempts - 20 <= 20
    delivered = await store.webhook_deliveries("m", state="delivered")
    assert len(delivered) == 20
    assert delivered[0].attempts > 1
    assert delivered[0].last_status == 204


@pytest.mark.anyio
async def test_a_dead_receiver_delays_no_other(store: Store) -> None:
    live, dead = Receiver(), Receiver(dead=True)
    work = dispatcher(store, {"dead.example": dead, "live.example": live})
    async with anyio.create_task_group() as tasks:
        await tasks.start(work.run)
        start = anyio.current_time()
        for n in range(5):
            await add_events(store, [f"e{n}"])
            work.wake()
            await anyio.sleep(0.5)
        await wait_until(lambda: len(live.got) == 5, 60)
        assert anyio.current_time() - start < 10
        tasks.cancel_scope.cancel()
    pending = await store.webhook_deliveries("m", state="pending")
    assert {d.endpoint for d in pending} == {endpoint_name("http://dead.example/hook")}
    assert pending[0].last_error == "cannot connect"


@pytest.mark.anyio
async def test_a_store_failure_while_reading_the_event_stops_no_endpoint(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = Receiver()
    work = dispatcher(store, {"live.example": live}, poll_interval=1.0)
    read = store.events_after
    failures = 0

    async def flaky(merchant: str, seq: int, limit: int) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise StoreError("database is locked")
        return await read(merchant, seq, limit)

    async with anyio.create_task_group() as tasks:
        await tasks.start(work.run)
        monkeypatch.setattr(store, "events_after", flaky)
        await add_events(store, ["e0"])
        work.wake()
        await wait_until(lambda: len(live.got) == 1, 3600)
        tasks.cancel_scope.cancel()
    assert failures == 2
    assert [webhook_id for webhook_id, _ in live.got] == ["e0"]


@pytest.mark.anyio
async def test_after_three_days_a_delivery_is_failed_and_the_next_goes(store: Store) -> None:
    receiver = Receiver(up_at=3 * 24 * 3600 + 7200, status=500)
    work = dispatcher(store, {"r.example": receiver})
    async with anyio.create_task_group() as tasks:
        await tasks.start(work.run)
        await add_events(store, ["e1"])
        work.wake()
        await anyio.sleep(3 * 24 * 3600 + 3600)
        failed = await store.webhook_deliveries("m", state="failed")
        assert [(d.event_id, d.last_status, d.last_error) for d in failed] == [
            ("e1", 500, "HTTP 500")
        ]
        # Backoff capped at an hour: about one attempt an hour for 3 days.
        assert 60 <= failed[0].attempts <= 120
        await anyio.sleep(7200)
        await add_events(store, ["e2"])
        work.wake()
        await wait_until(lambda: len(receiver.got) == 1, 60)
        tasks.cancel_scope.cancel()
    assert [webhook_id for webhook_id, _ in receiver.got] == ["e2"]


@pytest.mark.anyio
async def test_an_attempt_cut_short_is_sent_again_under_the_same_id(store: Store) -> None:
    receiver = Receiver()
    await add_events(store, ["e1"])

    class Stuck(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await anyio.sleep_forever()
            raise AssertionError

    first = WebhookDispatcher(
        store, "m", ["http://r.example/hook"], WebhookSigner([WHSEC]),
        clock=virtual_clock, transport=Stuck(), policy=RetryPolicy(timeout=3600),
    )  # fmt: skip
    with anyio.move_on_after(5):  # the process dies mid-attempt
        await first.run()
    second = dispatcher(store, {"r.example": receiver})
    async with anyio.create_task_group() as tasks:
        await tasks.start(second.run)
        await wait_until(lambda: len(receiver.got) == 1, 2 * 3600)
        # Not before the first one's hold (its timeout and a margin) lapsed.
        assert anyio.current_time() >= 3600
        tasks.cancel_scope.cancel()
    assert [webhook_id for webhook_id, _ in receiver.got] == ["e1"]


@pytest.mark.anyio
async def test_nothing_logged_or_stored_holds_a_credential(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(up_at=30.0)
    url = f"http://r.example/hook?token={urllib.parse.quote(SECRET, safe='')}"
    work = WebhookDispatcher(
        store, "m", [url], WebhookSigner([WHSEC]), clock=virtual_clock,
        transport=Router({"r.example": receiver}),
    )  # fmt: skip
    async with anyio.create_task_group() as tasks:
        await tasks.start(work.run)
        await add_events(store, ["e1"])
        work.wake()
        await wait_until(lambda: len(receiver.got) == 1, 600)
        tasks.cancel_scope.cancel()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "delivered" in text
    rows = repr(await store.webhook_deliveries("m"))
    for secret in (SECRET, WHSEC, WHSEC[6:], "s3cr3t"):
        assert secret not in text
        assert secret not in rows
    assert SECRET not in repr(work)
