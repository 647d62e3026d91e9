"""The examples in ``examples/`` run, against an in-process sandbox.

``examples/`` is not a package, so its files are loaded from their paths.
The sandbox's feed cache and the poll policy are shortened to a fraction of a
second, and every wait is bounded, so a broken loop fails instead of hanging.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import httpx
import pytest
from fastapi import FastAPI

from qrispay import (
    AuthenticationError,
    GatewayClient,
    Invoice,
    InvoiceStatus,
    MutationClient,
    PollPolicy,
)
from qrispay.sandbox import SANDBOX_URL, ManualClock, Sandbox

from .conftest import SECRET, pending_invoice, sandbox_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV_NAMES = (
    "QRISPAY_API_KEY",
    "QRISPAY_GATEWAY_URL",
    "QRISPAY_AUTH",
    "QRISPAY_MERCHANT",
    "QRISPAY_TOKEN",
    "QRISPAY_FEED_URL",
)
#: Seconds: the sandbox's feed cache, and the policy that respects it.
TTL = 0.2
FAST = PollPolicy(ttl=TTL, margin=0.05)
#: The longest any single wait below may take before the test fails.
DEADLINE = 5.0

pytestmark = pytest.mark.timeout(30)


def load_example(name: str, module_name: str | None = None) -> ModuleType:
    module_name = module_name or f"qrispay_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: pydantic resolves the models' annotations
    # through sys.modules.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


fastapi_app = load_example("fastapi_app")
task_group = load_example("task_group")


def make_app(sandbox: Sandbox, **kw: Any) -> FastAPI:
    kw = {
        "gateway_factory": sandbox.gateway_client,
        "feed_factory": sandbox.mutation_client,
        "policy": FAST,
        "db": Path(tempfile.mkdtemp(prefix="qrispay-test-")) / "qrispay.db",
        **kw,
    }
    app: FastAPI = fastapi_app.create_app(**kw)
    return app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, and a client talking to it in-process."""
    with anyio.fail_after(DEADLINE):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
                yield client


