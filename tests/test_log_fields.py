"""The library's log records carry structured ``extra`` fields for operators
(merchant, invoice_id, attempt, method, path, status, ...), and no attribute of
any record holds a credential."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import pytest

from qrispay import PollPolicy, Reconciler, TotalConflictError
from qrispay.sandbox import Sandbox

from .conftest import pending_invoice

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

API_KEY = "k3y+API/=&secret1"
AUTH = "a0th+FEED/=&secret2"
TOKEN = "000001:t0k3n+/=&secret3"
FAST = PollPolicy(ttl=0.2, margin=0.05, max_backoff=0.3)


def _sandbox(**kw: Any) -> Sandbox:
    return Sandbox(ttl=0.2, api_key=API_KEY, auth=AUTH, token=TOKEN, **kw)


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if message in r.getMessage()]


def _assert_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    forms = {
        form
        for secret in (API_KEY, AUTH, TOKEN)
        for form in (secret, quote(secret, safe=""), quote_plus(secret))
    }
    assert caplog.records
    for record in caplog.records:
        for name, value in vars(record).items():
            text = f"{value!r} {value}"
            for form in forms:
                assert form not in text, (record.getMessage(), name)
        assert not any(form in record.getMessage() for form in forms)


async def test_a_retry_names_the_call_without_its_query(
    caplog: pytest.LogCaptureFixture, sleeps: list[float]
) -> None:
    caplog.set_level(logging.DEBUG, logger="qrispay")
    sandbox = _sandbox()
    sandbox.fail_next("error", endpoint="balance", status=503)
    async with sandbox.gateway_client() as gateway:
        await gateway.get_balance()
    (retry,) = _records(caplog, "retrying")
    assert retry.levelno == logging.INFO
    assert retry.name == "qrispay"
    assert vars(retry)["method"] == "GET"
    assert vars(retry)["path"] == "/api/v1/balance"
    assert "?" not in vars(retry)["path"]
    assert vars(retry)["status"] == 503
    assert vars(retry)["attempt"] == 2
    _assert_no_secret(caplog)


async def test_a_poll_failure_and_a_payment_matched(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qrispay")
    sandbox = _sandbox()
    async with (
        sandbox.gateway_client() as gateway,
        sandbox.mutation_client(max_retries=0) as feed,
        Reconciler(feed, gateway=gateway, policy=FAST) as rec,
    ):
        invoice = await rec.create_invoice(10_000)
        sandbox.fail_next("error", endpoint="check_payment", status=500)
        with anyio.fail_after(5):
            while True:
                if _records(caplog, "feed fetch failed"):
                    break
                await anyio.sleep(0.02)
        sandbox.pay(invoice.total)
        with anyio.fail_after(5):
            await rec.wait_for_payment(invoice.invoice_id)
    (failed, *_) = _records(caplog, "feed fetch failed")
    assert failed.name == "qrispay.reconciler"
    assert failed.levelno == logging.WARNING
    fields = vars(failed)
    assert fields["merchant"] == sandbox.merchant
    assert fields["attempt"] == 1
    assert fields["status"] == 500
    assert fields["method"] == "GET"
    assert fields["path"] == "/check-payment"
    assert fields["next_poll_in"] > 0
    (paid,) = _records(caplog, "paid (")
    assert paid.name == "qrispay.reconciler"
    assert paid.levelno == logging.INFO
    assert vars(paid)["merchant"] == sandbox.merchant
    assert vars(paid)["invoice_id"] == invoice.invoice_id
    assert vars(paid)["event_id"] == f"paid:{invoice.invoice_id}"
    assert vars(paid)["amount"] == invoice.total
    assert vars(paid)["source"] == "mutation"
    _assert_no_secret(caplog)


async def test_a_total_conflict(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qrispay")
    sandbox = _sandbox(max_code=3)
    async with (
        sandbox.gateway_client() as gateway,
        sandbox.mutation_client() as feed,
        Reconciler(feed, gateway=gateway, policy=FAST) as rec,
    ):
        now = sandbox.now()
        for code in (1, 2, 3):
            rec.track(pending_invoice(f"elsewhere-{code}", 10_000, code, now))
        with pytest.raises(TotalConflictError):
            await rec.create_invoice(10_000)
    conflicts = _records(caplog, "taken total")
    assert [vars(r)["attempt"] for r in conflicts] == [1, 2, 3]
    for record in conflicts:
        assert record.name == "qrispay.reconciler"
        assert record.levelno == logging.INFO
        assert vars(record)["holder"].startswith("elsewhere-")
        assert vars(record)["total"] == 10_000 + int(vars(record)["holder"][-1])
        assert vars(record)["invoice_id"] in sandbox.invoice_ids()
        assert vars(record)["attempts"] == 3
        assert vars(record)["merchant"] == sandbox.merchant
    _assert_no_secret(caplog)
