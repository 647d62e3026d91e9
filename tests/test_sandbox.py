"""The sandbox: both APIs' shapes and rules, the feed's cache, quota and window,
faults, the payer, determinism, and serving on a real loopback socket."""

from __future__ import annotations

import importlib
import itertools
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import pytest

from qrispay import (
    InvoiceNotCancellableError,
    InvoiceStatus,
    MutationType,
    WithdrawalStatus,
)
from qrispay._convert import mutation_from_row, parse_datetime
from qrispay.sandbox import (
    Faults,
    LoopClock,
    ManualClock,
    Sandbox,
    SandboxRejection,
)

BASE = "http://sandbox.local"
START = datetime(2025, 1, 1, 5, 0, 0, tzinfo=timezone.utc)  # 12:00:00 WIB
WIB_FORMAT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
ISO_Z_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ROW_KEYS = [
    "date",
    "amount",
    "type",
    "qris",
    "brand_name",
    "issuer_reff",
    "buyer_reff",
    "balance",
]
WITHDRAWAL_KEYS = {
    "withdraw_id",
    "amount",
    "fee",
    "total_deduct",
    "status",
    "method",
    "account_number",
    "account_name",
    "admin_note",
    "created_at",
    "processed_at",
}
ACCOUNT = {"accountNumber": "081234567890", "accountName": "John Doe"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def sandbox(clock: ManualClock) -> Sandbox:
    return Sandbox(clock=clock, seed=7, gateway_balance=1_000_000)


@asynccontextmanager
async def connect(sandbox: Sandbox) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=sandbox.app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield Api(client, sandbox)


class Api:
    """Raw HTTP to the sandbox, credentials filled in."""

    def __init__(self, client: httpx.AsyncClient, sandbox: Sandbox) -> None:
        self.client = client
        self.sandbox = sandbox

    async def gw(
        self, method: str, path: str, *, json_body: Any = None, **params: Any
    ) -> httpx.Response:
        params.setdefault("apikey", self.sandbox.api_key)
        params = {k: v for k, v in params.items() if v is not None}
        return await self.client.request(method, path, params=params, json=json_body)

    async def create(self, amount: int) -> dict[str, Any]:
        response = await self.gw("GET", "/api/v1/invoice/create", amount=amount)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def status(self, invoice_id: str) -> httpx.Response:
        return await self.gw("GET", "/api/v1/invoice/status", invoice_id=invoice_id)

    async def cancel(self, invoice_id: str) -> httpx.Response:
        return await self.gw("POST", "/api/v1/invoice/cancel", invoice_id=invoice_id)

    async def withdraw(self, amount: Any, **account: Any) -> httpx.Response:
        body = {"amount": amount, **ACCOUNT, **account}
        return await self.gw("POST", "/api/v1/withdraw", json_body=body)

    async def feed(self, **params: Any) -> httpx.Response:
        query = {
            "auth": self.sandbox.auth,
            "merchant": self.sandbox.merchant,
            "token": self.sandbox.token,
            **params,
        }
        return await self.client.get("/check-payment", params={k: v for k, v in query.items() if v})


# -- packaging ------------------------------------------------------------------


def test_import_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "qrispay.sandbox" or name.startswith("qrispay.sandbox."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'qrispay[sandbox]'")):
        importlib.import_module("qrispay.sandbox")


def test_sandbox_does_not_import_httpx() -> None:
    import qrispay.sandbox as package

    for module in (
        "__init__",
        "_state",
        "_app",
        "_server",
        "_sandbox",
        "_clock",
        "_errors",
        "_faults",
        "_feed",
        "_gateway",
        "_settings",
        "_shared",
        "_values",
    ):
        path = package.__path__[0] + f"/{module}.py"
        with open(path, encoding="utf-8") as source:
            assert not re.search(r"^\s*(import|from)\s+httpx", source.read(), re.M), module


# -- gateway: balance and credentials -----------------------------------------


@pytest.mark.anyio
async def test_balance_shape(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        response = await api.gw("GET", "/api/v1/balance")
    assert response.status_code == 200
    assert response.json() == {"balance": 1_000_000}


@pytest.mark.anyio
@pytest.mark.parametrize("apikey", ["", "wrong-key"])
async def test_gateway_credentials(sandbox: Sandbox, apikey: str) -> None:
    async with connect(sandbox) as api:
        for method, path in [
            ("GET", "/api/v1/balance"),
            ("GET", "/api/v1/invoice/create?amount=1000"),
            ("POST", "/api/v1/invoice/cancel?invoice_id=x"),
            ("GET", "/api/v1/withdraw/history"),
        ]:
            response = await api.gw(method, path, apikey=apikey or None)
            assert response.status_code == 401
            assert set(response.json()) == {"error"}
    assert sandbox.invoice_ids() == []


@pytest.mark.anyio
async def test_unknown_paths(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        gateway = await api.gw("GET", "/api/v1/nothing")
        feed = await api.client.get("/nothing")
        wrong_method = await api.gw("GET", "/api/v1/withdraw")
        feed_post = await api.client.post("/check-payment")
    assert gateway.status_code == 404
    assert set(gateway.json()) == {"error"}
    assert feed.status_code == 404
    assert feed.json() == {"status": "false", "message": "API endpoint not found"}
    assert wrong_method.status_code == 405
    assert set(wrong_method.json()) == {"error"}
    assert feed_post.status_code == 404
    assert sandbox.stats.requests["not_found"] == 4


# -- gateway: invoices ----------------------------------------------------------


@pytest.mark.anyio
async def test_create_and_status_shapes(sandbox: Sandbox, clock: ManualClock) -> None:
    clock.advance(0.75)  # sub-second clocks still give whole-second invoice times
    async with connect(sandbox) as api:
        created = await api.create(10_000)
        response = await api.status(created["invoice_id"])
    assert list(created) == [
        "success",
        "invoice_id",
        "amount",
        "fee",
        "total",
        "qris_image",
        "expired_at",
    ]
    assert created["success"] is True
    assert re.fullmatch(r"[0-9a-f]{24}", created["invoice_id"])
    assert (created["amount"], created["fee"], created["total"]) == (10_000, 1, 10_001)
    assert created["qris_image"].startswith("https://")
    assert created["expired_at"] == "2025-01-01 12:15:00"
    status = response.json()
    assert list(status) == [
        "invoice_id",
        "amount",
        "fee",
        "total",
        "status",
        "qris_image",
        "expired_at",
        "created_at",
    ]
    assert status["status"] == "pending"
    assert status["created_at"] == "2025-01-01 12:00:00"
    assert {k: status[k] for k in created if k != "success"} == {
        k: v for k, v in created.items() if k != "success"
    }


@pytest.mark.anyio
async def test_fee_is_smallest_code_unique_among_pending(
    sandbox: Sandbox, clock: ManualClock
) -> None:
    async with connect(sandbox) as api:
        first, second, third = [await api.create(10_000) for _ in range(3)]
        assert [i["fee"] for i in (first, second, third)] == [1, 2, 3]
        # 10_002 and 10_003 are taken, so 10_001 gets code 3.
        assert (await api.create(10_001))["total"] == 10_004
        # A just-closed invoice's total is handed out again: deliberate.
        assert (await api.cancel(first["invoice_id"])).status_code == 200
        assert (await api.create(10_000))["total"] == first["total"]
        # Paid invoices free their total too.
        sandbox.pay(second["total"])
        assert (await api.create(10_000))["total"] == second["total"]
        # And expired ones.
        clock.advance(timedelta(minutes=15, seconds=1))
        assert (await api.create(10_000))["fee"] == 1
    assert len(sandbox.pending_totals()) == 1


@pytest.mark.anyio
async def test_unique_codes_run_out(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, max_code=2)
    async with connect(sandbox) as api:
        await api.create(5_000)
        await api.create(5_000)
        response = await api.gw("GET", "/api/v1/invoice/create", amount=5_000)
    assert response.status_code >= 400
    assert set(response.json()) == {"error"}


@pytest.mark.anyio
@pytest.mark.parametrize("amount", [None, "", "abc", "0", "-5", "10.000", "1e3", "10000.0"])
async def test_create_refuses_bad_amounts(sandbox: Sandbox, amount: str | None) -> None:
    async with connect(sandbox) as api:
        response = await api.gw("GET", "/api/v1/invoice/create", amount=amount)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert sandbox.invoice_ids() == []


@pytest.mark.anyio
async def test_min_amount(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, min_amount=1_000)
    async with connect(sandbox) as api:
        assert (await api.gw("GET", "/api/v1/invoice/create", amount=999)).status_code == 400
        assert (await api.create(1_000))["total"] == 1_001


@pytest.mark.anyio
async def test_status_unknown_and_missing(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        unknown = await api.status("nope")
        missing = await api.gw("GET", "/api/v1/invoice/status")
    assert unknown.status_code == 404
    assert set(unknown.json()) == {"error"}
    assert missing.status_code == 400


@pytest.mark.anyio
async def test_invoice_expires_lazily(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, invoice_ttl=timedelta(minutes=5))
    async with connect(sandbox) as api:
        invoice = await api.create(10_000)
        assert invoice["expired_at"] == "2025-01-01 12:05:00"
        clock.advance(300)  # exactly expired_at: not past it yet
        assert (await api.status(invoice["invoice_id"])).json()["status"] == "pending"
        clock.advance(1)
        assert (await api.status(invoice["invoice_id"])).json()["status"] == "expired"
        # Paying the total now makes a row, but pays nothing.
        row = sandbox.pay(invoice["total"])
        assert row.qris == "static"
        assert (await api.status(invoice["invoice_id"])).json()["status"] == "expired"
    assert sandbox.gateway_balance == 0


@pytest.mark.anyio
async def test_cancel_rules(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        pending = await api.create(10_000)
        response = await api.cancel(pending["invoice_id"])
        assert response.status_code == 200
        assert response.json() == {
            "success": True,
            "invoice_id": pending["invoice_id"],
            "status": "expired",
            "message": "Invoice berhasil dibatalkan",
        }
        assert (await api.status(pending["invoice_id"])).json()["status"] == "expired"
        again = await api.cancel(pending["invoice_id"])
        assert again.status_code == 400
        assert again.json() == {"error": "Invoice tidak bisa dibatalkan, status saat ini: expired"}

        paid = await api.create(20_000)
        sandbox.pay(paid["total"])
        refused = await api.cancel(paid["invoice_id"])
        assert refused.status_code == 400
        assert refused.json() == {"error": "Invoice tidak bisa dibatalkan, status saat ini: paid"}

        unknown = await api.cancel("does-not-exist")
        assert unknown.status_code == 404
        assert set(unknown.json()) == {"error"}

        by_body = await api.create(30_000)
        response = await api.gw(
            "POST", "/api/v1/invoice/cancel", json_body={"invoice_id": by_body["invoice_id"]}
        )
        assert response.status_code == 200
        assert response.json()["invoice_id"] == by_body["invoice_id"]
        assert (await api.gw("POST", "/api/v1/invoice/cancel")).status_code == 400


# -- the payer and the feed's rows ----------------------------------------------


@pytest.mark.anyio
async def test_pay_marks_paid_and_chains_balances(sandbox: Sandbox, clock: ManualClock) -> None:
    async with connect(sandbox) as api:
        invoice = await api.create(10_000)
        clock.advance(65)
        row = sandbox.pay(invoice["total"], brand="OVO")
        assert (await api.status(invoice["invoice_id"])).json()["status"] == "paid"
        balance = (await api.gw("GET", "/api/v1/balance")).json()["balance"]
    assert balance == 1_000_000 + 10_000  # the invoice's amount
    assert row.type is MutationType.CREDIT
    assert row.amount == invoice["total"]
    assert row.balance == invoice["total"]
    assert (row.brand_name, row.qris) == ("OVO", "dynamic")
    assert row.date == parse_datetime("2025-01-01 12:01:05")

    wrong = sandbox.pay(12_345)  # no invoice has this total: still a row
    debit = sandbox.debit(5_000)
    third = sandbox.pay(7)
    assert wrong.qris == "static"
    assert debit.type is MutationType.DEBIT
    rows = [mutation_from_row(r) for r in reversed(sandbox.rows())]  # oldest first
    for before, after in itertools.pairwise(rows):
        sign = 1 if after.is_credit else -1
        assert before.balance is not None
        assert after.balance == before.balance + sign * after.amount
    assert third.balance == sandbox.merchant_balance == 10_001 + 12_345 - 5_000 + 7
    assert len({r.issuer_reff for r in rows}) == len(rows)


def test_pay_and_debit_refuse_nonsense(sandbox: Sandbox) -> None:
    for bad in (0, -1, 1.5, True, "100"):
        with pytest.raises(ValueError, match="positive int"):
            sandbox.pay(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        sandbox.debit(1)


@pytest.mark.anyio
async def test_feed_shape_and_credentials(sandbox: Sandbox) -> None:
    sandbox.pay(10_000)
    sandbox.pay(25_000)
    async with connect(sandbox) as api:
        ok = await api.feed()
        missing = [
            await api.feed(auth=""),
            await api.feed(merchant=""),
            await api.feed(token=""),
        ]
        wrong = [
            await api.feed(auth="nope"),
            await api.feed(token="nope"),
            await api.feed(merchant="OK999999"),
        ]
    body = ok.json()
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/json")
    assert list(body) == ["status", "data", "creator"]
    assert body["status"] == "success"
    assert [list(row) for row in body["data"]] == [ROW_KEYS, ROW_KEYS]
    assert [row["amount"] for row in body["data"]] == [25_000, 10_000]  # newest first
    assert [row["balance"] for row in body["data"]] == [35_000, 10_000]
    for row in body["data"]:
        assert WIB_FORMAT.fullmatch(row["date"])
        assert row["type"] == "CR"
        assert isinstance(row["amount"], int)
    for response in missing:
        assert response.status_code == 400
        assert response.json() == {
            "status": "false",
            "message": "auth, merchant and token parameters are required",
        }
    for response in wrong:
        assert response.status_code == 401
        assert response.json() == {"status": "false", "message": "Invalid auth or token"}


@pytest.mark.anyio
async def test_feed_cache_reused_within_ttl_then_refreshed(
    sandbox: Sandbox, clock: ManualClock
) -> None:
    sandbox.pay(10_000)
    async with connect(sandbox) as api:
        first = await api.feed()
        sandbox.pay(20_000)
        clock.advance(29.999)
        cached = await api.feed()
        assert cached.content == first.content  # unchanged, byte for byte
        clock.advance(0.001)  # ttl seconds since it was built
        fresh = await api.feed()
        assert [r["amount"] for r in fresh.json()["data"]] == [20_000, 10_000]
        sandbox.pay(30_000)
        clock.advance(10)
        assert (await api.feed()).content == fresh.content  # the new build's ttl counts
    assert sandbox.stats.feed_fetches == 4
    assert sandbox.stats.feed_builds == 2
    sandbox.invalidate_cache()
    async with connect(sandbox) as api:
        assert len((await api.feed()).json()["data"]) == 3


@pytest.mark.anyio
async def test_feed_ttl_is_configurable(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, ttl=5)
    async with connect(sandbox) as api:
        await api.feed()
        sandbox.pay(1_000)
        clock.advance(5)
        assert len((await api.feed()).json()["data"]) == 1


@pytest.mark.anyio
async def test_feed_window(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, window=5)
    for amount in range(1, 9):
        sandbox.pay(amount * 1_000)
    async with connect(sandbox) as api:
        data = (await api.feed()).json()["data"]
    assert [row["amount"] for row in data] == [8_000, 7_000, 6_000, 5_000, 4_000]
    assert len(sandbox.rows()) == 8


@pytest.mark.anyio
async def test_feed_quota(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, quota=2, quota_period=60)
    async with connect(sandbox) as api:
        assert (await api.feed()).status_code == 200
        clock.advance(20)
        assert (await api.feed()).status_code == 200  # a cache hit spends quota too
        clock.advance(5)
        limited = await api.feed()
        assert limited.status_code == 429
        assert limited.json() == {"status": "false", "message": "Hit limit"}
        assert limited.headers["Retry-After"] == "35"
        clock.advance(35)
        assert (await api.feed()).status_code == 200
        # Credential errors come before the quota and spend none.
        assert (await api.feed(token="nope")).status_code == 401
    assert sandbox.stats.rate_limited == 1
    assert sandbox.stats.statuses[429] == 1


@pytest.mark.anyio
async def test_quirky_rows_are_served_verbatim(sandbox: Sandbox) -> None:
    quirky = {
        "date": "09/07/2025 00:00",
        "amount": "Rp 10.000",
        "type": "payment",
        "qris": "static",
        "brand_name": "DANA",
        "issuer_reff": "",
        "buyer_reff": "NOBU / DANA",
        "balance": "50.000",
    }
    sandbox.add_row(quirky)
    sandbox.add_row({"date": "2025-07-09 00:00:01", "amount": 5}, hidden=True)
    async with connect(sandbox) as api:
        data = (await api.feed()).json()["data"]
    assert data == [quirky]
    assert sandbox.merchant_balance == 0
    assert mutation_from_row(data[0]).amount == 10_000
    with pytest.raises(TypeError):
        sandbox.add_row({"date": datetime.now(timezone.utc)})


# -- gateway: withdrawals ---------------------------------------------------------


@pytest.mark.anyio
async def test_withdrawal_create_status_approve(sandbox: Sandbox, clock: ManualClock) -> None:
    async with connect(sandbox) as api:
        created = await api.withdraw(100_000)
        assert created.status_code == 200
        body = created.json()
        assert list(body) == [
            "success",
            "message",
            "withdraw_id",
            "amount",
            "fee",
            "total_deduct",
            "new_balance",
            "status",
            "created_at",
        ]
        assert (body["amount"], body["fee"], body["total_deduct"]) == (100_000, 1_000, 101_000)
        assert body["new_balance"] == 899_000 == sandbox.gateway_balance
        assert body["status"] == "pending"
        assert body["created_at"] == "2025-01-01T05:00:00.000Z"
        withdraw_id = body["withdraw_id"]

        status = (await api.gw("GET", "/api/v1/withdraw/status", withdraw_id=withdraw_id)).json()
        assert set(status) == WITHDRAWAL_KEYS | {"success"}
        assert (status["status"], status["processed_at"], status["method"]) == (
            "pending",
            None,
            "dana",
        )

        clock.advance(timedelta(hours=3, milliseconds=250))
        sandbox.approve_withdrawal(withdraw_id, note="ok")
        status = (await api.gw("GET", "/api/v1/withdraw/status", withdraw_id=withdraw_id)).json()
        assert status["status"] == "success"
        assert status["admin_note"] == "ok"
        assert status["processed_at"] == "2025-01-01T08:00:00.250Z"
        assert ISO_Z_FORMAT.fullmatch(status["processed_at"])
        assert sandbox.gateway_balance == 899_000

        unknown = await api.gw("GET", "/api/v1/withdraw/status", withdraw_id="nope")
        assert unknown.status_code == 404
        assert "error" in unknown.json()
    with pytest.raises(ValueError, match="already success"):
        sandbox.reject_withdrawal(withdraw_id)
    with pytest.raises(KeyError):
        sandbox.approve_withdrawal("nope")


@pytest.mark.anyio
async def test_withdrawal_reject_refunds(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        withdraw_id = (await api.withdraw(50_000)).json()["withdraw_id"]
        assert sandbox.gateway_balance == 949_000
        sandbox.reject_withdrawal(withdraw_id, note="nomor salah")
        status = (await api.gw("GET", "/api/v1/withdraw/status", withdraw_id=withdraw_id)).json()
    assert (status["status"], status["admin_note"]) == ("rejected", "nomor salah")
    assert sandbox.gateway_balance == 1_000_000


@pytest.mark.parametrize(
    ("amount", "account"),
    [
        (999_001, {}),  # 999_001 + 1_000 fee is more than the balance
        (0, {}),
        ("5000", {}),
        (1.5, {}),
        (None, {}),
        (5_000, {"accountNumber": "12345"}),
        (5_000, {"accountNumber": "0812-3456-789"}),
        (5_000, {"accountNumber": "6281234567890123"}),  # 16 digits
        (5_000, {"accountNumber": "0712345678"}),
        (5_000, {"accountName": "  "}),
    ],
)
@pytest.mark.anyio
async def test_withdrawal_refusals(
    sandbox: Sandbox, amount: object, account: dict[str, str]
) -> None:
    async with connect(sandbox) as api:
        response = await api.withdraw(amount, **account)
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert "error" in response.json()
    assert sandbox.gateway_balance == 1_000_000
    assert sandbox.withdrawal_ids() == []


@pytest.mark.anyio
async def test_withdrawal_not_json(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        response = await api.client.post(
            "/api/v1/withdraw", params={"apikey": sandbox.api_key}, content=b"amount=5"
        )
    assert response.status_code == 400


@pytest.mark.anyio
async def test_withdrawal_exact_balance(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, gateway_balance=6_000, withdrawal_fee=500)
    async with connect(sandbox) as api:
        body = (await api.withdraw(5_500)).json()
    assert (body["fee"], body["total_deduct"], body["new_balance"]) == (500, 6_000, 0)


@pytest.mark.anyio
async def test_withdrawal_history_paging_and_filter(sandbox: Sandbox, clock: ManualClock) -> None:
    async with connect(sandbox) as api:
        ids = []
        for amount in range(10_000, 80_000, 10_000):  # seven
            ids.append((await api.withdraw(amount)).json()["withdraw_id"])
            clock.advance(1)
        sandbox.approve_withdrawal(ids[1])
        sandbox.reject_withdrawal(ids[2])

        async def history(**params: Any) -> dict[str, Any]:
            response = await api.gw("GET", "/api/v1/withdraw/history", **params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        default = await history()
        assert list(default) == ["success", "data", "pagination"]
        assert default["pagination"] == {"page": 1, "limit": 10, "total": 7, "total_pages": 1}
        assert [w["withdraw_id"] for w in default["data"]] == ids[::-1]  # newest first
        assert all(set(w) == WITHDRAWAL_KEYS for w in default["data"])

        pages = [await history(page=page, limit=3) for page in (1, 2, 3, 4)]
        assert [p["pagination"]["total_pages"] for p in pages] == [3, 3, 3, 3]
        assert [[w["withdraw_id"] for w in p["data"]] for p in pages] == [
            ids[6:3:-1],
            ids[3:0:-1],
            ids[:1],
            [],
        ]

        pending = await history(status="pending")
        assert pending["pagination"]["total"] == 5
        assert {w["status"] for w in pending["data"]} == {"pending"}
        assert [w["withdraw_id"] for w in (await history(status="success"))["data"]] == [ids[1]]
        assert [w["withdraw_id"] for w in (await history(status="rejected"))["data"]] == [ids[2]]
        assert (await history(status="weird"))["pagination"]["total"] == 0

        for bad in ({"page": "0"}, {"page": "x"}, {"limit": "0"}, {"limit": "-1"}):
            response = await api.gw("GET", "/api/v1/withdraw/history", **bad)
            assert response.status_code == 400
            assert response.json()["success"] is False


# -- faults ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_error_fault_before_handling(sandbox: Sandbox) -> None:
    sandbox.faults.error_rate = 1.0
    async with connect(sandbox) as api:
        gateway = await api.gw("GET", "/api/v1/invoice/create", amount=10_000)
        feed = await api.feed()
        unauthorised = await api.gw("GET", "/api/v1/balance", apikey="nope")
    assert gateway.status_code == 500
    assert gateway.json() == {"error": "Internal server error"}
    assert feed.status_code == 500
    assert feed.json() == {"status": "false", "message": "Internal server error"}
    assert unauthorised.status_code == 401  # credentials are checked first
    assert sandbox.invoice_ids() == []  # nothing happened
    assert sandbox.stats.faults["error"] == 2


@pytest.mark.anyio
async def test_error_after_handling(sandbox: Sandbox) -> None:
    sandbox.fail_next("error_after", endpoint="create_withdrawal", status=502)
    async with connect(sandbox) as api:
        unaffected = await api.gw("GET", "/api/v1/balance")
        response = await api.withdraw(10_000)
        assert response.status_code == 502
        assert response.json() == {"error": "Internal server error"}
        # It happened all the same: the history shows it.
        history = (await api.gw("GET", "/api/v1/withdraw/history")).json()
    assert unaffected.status_code == 200
    assert history["pagination"]["total"] == 1
    assert sandbox.gateway_balance == 989_000


@pytest.mark.anyio
async def test_malformed_bodies(sandbox: Sandbox) -> None:
    sandbox.fail_next("html", endpoint="check_payment")
    sandbox.fail_next("truncated", endpoint="create_invoice")
    sandbox.pay(1_000)
    async with connect(sandbox) as api:
        html = await api.feed()
        truncated = await api.gw("GET", "/api/v1/invoice/create", amount=10_000)
        clean = await api.feed()
    assert html.status_code == 200
    assert html.headers["content-type"].startswith("text/html")
    assert html.text.lstrip().startswith("<!DOCTYPE html>")
    assert truncated.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.content)
    assert truncated.text.startswith('{"success":true')
    assert len(sandbox.invoice_ids()) == 1  # it was created
    assert clean.json()["status"] == "success"


@pytest.mark.anyio
async def test_rate_limit_fault_and_error_inside_200(sandbox: Sandbox) -> None:
    sandbox.fail_next("rate_limit", endpoint="balance", retry_after=120)
    sandbox.fail_next("error", endpoint="check_payment", status=200, times=2)
    async with connect(sandbox) as api:
        limited = await api.gw("GET", "/api/v1/balance")
        ok = await api.gw("GET", "/api/v1/balance")
        inside = [await api.feed(), await api.feed()]
        clean = await api.feed()
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "120"
    assert set(limited.json()) == {"error"}
    assert ok.status_code == 200
    for response in inside:
        assert response.status_code == 200
        assert response.json() == {"status": "false", "message": "Internal server error"}
    assert clean.json()["status"] == "success"


@pytest.mark.anyio
async def test_latency(sandbox: Sandbox) -> None:
    sandbox.faults = Faults(latency=0.05, endpoints={"balance"})
    async with connect(sandbox) as api:
        start = anyio.current_time()
        await api.feed()
        fast = anyio.current_time() - start
        await api.gw("GET", "/api/v1/balance")
        slow = anyio.current_time() - start - fast
    assert slow >= 0.05
    assert fast < 0.05


@pytest.mark.anyio
async def test_dropped_rows_are_never_shown(sandbox: Sandbox, clock: ManualClock) -> None:
    sandbox.pay(1_000)
    sandbox.faults.drop_rate = 1.0
    lost = sandbox.pay(2_000)
    sandbox.faults.drop_rate = 0.0
    sandbox.pay(4_000)
    async with connect(sandbox) as api:
        data = (await api.feed()).json()["data"]
        clock.advance(3600)
        later = (await api.feed()).json()["data"]
    assert [r["amount"] for r in data] == [4_000, 1_000] == [r["amount"] for r in later]
    assert [r["balance"] for r in data] == [7_000, 1_000]  # the chain shows the gap
    assert lost.issuer_reff not in {r["issuer_reff"] for r in data}
    assert len(sandbox.rows()) == 3
    assert len(sandbox.rows(include_hidden=False)) == 2
    assert sandbox.stats.faults["drop"] == 1


@pytest.mark.anyio
async def test_dropped_row_still_pays_the_invoice(sandbox: Sandbox) -> None:
    async with connect(sandbox) as api:
        invoice = await api.create(10_000)
        sandbox.pay(invoice["total"], hidden=True)
        assert (await api.status(invoice["invoice_id"])).json()["status"] == "paid"
        assert (await api.feed()).json()["data"] == []


@pytest.mark.anyio
async def test_random_faults_are_reproducible(clock: ManualClock) -> None:
    async def run(seed: int) -> list[int]:
        sandbox = Sandbox(clock=ManualClock(START), seed=seed)
        sandbox.faults = Faults(error_rate=0.3, malformed_rate=0.3)
        async with connect(sandbox) as api:
            return [(await api.gw("GET", "/api/v1/balance")).status_code for _ in range(40)]

    first, again, other = await run(3), await run(3), await run(4)
    assert first == again
    assert first != other
    assert 200 in first
    assert 500 in first


def test_faults_validate() -> None:
    with pytest.raises(ValueError, match="rate"):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError, match="unknown endpoint"):
        Faults(endpoints={"nope"})
    faults = Faults()
    with pytest.raises(ValueError, match="rate"):
        faults.drop_rate = -0.1
    sandbox = Sandbox()
    with pytest.raises(ValueError, match="unknown fault kind"):
        sandbox.fail_next("boom")  # type: ignore[arg-type]
    sandbox.fail_next("error")
    sandbox.clear_faults()
    assert sandbox.faults == Faults()


# -- determinism, clocks, Python-side helpers ------------------------------------------


@pytest.mark.anyio
async def test_same_seed_same_answers() -> None:
    async def run(seed: int) -> list[bytes]:
        clock = ManualClock(START)
        sandbox = Sandbox(clock=clock, seed=seed, gateway_balance=100_000)
        bodies = []
        async with connect(sandbox) as api:
            for amount in (10_000, 10_000, 25_000):
                bodies.append(
                    (await api.gw("GET", "/api/v1/invoice/create", amount=amount)).content
                )
                clock.advance(7)
            sandbox.pay(10_001)
            sandbox.pay(99)
            bodies.append((await api.withdraw(5_000)).content)
            bodies.append((await api.feed()).content)
        return bodies

    first, again, other = await run(11), await run(11), await run(12)
    assert first == again
    assert first != other


def test_python_side_helpers(sandbox: Sandbox, clock: ManualClock) -> None:
    created = sandbox.create_invoice(10_000)
    assert sandbox.invoice(created["invoice_id"])["status"] == "pending"
    assert sandbox.pending_totals() == {10_001: created["invoice_id"]}
    assert sandbox.cancel_invoice(created["invoice_id"])["status"] == "expired"
    with pytest.raises(SandboxRejection) as info:
        sandbox.invoice("nope")
    assert info.value.status == 404
    with pytest.raises(SandboxRejection) as info:
        sandbox.create_invoice(0)
    assert info.value.status == 400
    assert sandbox.now() == START
    sandbox.gateway_balance = 5
    assert sandbox.gateway_balance == 5
    assert repr(sandbox) == "Sandbox(ttl=30.0, window=20, seed=7)"
    assert (sandbox.ttl, sandbox.window, sandbox.seed, sandbox.clock) == (30.0, 20, 7, clock)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="window"):
        Sandbox(window=0)
    with pytest.raises(ValueError, match="quota"):
        Sandbox(quota=0)
    with pytest.raises(ValueError, match="gateway_balance"):
        Sandbox(gateway_balance=-1)
    with pytest.raises(ValueError, match="api_key"):
        Sandbox(api_key="")
    with pytest.raises(ValueError, match="aware"):
        Sandbox(clock=lambda: datetime(2025, 1, 1)).create_invoice(1_000)


def test_manual_clock() -> None:
    clock = ManualClock(START)
    assert clock.advance(1.5) == START + timedelta(seconds=1.5)
    assert clock.advance(timedelta(minutes=1)) == START + timedelta(seconds=61.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    clock.set(START)
    assert clock() == START
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2025, 1, 1))


@pytest.mark.anyio
async def test_loop_clock_follows_event_loop_time() -> None:
    clock = LoopClock(START)
    assert clock() == START
    await anyio.sleep(0.02)
    assert clock() - START >= timedelta(seconds=0.02)
    sandbox = Sandbox(clock=clock)
    assert sandbox.pay(1_000).date >= START


def test_virtual_time_under_trio_mock_clock() -> None:
    """LoopClock + trio's MockClock: the TTL and the latency pass in virtual time."""
    import trio
    import trio.testing

    async def main() -> float:
        sandbox = Sandbox(clock=LoopClock(START), faults=Faults(latency=5.0))
        sandbox.pay(1_000)
        async with connect(sandbox) as api:
            start = trio.current_time()
            first = await api.feed()  # built at t=0, answered at t=5
            sandbox.pay(2_000)
            await trio.sleep(20)
            assert (await api.feed()).content == first.content  # t=25: cached
            await trio.sleep(30)
            assert len((await api.feed()).json()["data"]) == 2  # t=60: rebuilt
            assert sandbox.now() == START + timedelta(seconds=65)
            return trio.current_time() - start

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert elapsed == pytest.approx(65)


def test_loop_clock_outside_a_loop_keeps_its_last_time() -> None:
    assert LoopClock(START)() == START


def test_custom_credentials(clock: ManualClock) -> None:
    sandbox = Sandbox(clock=clock, api_key="k", auth="a", merchant="OK1", token="1:t")
    assert (sandbox.api_key, sandbox.auth, sandbox.merchant, sandbox.token) == (
        "k",
        "a",
        "OK1",
        "1:t",
    )


# -- the SDK's own clients, in-process ----------------------------------------------------


@pytest.mark.anyio
async def test_sdk_clients_in_process(sandbox: Sandbox, clock: ManualClock) -> None:
    async with sandbox.gateway_client() as gw, sandbox.mutation_client() as feed:
        invoice = await gw.create_invoice(10_000)
        assert invoice.total == 10_001
        paid = sandbox.pay(invoice.total)
        clock.advance(30)
        batch = await feed.fetch()
        assert [row.key for row in batch] == [paid.key]
        assert batch[0] == paid
        assert (await gw.get_invoice(invoice.invoice_id)).status is InvoiceStatus.PAID
        with pytest.raises(InvoiceNotCancellableError):
            await gw.cancel_invoice(invoice.invoice_id)
        withdrawal = await gw.create_withdrawal(100_000, "081234567890", "John Doe")
        assert withdrawal.new_balance == 1_010_000 - 101_000
        sandbox.approve_withdrawal(withdrawal.withdraw_id)
        page = await gw.list_withdrawals(status=WithdrawalStatus.SUCCESS)
        assert [w.withdraw_id for w in page] == [withdrawal.withdraw_id]
        assert (await gw.get_balance()).balance == 909_000


# -- a real loopback socket ---------------------------------------------------------


def test_serve_on_loopback(sandbox: Sandbox) -> None:
    with sandbox.serve(port=0) as base_url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        with httpx.Client(base_url=base_url, timeout=5) as client:
            response = client.get("/api/v1/balance", params={"apikey": sandbox.api_key})
            feed = client.get("/check-payment", params={"auth": "x", "merchant": "y", "token": "z"})
            invoice = client.get(
                "/api/v1/invoice/create", params={"amount": 10_000, "apikey": sandbox.api_key}
            ).json()
            sandbox.pay(invoice["total"])  # from this thread, while the server thread serves
            status = client.get(
                "/api/v1/invoice/status",
                params={"invoice_id": invoice["invoice_id"], "apikey": sandbox.api_key},
            ).json()
    assert response.json() == {"balance": 1_000_000}
    assert feed.status_code == 401
    assert status["status"] == "paid"
    with httpx.Client(timeout=1) as client, pytest.raises(httpx.ConnectError):
        client.get(base_url + "/api/v1/balance")  # stopped


@pytest.mark.anyio
async def test_sdk_clients_over_loopback(sandbox: Sandbox) -> None:
    with sandbox.serve() as base_url:
        gateway = sandbox.gateway_client(base_url=base_url, timeout=5)
        feed = sandbox.mutation_client(base_url=base_url, timeout=5)
        async with gateway as gw, feed:
            invoice = await gw.create_invoice(5_000)
            sandbox.pay(invoice.total)
            assert [row.amount for row in await feed.fetch()] == [invoice.total]
    assert sandbox.stats.requests["create_invoice"] == 1


def test_stats_copy_and_reset(sandbox: Sandbox) -> None:
    sandbox.stats.requests["balance"] += 1
    snapshot = sandbox.stats.copy()
    sandbox.reset_stats()
    assert snapshot.requests["balance"] == 1
    assert sandbox.stats.requests["balance"] == 0
    assert sandbox.stats.feed_fetches == 0


def test_serve_refuses_non_loopback(sandbox: Sandbox) -> None:
    for host in ("0.0.0.0", "192.168.1.10", "example.com"):
        with pytest.raises(ValueError, match="loopback"), sandbox.serve(host=host):
            pass


def test_without_a_seed_no_reference_or_id_repeats_across_runs() -> None:
    # A restarted `qrispay sandbox` must not hand out a payment reference that a
    # service keeping its state already saw: it would drop the payment as seen.
    runs = []
    for _ in range(2):
        sandbox = Sandbox(seed=None, gateway_balance=10**9)
        invoice = sandbox.create_invoice(10_000)
        row = sandbox.pay(invoice["total"])
        runs.append((invoice["invoice_id"], row.issuer_reff))
    assert runs[0][0] != runs[1][0]
    assert runs[0][1] != runs[1][1]
    seeded = [Sandbox(seed=7).pay(10_000).issuer_reff for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seed still reproduces a run exactly