async def create(client: httpx.AsyncClient, amount: int = 10_000) -> dict[str, Any]:
    response = await client.post("/invoices", json={"amount": amount})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def eventually(client: httpx.AsyncClient, invoice_id: str, status: str) -> dict[str, Any]:
    """Poll the status route until it says ``status``."""
    with anyio.fail_after(DEADLINE):
        while True:
            response = await client.get(f"/invoices/{invoice_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] == status:
                return body
            await anyio.sleep(0.02)


# -- the FastAPI service --------------------------------------------------------


@pytest.mark.anyio
async def test_invoice_created_then_paid() -> None:
    sandbox = Sandbox(ttl=TTL)
    async with running(make_app(sandbox)) as client:
        created = await create(client, 10_000)
        assert created["status"] == "pending"
        assert created["amount"] == 10_000
        assert created["total"] == created["amount"] + created["fee"]
        assert created["qris_image"]
        assert created["expired_at"].endswith("+07:00")  # ISO 8601, zone kept
        assert sandbox.pending_totals() == {created["total"]: created["invoice_id"]}

        pending = await client.get(f"/invoices/{created['invoice_id']}")
        assert pending.json() == created

        sandbox.pay(created["total"])
        paid = await eventually(client, created["invoice_id"], "paid")
        assert paid == {**created, "status": "paid"}


@pytest.mark.anyio
async def test_no_long_poll_route_holds_a_request() -> None:
    # A frontend asks the status route every few seconds instead: a held request
    # would keep Ctrl-C and a rolling restart waiting.
    sandbox = Sandbox(ttl=TTL)
    async with running(make_app(sandbox)) as client:
        created = await create(client)
        response = await client.get(f"/invoices/{created['invoice_id']}/wait")
        assert response.status_code == 404
        assert (await client.get("/invoices/no-such-invoice")).status_code == 404


@pytest.mark.anyio
async def test_health_reports_the_reconciler_s_stats() -> None:
    sandbox = Sandbox(ttl=TTL)
    async with running(make_app(sandbox)) as client:
        created = await create(client)
        sandbox.pay(created["total"])
        await eventually(client, created["invoice_id"], "paid")
        # The counters move when the poll's events are published, just after the
        # engine changed the invoice's state.
        with anyio.fail_after(DEADLINE):
            while True:
                response = await client.get("/health")
                assert response.status_code == 200, response.text
                health = response.json()
                if health["events"].get("InvoicePaid"):
                    break
                await anyio.sleep(0.02)
        assert health["status"] == "ok"
        assert health["polling"] is True
        assert health["polls"] >= 1
        assert health["consecutive_failures"] == 0
        assert health["events"]["InvoicePaid"] == 1
        last = datetime.fromisoformat(health["last_success"])
        assert last.utcoffset() is not None


@pytest.mark.anyio
async def test_health_is_degraded_after_failures_in_a_row_and_recovers() -> None:
    sandbox = Sandbox(ttl=TTL)
    # Backoff capped short, so that three failures come within the deadline.
    policy = PollPolicy(ttl=TTL, margin=0.05, max_backoff=0.3)
    async with running(make_app(sandbox, policy=policy)) as client:
        await create(client)  # an open invoice: the Reconciler polls
        sandbox.fail_next("error", endpoint="check_payment", times=1000)
        with anyio.fail_after(DEADLINE * 2):
            while (response := await client.get("/health")).status_code != 503:
                assert response.status_code == 200, response.text
                await anyio.sleep(0.05)
        health = response.json()
        assert health["status"] == "degraded"
        assert health["consecutive_failures"] >= fastapi_app.DEGRADED_AFTER
        assert health["last_error"]
        for secret in (sandbox.api_key, sandbox.auth, sandbox.token):
            assert secret not in response.text
        sandbox.clear_faults()
        with anyio.fail_after(DEADLINE * 2):
            while True:
                response = await client.get("/health")
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                await anyio.sleep(0.05)
        assert response.json()["consecutive_failures"] == 0


@pytest.mark.anyio
async def test_expired_invoice() -> None:
    # Virtual wall time, so the invoice's 15 minutes pass at once; the poll
    # schedule still runs on the event loop's clock.
    clock = ManualClock()
    sandbox = Sandbox(ttl=TTL, clock=clock)
    async with running(make_app(sandbox, clock=clock)) as client:
        created = await create(client)
        # Past expiry plus the engine's 2-minute skew.
        clock.advance(timedelta(minutes=18))
        assert (await eventually(client, created["invoice_id"], "expired"))["total"] == created[
            "total"
        ]


@pytest.mark.anyio
async def test_bad_amounts_are_422() -> None:
    sandbox = Sandbox(ttl=TTL)
    async with running(make_app(sandbox)) as client:
        bodies: list[Any] = [
            {},
            {"amount": 0},
            {"amount": -10_000},
            {"amount": "10000"},
            {"amount": 10_000.0},
            {"amount": 10_000.5},
            {"amount": True},
            {"amount": None},
            [10_000],
        ]
        for body in bodies:
            response = await client.post("/invoices", json=body)
            assert response.status_code == 422, (body, response.text)
        assert sandbox.invoice_ids() == []


@pytest.mark.anyio
async def test_total_conflict_is_409() -> None:
    # Three codes, all held by invoices tracked from elsewhere: every total the
    # gateway hands out is taken, so the Reconciler gives up after three.
    sandbox = Sandbox(ttl=TTL, max_code=3)
    app = make_app(sandbox)
    async with running(app) as client:
        now = sandbox.now()
        for code in (1, 2, 3):
            app.state.reconciler.track(pending_invoice(f"elsewhere-{code}", 10_000, code, now))
        response = await client.post("/invoices", json={"amount": 10_000})
        assert response.status_code == 409, response.text
        # The three it was handed were cancelled, not left open to be paid.
        created = sandbox.invoice_ids()
        assert len(created) == 3
        assert [sandbox.invoice(i)["status"] for i in created] == ["expired"] * 3


SECRET_FORMS = {SECRET, quote(SECRET, safe=""), quote_plus(SECRET)}


@pytest.mark.anyio
async def test_gateway_failures_map_to_5xx_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox = Sandbox(ttl=TTL, api_key=SECRET, min_amount=5_000)
    texts: list[str] = []
    async with running(make_app(sandbox)) as client:
        # Done at the gateway, then a 5xx: nobody knows whether it exists.
        sandbox.fail_next("error_after", endpoint="create_invoice")
        response = await client.post("/invoices", json={"amount": 10_000})
        texts.append(response.text)
        assert response.status_code == 502
        assert "do not retry blindly" in response.json()["detail"].lower()
        assert len(sandbox.invoice_ids()) == 1  # it did exist

        # The gateway's own refusal: its reason is passed on.
        response = await client.post("/invoices", json={"amount": 100})
        texts.append(response.text)
        assert response.status_code == 502
        assert "minimal 5000" in response.json()["detail"]

        # Told to come back later than the client will wait: 503 with Retry-After.
        sandbox.fail_next("rate_limit", endpoint="create_invoice", retry_after=120)
        response = await client.post("/invoices", json={"amount": 10_000})
        texts.append(response.text)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "120"

    texts.append(caplog.text)
    for text in texts:
        for form in SECRET_FORMS:
            assert form not in text


@pytest.mark.anyio
async def test_a_restart_carries_on_and_every_verdict_is_handled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stop the service, let customers pay, start it again: the downtime's payment
    # pays its invoice, a wrong amount reaches the attention list, and the
    # consumer resumes after the last event it handled.
    caplog.set_level(logging.INFO, logger="qrispay.examples.fastapi_app")
    sandbox = Sandbox(ttl=TTL)
    db = tmp_path / "shop.db"
    app = make_app(sandbox, db=db)
    async with running(app) as client:
        first = await create(client)
        second = await create(client)
        sandbox.pay(first["total"])
        assert (await eventually(client, first["invoice_id"], "paid"))["status"] == "paid"
        with anyio.fail_after(DEADLINE):
            while True:
                if app.state.verdicts.delivered:
                    break
                await anyio.sleep(0.05)
    # The shop remembers the last event it handled, with its effect.
    assert app.state.verdicts.last() == f"paid:{first['invoice_id']}"

    sandbox.pay(second["total"])  # while the service is down
    sandbox.pay(77_777)  # nobody's total
    app = make_app(sandbox, db=db)
    async with running(app) as client:
        paid = await eventually(client, second["invoice_id"], "paid")
        assert paid["status"] == "paid"
        with anyio.fail_after(DEADLINE):
            while True:
                if (await client.get("/attention")).json():
                    break
                await anyio.sleep(0.05)
        attention = (await client.get("/attention")).json()
        # The first invoice survived the restart as the store knew it.
        assert (await client.get(f"/invoices/{first['invoice_id']}")).json()["status"] == "paid"
    assert [item["type"] for item in attention] == ["payment.unmatched"]
    verdicts = app.state.verdicts
    assert list(verdicts.delivered.values()) == [first["invoice_id"], second["invoice_id"]]
    # The first payment was handled before the restart and not again after it.
    deliveries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("deliver")]
    assert deliveries == [
        f"deliver the order of invoice {first['invoice_id']}",
        f"deliver the order of invoice {second['invoice_id']}",
    ]


