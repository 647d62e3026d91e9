"""The HTTP service in process (the app through httpx's ASGI transport, the
sandbox in process, virtual time): idempotency keys, the invoice routes, the
event feed, withdrawals, bad input, secrets. Real processes on loopback are
in test_serve_processes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from qrispay import Payouts, Reconciler
from qrispay.polling import PollPolicy
from qrispay.sandbox import LoopClock, Sandbox
from qrispay.serve import Service
from qrispay.serve._idempotency import digest
from qrispay.store import MemoryStore, SQLiteStore, Store

from .conftest import SECRET
from .virtual_time import hold_time_during_threads, virtual_backend

pytestmark = pytest.mark.anyio

START = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
TOKEN = "serve-token-" + SECRET
POLICY = PollPolicy(ttl=30.0, idle_interval=60.0)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_backend(request.param)


@pytest.fixture(autouse=True)
def _threads_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    hold_time_during_threads(monkeypatch)


class Served:
    """A sandbox, a service on a store, and an HTTP client of the service."""

    def __init__(self, store: Store) -> None:
        self.clock = LoopClock(START)
        self.sandbox = Sandbox(clock=self.clock, seed=11, ttl=30.0, gateway_balance=1_000_000)
        self.store = store
        self.feed = self.sandbox.mutation_client()
        self.gateway = self.sandbox.gateway_client()
        self.svc: Service | None = None
        self.http: httpx.AsyncClient | None = None

    def service(self, **options: Any) -> Service:
        rec = Reconciler(
            self.feed, gateway=self.gateway, clock=self.clock, policy=POLICY, store=self.store
        )
        payouts = Payouts(self.gateway, store=self.store, clock=self.clock)
        return Service(rec, token=TOKEN, payouts=payouts, clock=self.clock, **options)

    def client(self, svc: Service, token: str | None = TOKEN) -> httpx.AsyncClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=svc.app), base_url="http://serve", headers=headers
        )

    async def create(self, amount: Any, key: str = "k1", **kw: Any) -> httpx.Response:
        assert self.http is not None
        return await self.http.post(
            "/v1/invoices", json={"amount": amount}, headers={"Idempotency-Key": key}, **kw
        )


@pytest.fixture(params=["memory", "sqlite"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    world = Served(store)
    async with store, world.feed, world.gateway, anyio.create_task_group() as tasks:
        world.svc = world.service()
        await tasks.start(world.svc.run)
        async with world.client(world.svc) as http:
            world.http = http
            yield world
        tasks.cancel_scope.cancel()


# -- invoices and idempotency ---------------------------------------------------------------


async def test_the_same_key_and_body_replays_and_creates_nothing(served: Served) -> None:
    first = await served.create(10_000)
    assert first.status_code == 201
    invoice = first.json()
    assert invoice["amount"] == 10_000
    assert isinstance(invoice["total"], int)
    assert invoice["status"] == "pending"
    again = await served.create(10_000)
    assert again.status_code == 201
    assert again.json() == invoice
    assert again.headers["idempotent-replayed"] == "true"
    assert len(served.sandbox.pending_totals()) == 1
    other = await served.create(20_000)
    assert other.status_code == 422
    assert other.json()["error"]["type"] == "idempotency_key_reused"
    assert len(served.sandbox.pending_totals()) == 1
    assert served.http is not None
    missing = await served.http.post("/v1/invoices", json={"amount": 10_000})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "idempotency_key_required"


async def test_concurrent_requests_with_one_key_create_one_invoice(served: Served) -> None:
    answers: list[httpx.Response] = []

    async def ask() -> None:
        answers.append(await served.create(15_000, key="same"))

    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(ask)
    assert len(served.sandbox.pending_totals()) == 1
    created = [a.json() for a in answers if a.status_code == 201]
    assert created
    assert all(body == created[0] for body in created)
    assert {a.status_code for a in answers} <= {201, 409}
    busy = [a.json()["error"]["type"] for a in answers if a.status_code == 409]
    assert set(busy) <= {"request_in_progress"}


async def test_a_crashed_claim_never_creates_the_invoice_twice(served: Served) -> None:
    # A claim left pending by a process that died mid-request.
    assert served.svc is not None
    now = served.clock()
    request_digest = digest("POST", "/v1/invoices", {"amount": 10_000})
    scope = f"invoices:{served.feed.merchant}"
    await served.store.idempotency_claim(
        scope, "lost", request_digest, now=now, stale_before=now - timedelta(minutes=10)
    )
    busy = await served.create(10_000, key="lost")
    assert busy.status_code == 409
    await anyio.sleep(11 * 60)
    unknown = await served.create(10_000, key="lost")
    assert unknown.status_code == 502
    assert unknown.json()["error"]["type"] == "outcome_unknown"
    assert served.sandbox.pending_totals() == {}
    # And it says so for ever: the key is settled, not sent.
    again = await served.create(10_000, key="lost")
    assert (again.status_code, again.json()) == (502, unknown.json())
    assert served.sandbox.pending_totals() == {}


async def test_a_key_answers_the_same_after_a_restart(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "keys.db")
    world = Served(store)
    async with world.feed, world.gateway:
        bodies = []
        for _ in range(2):
            async with store, anyio.create_task_group() as tasks:
                svc = world.service()
                await tasks.start(svc.run)
                async with world.client(svc) as world.http:
                    answer = await world.create(12_000, key="order-7")
                    assert answer.status_code == 201
                    bodies.append(answer.json())
                tasks.cancel_scope.cancel()
        assert bodies[0] == bodies[1]
        assert len(world.sandbox.pending_totals()) == 1


async def test_pay_status_cancel_and_events(served: Served) -> None:
    assert served.http is not None
    paid = (await served.create(10_000, key="a")).json()
    kept = (await served.create(20_000, key="b")).json()
    served.sandbox.pay(paid["total"])
    await anyio.sleep(POLICY.interval + 1)
    status = await served.http.get(f"/v1/invoices/{paid['invoice_id']}")
    assert (status.status_code, status.json()["status"]) == (200, "paid")
    cancelled = await served.http.post(f"/v1/invoices/{kept['invoice_id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "expired"  # a cancelled invoice reads as expired
    refused = await served.http.post(f"/v1/invoices/{paid['invoice_id']}/cancel")
    assert refused.status_code == 409
    assert refused.json()["error"]["type"] == "not_cancellable"
    page = (await served.http.get("/v1/events")).json()
    assert page["has_more"] is False
    assert [(e["type"], e["id"]) for e in page["data"]] == [
        ("invoice.paid", f"paid:{paid['invoice_id']}"),
        ("invoice.cancelled", f"cancelled:{kept['invoice_id']}"),
    ]
    first = page["data"][0]
    assert set(first) == {"id", "type", "created_at", "data"}
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    assert first["data"]["invoice"]["total"] == paid["total"]
    one = (await served.http.get("/v1/events", params={"limit": 1})).json()
    assert (len(one["data"]), one["has_more"]) == (1, True)
    rest = await served.http.get("/v1/events", params={"after": first["id"]})
    assert [e["id"] for e in rest.json()["data"]] == [page["data"][1]["id"]]
    unknown = await served.http.get("/v1/events", params={"after": "nope"})
    assert (unknown.status_code, unknown.json()["error"]["type"]) == (404, "unknown_event")
    for limit in ("0", "1001", "x", "\u00b2", "\u0665"):  # the last two pass str.isdigit()
        bad = await served.http.get("/v1/events", params={"limit": limit})
        assert (bad.status_code, bad.json()["error"]["type"]) == (400, "invalid_query")


async def test_withdrawals_are_sent_once_per_key(served: Served) -> None:
    assert served.http is not None
    body = {"amount": 50_000, "account_number": "081234567890", "account_name": "Budi"}
    headers = {"Idempotency-Key": "w-1"}
    first = await served.http.post("/v1/withdrawals", json=body, headers=headers)
    assert first.status_code == 201
    again = await served.http.post("/v1/withdrawals", json=body, headers=headers)
    assert again.json() == first.json()
    assert len(served.sandbox.withdrawal_ids()) == 1
    other = await served.http.post(
        "/v1/withdrawals", json={**body, "amount": 60_000}, headers=headers
    )
    assert other.status_code == 422
    shown = await served.http.get(f"/v1/withdrawals/{first.json()['withdraw_id']}")
    assert shown.json()["amount"] == 50_000
    balance = await served.http.get("/v1/balance")
    assert isinstance(balance.json()["balance"], int)
    missing = await served.http.get("/v1/withdrawals/nope")
    assert missing.status_code == 404
    huge = await served.http.post(
        "/v1/withdrawals", json={**body, "amount": 10**26}, headers={"Idempotency-Key": "w-2"}
    )
    assert (huge.status_code, huge.json()["error"]["type"]) == (422, "invalid_request")
    assert len(served.sandbox.withdrawal_ids()) == 1


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b'{"amount": ', 400, "invalid_json"),
        (b"[10000]", 400, "invalid_json"),
        (b'{"amount": "10000"}', 422, "invalid_request"),
        (b'{"amount": 10000.0}', 422, "invalid_request"),
        (b'{"amount": 10000.5}', 422, "invalid_request"),
        (b'{"amount": true}', 422, "invalid_request"),
        (b'{"amount": -5}', 422, "invalid_request"),
        (b'{"amount": 0}', 422, "invalid_request"),
        (b'{"amount": 10000000000000}', 422, "invalid_request"),
        (b'{"amount": 100000000000000000000000000}', 422, "invalid_request"),
        (b'{"amount": ' + b"9" * 5000 + b"}", 422, "invalid_request"),
        (b"[" * 5000, 400, "invalid_json"),
        (b"{}", 422, "invalid_request"),
        (b'{"amount": 10000, "amout": 1}', 422, "invalid_request"),
        (b'{"amount": 1' + b"0" * 20000 + b"}", 400, "body_too_large"),
    ],
)
async def test_bad_bodies_get_a_json_error_and_create_nothing(
    served: Served, body: bytes, status: int, kind: str
) -> None:
    assert served.http is not None
    answer = await served.http.post(
        "/v1/invoices", content=body, headers={"Idempotency-Key": "bad"}
    )
    assert answer.status_code == status
    assert answer.json()["error"]["type"] == kind
    assert answer.json()["error"]["message"]
    assert served.sandbox.pending_totals() == {}


async def test_the_token_is_required_everywhere_but_healthz(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert served.svc is not None
    paths = ["/v1/events", "/v1/balance", "/v1/invoices/x", "/metrics", "/openapi.json", "/nope"]
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        async with served.client(served.svc, token) as http:
            for path in paths:
                answer = await http.get(path)
                assert answer.status_code == 401, path
                assert answer.json()["error"]["type"] == "unauthorized"
                assert answer.headers["www-authenticate"] == "Bearer"
            health = await http.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            assert health.json()["last_poll"] is not None
    async with served.client(served.svc, None) as http:
        answer = await http.get("/v1/events", headers={"Authorization": f"Basic {TOKEN}"})
        assert answer.status_code == 401
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in text


async def test_unknown_things_get_json_errors_never_a_traceback(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert served.http is not None
    assert served.svc is not None
    for method, path, status in (
        ("GET", "/v1/invoices/unknown", 404),
        ("POST", "/v1/invoices/unknown/cancel", 404),
        ("GET", "/v2/nothing", 404),
        ("DELETE", "/v1/invoices", 405),
    ):
        answer = await served.http.request(method, path)
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"type", "message"}

    async def broken(amount: int) -> Any:
        raise RuntimeError(f"a bug that quotes {SECRET}")

    monkeypatch.setattr(served.svc.rec, "create_invoice", broken)
    answer = await served.create(10_000, key="bug")
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "internal_error"
    assert "Traceback" not in answer.text
    assert SECRET not in answer.text
    assert SECRET not in "\n".join(r.getMessage() for r in caplog.records)


async def test_openapi_describes_every_route_and_metrics_count(served: Served) -> None:
    assert served.http is not None
    schema = (await served.http.get("/openapi.json")).json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        "/v1/invoices",
        "/v1/invoices/{invoice_id}",
        "/v1/invoices/{invoice_id}/cancel",
        "/v1/events",
        "/v1/events/stream",
        "/v1/balance",
        "/v1/withdrawals",
        "/v1/withdrawals/{withdraw_id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    }
    invoice = (await served.create(10_000, key="m")).json()
    served.sandbox.pay(invoice["total"])
    await anyio.sleep(POLICY.interval + 1)
    text = (await served.http.get("/metrics")).text
    assert 'qrispay_events_total{type="invoice.paid"} 1' in text
    assert f'qrispay_lease_holder{{merchant="{served.feed.merchant}"}} 1' in text
    polls = [line for line in text.splitlines() if line.startswith("qrispay_polls_total")]
    assert int(polls[0].split()[-1]) >= 2
    # Exact numbers, not "%g" (6 digits: a timestamp was rounded by up to 50000 s).
    last = [line for line in text.splitlines() if line.startswith("qrispay_last_poll_")]
    stamp = float(last[0].split()[-1])
    assert served.svc.rec.stats.last_success is not None
    assert abs(stamp - served.svc.rec.stats.last_success.timestamp()) <= 60


async def test_no_answer_or_stored_row_holds_a_secret(served: Served) -> None:
    assert served.http is not None
    await served.create(10_000, key=f"k-{SECRET[:5]}")
    rows = await served.store.webhook_deliveries(served.feed.merchant)
    entry, _ = await served.store.idempotency_claim(
        f"invoices:{served.feed.merchant}",
        f"k-{SECRET[:5]}",
        "x",
        now=served.clock(),
        stale_before=served.clock(),
    )
    for text in (repr(rows), repr(entry), entry.body or "", repr(served.svc)):
        assert TOKEN not in text
        assert served.sandbox.api_key not in text
    assert json.loads(entry.body or "{}")["amount"] == 10_000
