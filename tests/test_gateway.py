"""The gateway client against the documented example payloads (respx)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import attrs
import httpx
import pytest
import respx

from qrispay import (
    JAKARTA,
    Balance,
    CancelResult,
    GatewayClient,
    GatewayEndpoints,
    Invoice,
    InvoiceStatus,
    Withdrawal,
    WithdrawalStatus,
)

pytestmark = pytest.mark.anyio

BASE = "https://gw.test"
KEY = "test-key"

CREATED = {
    "success": True,
    "invoice_id": "64c8d9e",
    "amount": 10000,
    "fee": 123,
    "total": 10123,
    "qris_image": "https://img/qr.png",
    "expired_at": "2025-01-01 12:00:00",
}
STATUS = {
    "invoice_id": "64c8d9e",
    "amount": 10000,
    "fee": 123,
    "total": 10123,
    "status": "pending",
    "qris_image": "https://img/qr.png",
    "expired_at": "2025-01-01 12:00:00",
    "created_at": "2025-01-01 11:30:00",
}
WITHDRAW_CREATED = {
    "success": True,
    "message": "Permintaan penarikan berhasil diajukan",
    "withdraw_id": "65a1b2c3d4e5f6",
    "amount": 100000,
    "fee": 1000,
    "total_deduct": 101000,
    "new_balance": 899000,
    "status": "pending",
    "created_at": "2025-01-15T10:30:00.000Z",
}
WITHDRAW_ROW = {
    "withdraw_id": "65a1b2c3",
    "amount": 100000,
    "fee": 1000,
    "total_deduct": 101000,
    "status": "success",
    "method": "dana",
    "account_number": "081234567890",
    "account_name": "John Doe",
    "admin_note": None,
    "created_at": "2025-01-15T10:30:00.000Z",
    "processed_at": "2025-01-15T14:20:00.000Z",
}


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


async def test_get_balance(api: respx.MockRouter) -> None:
    route = api.get("/api/v1/balance").respond(json={"balance": 100000})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        assert await gw.get_balance() == Balance(100000)
    assert route.calls.last.request.url.params["apikey"] == KEY


async def test_create_invoice_reads_the_documented_answer(api: respx.MockRouter) -> None:
    route = api.get("/api/v1/invoice/create").respond(json=CREATED)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        invoice = await gw.create_invoice(10000)
    assert route.calls.last.request.url.params["amount"] == "10000"
    assert invoice == Invoice(
        invoice_id="64c8d9e",
        amount=10000,
        fee=123,
        total=10123,
        status=InvoiceStatus.PENDING,
        qris_image="https://img/qr.png",
        expired_at=datetime(2025, 1, 1, 12, 0, tzinfo=JAKARTA),
        created_at=None,
    )
    # Zone-less gateway times are WIB: noon in Jakarta is 05:00 UTC.
    assert invoice.expired_at == datetime(2025, 1, 1, 5, 0, tzinfo=timezone.utc)


async def test_get_invoice_status(api: respx.MockRouter) -> None:
    route = api.get("/api/v1/invoice/status").respond(json={**STATUS, "status": "paid"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        invoice = await gw.get_invoice("64c8d9e")
    assert route.calls.last.request.url.params["invoice_id"] == "64c8d9e"
    assert invoice.status is InvoiceStatus.PAID
    assert invoice.created_at == datetime(2025, 1, 1, 11, 30, tzinfo=JAKARTA)
    assert invoice.created_at.utcoffset() == timedelta(hours=7)


async def test_unknown_status_is_kept_as_text(api: respx.MockRouter) -> None:
    api.get("/api/v1/invoice/status").respond(json={**STATUS, "status": "refunded"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        invoice = await gw.get_invoice("64c8d9e")
    assert invoice.status == "refunded"
    assert not isinstance(invoice.status, InvoiceStatus)


async def test_unknown_fields_are_ignored(api: respx.MockRouter) -> None:
    api.get("/api/v1/invoice/status").respond(json={**STATUS, "new_field": {"x": 1}})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        invoice = await gw.get_invoice("64c8d9e")
    assert invoice.total == 10123


async def test_cancel_invoice(api: respx.MockRouter) -> None:
    route = api.post("/api/v1/invoice/cancel").respond(
        json={
            "success": True,
            "invoice_id": "64c8d9e",
            "status": "expired",
            "message": "Invoice berhasil dibatalkan",
        }
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        result = await gw.cancel_invoice("64c8d9e")
    assert result == CancelResult("64c8d9e", InvoiceStatus.EXPIRED, "Invoice berhasil dibatalkan")
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.params["invoice_id"] == "64c8d9e"


async def test_create_withdrawal_posts_json(api: respx.MockRouter) -> None:
    route = api.post("/api/v1/withdraw").respond(json=WITHDRAW_CREATED)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        withdrawal = await gw.create_withdrawal(100000, "081234567890", "John Doe")
    sent = json.loads(route.calls.last.request.content)
    assert sent == {"amount": 100000, "accountNumber": "081234567890", "accountName": "John Doe"}
    assert withdrawal.withdraw_id == "65a1b2c3d4e5f6"
    assert withdrawal.total_deduct == 101000
    assert withdrawal.new_balance == 899000
    assert withdrawal.status is WithdrawalStatus.PENDING
    assert withdrawal.created_at == datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
    assert withdrawal.method is None


async def test_get_withdrawal(api: respx.MockRouter) -> None:
    route = api.get("/api/v1/withdraw/status").respond(json={"success": True, **WITHDRAW_ROW})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        withdrawal = await gw.get_withdrawal("65a1b2c3")
    assert route.calls.last.request.url.params["withdraw_id"] == "65a1b2c3"
    assert withdrawal == Withdrawal(
        withdraw_id="65a1b2c3",
        amount=100000,
        fee=1000,
        total_deduct=101000,
        status=WithdrawalStatus.SUCCESS,
        method="dana",
        account_number="081234567890",
        account_name="John Doe",
        admin_note=None,
        created_at=datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc),
        processed_at=datetime(2025, 1, 15, 14, 20, tzinfo=timezone.utc),
        new_balance=None,
    )


async def test_list_withdrawals_with_status_filter(api: respx.MockRouter) -> None:
    route = api.get("/api/v1/withdraw/history").respond(
        json={
            "success": True,
            "data": [WITHDRAW_ROW],
            "pagination": {"page": 1, "limit": 10, "total": 5, "total_pages": 1},
        }
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        page = await gw.list_withdrawals(status=WithdrawalStatus.SUCCESS)
    params = route.calls.last.request.url.params
    assert (params["page"], params["limit"], params["status"]) == ("1", "10", "success")
    assert (page.page, page.limit, page.total, page.total_pages) == (1, 10, 5, 1)
    assert [w.withdraw_id for w in page.items] == ["65a1b2c3"]


async def test_iter_withdrawals_walks_every_page_once(api: respx.MockRouter) -> None:
    def row(n: int) -> dict[str, object]:
        return {**WITHDRAW_ROW, "withdraw_id": f"w{n}"}

    pages = {
        "1": [row(1), row(2)],
        # w2 appears again: a new withdrawal pushed it to the next page.
        "2": [row(2), row(3)],
        "3": [row(4)],
    }

    def answer(request: httpx.Request) -> httpx.Response:
        page = request.url.params["page"]
        assert request.url.params["limit"] == "2"
        return httpx.Response(
            200,
            json={
                "data": pages[page],
                "pagination": {"page": int(page), "limit": 2, "total": 5, "total_pages": 3},
            },
        )

    route = api.get("/api/v1/withdraw/history").mock(side_effect=answer)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        ids = [w.withdraw_id async for w in gw.iter_withdrawals(limit=2)]
    assert ids == ["w1", "w2", "w3", "w4"]
    assert route.call_count == 3


async def test_endpoints_can_be_overridden(api: respx.MockRouter) -> None:
    route = api.get("/v2/saldo").respond(json={"balance": "Rp 5.000"})
    endpoints = GatewayEndpoints(balance="/v2/saldo")
    async with GatewayClient(KEY, base_url=BASE, endpoints=endpoints) as gw:
        assert (await gw.get_balance()).balance == 5000
    assert route.called
    assert endpoints.cancel_invoice == "/api/v1/invoice/cancel"


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("create_invoice", (0,)),
        ("create_invoice", (-5,)),
        ("create_invoice", (10.0,)),
        ("create_invoice", (True,)),
        ("create_invoice", ("10000",)),
        ("get_invoice", ("",)),
        ("get_invoice", ("   ",)),
        ("get_invoice", (None,)),
        ("cancel_invoice", ("",)),
        ("get_withdrawal", ("",)),
        ("create_withdrawal", (50000, "12345", "John")),
        ("create_withdrawal", (50000, "0812345678901234", "John")),
        ("create_withdrawal", (50000, "0812-3456-789", "John")),
        ("create_withdrawal", (50000, "+6281234567890", "John")),
        ("create_withdrawal", (50000, "0712345678", "John")),
        ("create_withdrawal", (50000, "081234567890", "")),
        ("create_withdrawal", (50000, "081234567890", "  ")),
        ("create_withdrawal", (0, "081234567890", "John")),
        ("create_withdrawal", (50000, 81234567890, "John")),
    ],
)
async def test_bad_arguments_raise_before_any_request(
    api: respx.MockRouter, call: str, args: tuple[object, ...]
) -> None:
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            await getattr(gw, call)(*args)
    assert len(api.calls) == 0


@pytest.mark.parametrize("number", ["0812345678", "628123456789", "081234567890123"])
async def test_dana_numbers_accepted(api: respx.MockRouter, number: str) -> None:
    api.post("/api/v1/withdraw").respond(json=WITHDRAW_CREATED)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        await gw.create_withdrawal(100000, number, "John Doe")
    assert len(api.calls) == 1


async def test_list_withdrawals_validates_paging(api: respx.MockRouter) -> None:
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(ValueError, match="page"):
            await gw.list_withdrawals(page=0)
        with pytest.raises(TypeError, match="limit"):
            await gw.list_withdrawals(limit="10")  # type: ignore[arg-type]
    assert len(api.calls) == 0


def test_constructor_refuses_missing_key_and_bad_url() -> None:
    with pytest.raises(ValueError, match="api_key"):
        GatewayClient("", base_url=BASE)
    with pytest.raises(ValueError, match="base_url"):
        GatewayClient(KEY, base_url="gw.test")


def test_endpoint_defaults_are_the_wire_table() -> None:
    from qrispay._wire import GATEWAY_PATHS

    defaults = GatewayEndpoints()
    assert attrs.asdict(defaults) == {name: path for name, (_, path) in GATEWAY_PATHS.items()}
    assert repr(defaults).startswith("GatewayEndpoints(balance='/api/v1/balance', ")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        defaults.balance = "/x"  # type: ignore[misc]