@pytest.mark.anyio
async def test_wrong_gateway_key_fails_the_start(caplog: pytest.LogCaptureFixture) -> None:
    # Start-up makes one cheap authenticated gateway call (the balance): a wrong
    # key stops the service there, not at the first customer's invoice.
    caplog.set_level(logging.DEBUG)
    other = Sandbox(ttl=TTL)
    app = make_app(
        other,
        gateway_factory=lambda: GatewayClient(
            SECRET, base_url=SANDBOX_URL, transport=httpx.ASGITransport(app=other.app)
        ),
    )
    with pytest.raises(AuthenticationError) as raised:
        async with running(app):
            pass
    for form in SECRET_FORMS:
        assert form not in str(raised.value)
        assert form not in repr(raised.value)
        assert form not in caplog.text


@pytest.mark.anyio
async def test_wrong_feed_credentials_fail_the_start() -> None:
    # Better a service that does not start than one that polls in vain for ever.
    sandbox = Sandbox(ttl=TTL)
    app = make_app(
        sandbox,
        feed_factory=lambda: MutationClient(
            SECRET,
            sandbox.merchant,
            sandbox.token,
            base_url=SANDBOX_URL,
            transport=httpx.ASGITransport(app=sandbox.app),
        ),
    )
    with pytest.raises(AuthenticationError) as raised:
        async with running(app):
            pass
    assert SECRET not in str(raised.value)


@pytest.mark.anyio
async def test_lifespan_closes_cleanly() -> None:
    sandbox = Sandbox(ttl=TTL)
    app = make_app(sandbox)
    tasks_before = len(anyio.get_running_tasks())
    async with running(app) as client:
        assert len(anyio.get_running_tasks()) > tasks_before  # the poll loop
        reconciler = app.state.reconciler
        assert "running" in repr(reconciler)
        created = await create(client)
        sandbox.pay(created["total"])
        await eventually(client, created["invoice_id"], "paid")
    assert len(anyio.get_running_tasks()) == tasks_before
    assert "stopped" in repr(reconciler)

    fetches = sandbox.stats.feed_fetches
    await anyio.sleep(3 * FAST.interval)
    assert sandbox.stats.feed_fetches == fetches  # nothing polls any more
    with pytest.raises(RuntimeError, match="closed"):
        await app.state.gateway.get_balance()
    with pytest.raises(RuntimeError, match="closed"):
        await app.state.feed.fetch()


@pytest.mark.anyio
async def test_sandbox_demo_app() -> None:
    """The ``uvicorn --factory`` demo app, paid through its own pay route."""
    app = fastapi_app.create_sandbox_app(ttl=TTL)
    async with running(app) as client:
        created = await create(client, 25_000)
        paying = await client.post(f"/sandbox/pay/{created['invoice_id']}")
        assert paying.status_code == 204
        assert (await client.post("/sandbox/pay/no-such-invoice")).status_code == 404
        await eventually(client, created["invoice_id"], "paid")


@pytest.mark.anyio
async def test_module_app_reads_the_environment_at_startup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QRISPAY_DB", str(tmp_path / "qrispay.db"))
    # Importing needs no variable: the module-level app reads them at start-up.
    module = load_example("fastapi_app", "qrispay_example_fastapi_app_env")
    with pytest.raises(RuntimeError, match="QRISPAY_API_KEY"):
        async with running(module.app):
            pass

    sandbox = Sandbox(ttl=TTL, api_key=SECRET)
    with sandbox.serve() as url:
        for name, value in sandbox_env(sandbox, url).items():
            monkeypatch.setenv(name, value)
        async with running(module.app) as client:
            assert sandbox.stats.feed_fetches == 1  # the first poll, at start-up
            created = await create(client)
            assert sandbox.invoice_ids() == [created["invoice_id"]]
            assert repr(module.app.state.gateway).count(SECRET) == 0


# -- the task-group example -------------------------------------------------------


@pytest.mark.anyio
async def test_task_group_example_paid(capsys: pytest.CaptureFixture[str]) -> None:
    sandbox = Sandbox(ttl=TTL)
    shown: list[Invoice] = []

    def present(invoice: Invoice) -> None:
        shown.append(invoice)
        sandbox.pay(invoice.total)

    tasks_before = len(anyio.get_running_tasks())
    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        with anyio.fail_after(DEADLINE):
            paid = await task_group.main(gateway, feed, amount=15_000, policy=FAST, present=present)
    assert paid is not None
    assert [paid.invoice.invoice_id] == [i.invoice_id for i in shown]
    assert paid.invoice.amount == 15_000
    assert len(anyio.get_running_tasks()) == tasks_before  # the group was cancelled
    assert "paid: Rp 15.001" in capsys.readouterr().out


@pytest.mark.anyio
async def test_task_group_example_expired() -> None:
    clock = ManualClock()
    sandbox = Sandbox(ttl=TTL, clock=clock)

    def present(invoice: Invoice) -> None:
        task_group.show(invoice)
        clock.advance(timedelta(minutes=18))  # nobody pays; time passes

    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        with anyio.fail_after(DEADLINE):
            paid = await task_group.main(gateway, feed, policy=FAST, clock=clock, present=present)
    assert paid is None
    assert [sandbox.invoice(i)["status"] for i in sandbox.invoice_ids()] == ["expired"]


# -- the durable events feed and committed statuses -------------------------------


async def events_page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/events", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.anyio
async def test_events_feed_resumes_after_an_id_without_repeating(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox = Sandbox(ttl=TTL, api_key=SECRET)
    async with running(make_app(sandbox)) as client:
        assert (await events_page(client))["events"] == []
        first = await create(client)
        sandbox.pay(first["total"])
        await eventually(client, first["invoice_id"], "paid")
        page = await events_page(client, wait=DEADLINE)
        assert [e["id"] for e in page["events"]] == [f"paid:{first['invoice_id']}"]
        paid = page["events"][0]
        assert paid["type"] == "invoice.paid"
        assert paid["invoice_id"] == first["invoice_id"]
        assert paid["amount"] == first["total"]
        assert paid["committed_at"].endswith("+07:00")
        assert paid["row_date"].endswith("+07:00")
        assert paid["needs_person"] is False
        assert page["next_after"] == paid["id"]
        assert page["has_more"] is False

        # Nothing new: an empty page that says where to resume, at once.
        again = await events_page(client, after=page["next_after"])
        assert again == {"events": [], "has_more": False, "next_after": paid["id"]}

        # A wait ends with the next event: a wrong amount, for a person.
        sandbox.pay(77_777)
        with anyio.fail_after(DEADLINE):
            later = await events_page(client, after=paid["id"], wait=DEADLINE)
        assert [e["type"] for e in later["events"]] == ["payment.unmatched"]
        assert later["events"][0]["amount"] == 77_777
        assert later["events"][0]["needs_person"] is True

        # limit pages through them, each once.
        one = await events_page(client, limit=1)
        assert one["has_more"] is True
        rest = await events_page(client, after=one["next_after"], limit=1)
        assert [e["id"] for e in one["events"] + rest["events"]] == [
            paid["id"],
            later["events"][0]["id"],
        ]
        texts = [one, rest, page, later]
    for text in [*map(str, texts), caplog.text]:
        for form in SECRET_FORMS | {sandbox.auth, sandbox.token}:
            assert form not in text


@pytest.mark.anyio
async def test_events_feed_refuses_unknown_or_invalid_after_and_long_waits() -> None:
    sandbox = Sandbox(ttl=TTL)
    async with running(make_app(sandbox)) as client:
        unknown = await client.get("/events", params={"after": "paid:no-such-invoice"})
        assert unknown.status_code == 404
        assert "no stored event" in unknown.json()["detail"]
        for params in ({"after": "x" * 257}, {"limit": 0}, {"limit": 501}, {"wait": 11}):
            assert (await client.get("/events", params=params)).status_code == 422, params


@pytest.mark.anyio
async def test_status_says_paid_only_once_the_payment_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The poll's commit is held: the engine already says paid, the store does not.
    gate = anyio.Event()
    held = anyio.Event()
    real_store_for = fastapi_app.store_for

    def gated_store(path: Path) -> Any:
        store = real_store_for(path)
        commit = store.commit

        async def held_commit(merchant: str, changes: Any) -> Any:
            if any(event_id.startswith("paid:") for event_id, _, _ in changes.events):
                held.set()
                await gate.wait()
            return await commit(merchant, changes)

        store.commit = held_commit  # type: ignore[method-assign]
        return store

    monkeypatch.setattr(fastapi_app, "store_for", gated_store)
    sandbox = Sandbox(ttl=TTL)
    app = make_app(sandbox)
    async with running(app) as client:
        created = await create(client)
        sandbox.pay(created["total"])
        with anyio.fail_after(DEADLINE):
            await held.wait()
        invoice_id = created["invoice_id"]
        assert app.state.reconciler.engine.state_of(invoice_id) is InvoiceStatus.PAID
        response = await client.get(f"/invoices/{invoice_id}")
        assert response.json()["status"] == "pending"
        gate.set()
        await eventually(client, invoice_id, "paid")
