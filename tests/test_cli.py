"""The ``qrispay`` command, end to end against a loopback sandbox.

Each test serves a fresh sandbox on 127.0.0.1 (``sandbox.serve(port=0)``),
points the environment at it and calls ``cli.main`` in-process: the command
runs its own event loop, so these are plain sync tests.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
import respx

from qrispay import cli
from qrispay.cli import sandbox as cli_sandbox
from qrispay.cli.output import format_rupiah, jsonable, wants_colour
from qrispay.sandbox import Sandbox

from .conftest import SECRET, sandbox_env

STATIC = (
    "00020101021126340014ID.CO.QRIS.WWW0212ID10200000015204581253033605802ID"
    "5909TOKO SARI6007JAKARTA61051011063040230"
)
ALL_VARS = (*cli.ENV_VARS, "NO_COLOR")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)


def point_at(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox, url: str) -> None:
    for name, value in sandbox_env(sandbox, url).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(ttl=0.5, gateway_balance=1_000_000)


@pytest.fixture
def served(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    with sandbox.serve(port=0) as url:
        point_at(monkeypatch, sandbox, url)
        yield sandbox


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qrispay: error: ")
    assert "Traceback" not in err
    return lines[0]


# -- the parser --------------------------------------------------------------------


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("qrispay ")
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in cli.ENV_VARS:
        assert name in out
    assert "exit codes" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == cli.EXIT_USAGE
    assert "usage: qrispay" in err
    assert out == ""


@pytest.mark.parametrize("amount", ["10.000", "10,000", "Rp10000", "-5", "0", "1e3", "ten"])
def test_amounts_are_digits_only(capsys: pytest.CaptureFixture[str], amount: str) -> None:
    code, _, err = run(capsys, "invoice", "create", amount)
    assert code == cli.EXIT_USAGE
    assert "amount" in err
    assert "Traceback" not in err


def test_missing_variables_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "balance")
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert one_error_line(err) == (
        "qrispay: error: QRISPAY_API_KEY and QRISPAY_GATEWAY_URL are not set "
        "(needed for the gateway API; see 'qrispay --help')"
    )


def test_one_missing_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", "http://127.0.0.1:9")
    code, _, err = run(capsys, "invoice", "show", "abc")
    assert code == cli.EXIT_USAGE
    assert one_error_line(err).startswith("qrispay: error: QRISPAY_API_KEY is not set")


def test_feed_variables_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["mutations"], ["watch", "--once"]):
        code, _, err = run(capsys, *argv)
        assert code == cli.EXIT_USAGE
        assert "QRISPAY_AUTH, QRISPAY_MERCHANT and QRISPAY_TOKEN are not set" in one_error_line(err)


def test_bad_url_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRISPAY_API_KEY", "k")
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", "gateway.example")
    code, _, err = run(capsys, "balance")
    assert code == cli.EXIT_USAGE
    assert one_error_line(err) == (
        "qrispay: error: QRISPAY_GATEWAY_URL must be an http:// or https:// URL"
    )


def test_connection_refused_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("QRISPAY_API_KEY", "k")
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", f"http://127.0.0.1:{port}")
    code, _, err = run(capsys, "balance")
    assert code == cli.EXIT_ERROR
    line = one_error_line(err)
    assert line.startswith("qrispay: error: cannot connect: ConnectError at ")
    # Where it went (never the query: the key), that it was retried, the error once.
    assert f"at http://127.0.0.1:{port}" in line
    assert "; 3 attempts (GET /api/v1/balance)" in line
    assert line.count("ConnectError") == 1
    assert "?" not in line
    assert "apikey" not in line


@pytest.mark.parametrize("where", ["before", "after"])
def test_timeout_bounds_a_call_to_a_server_that_never_answers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with socket.socket() as silent:  # connections complete in the kernel; nothing answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.setenv("QRISPAY_API_KEY", "k")
        monkeypatch.setenv("QRISPAY_GATEWAY_URL", f"http://127.0.0.1:{port}")
        argv = (
            ["--timeout", "0.5", "balance"]
            if where == "before"
            else ["balance", "--timeout", "0.5"]
        )
        began = time.monotonic()
        code, _, err = run(capsys, *argv)
        took = time.monotonic() - began
    assert code == cli.EXIT_ERROR
    # Without --timeout a silent server holds the command 30 s an attempt.
    assert took < 10
    line = one_error_line(err)
    assert line.startswith("qrispay: error: timed out: ")
    assert f"http://127.0.0.1:{port}" in line
    assert "(GET /api/v1/balance)" in line


@pytest.mark.parametrize(
    ("flags", "shown"),
    [((), False), (("-v",), True), (("--log-level", "info"), True), (("--verbose",), True)],
)
def test_verbose_shows_the_retries_and_leaves_logging_as_it_was(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
    flags: tuple[str, ...],
    shown: bool,
) -> None:
    import logging

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("QRISPAY_API_KEY", "secret-key-123")
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", f"http://127.0.0.1:{port}")
    level = logging.getLogger("qrispay").level
    code, _, err = run(capsys, "balance", *flags)
    assert code == cli.EXIT_ERROR
    retries = [line for line in err.splitlines() if line.startswith("qrispay: info: retrying")]
    assert len(retries) == (2 if shown else 0)
    assert "secret-key-123" not in err
    assert logging.getLogger("qrispay").level == level


def test_timeout_must_be_a_positive_number(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRISPAY_API_KEY", "k")
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", "http://127.0.0.1:9")
    code, _, err = run(capsys, "balance", "--timeout", "0")
    assert code == cli.EXIT_USAGE
    assert "not a positive number of seconds" in err


# -- balance and invoices ---------------------------------------------------------------


def test_balance(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "balance")
    assert code == 0, err
    assert "Rp 1.000.000" in out
    assert run_json(capsys, "balance") == {"balance": 1_000_000}


def test_json_flag_before_or_after_the_command(
    served: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "balance", "--json")
    assert code == 0
    assert json.loads(out) == {"balance": 1_000_000}
    code, out, _ = run(capsys, "withdraw", "list", "--json")
    assert code == 0
    assert json.loads(out)["items"] == []


def test_invoice_create_show_cancel(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(capsys, "invoice", "create", "25000")
    assert isinstance(created, dict)
    assert list(created) == [
        "invoice_id",
        "amount",
        "fee",
        "total",
        "status",
        "qris_image",
        "expired_at",
        "created_at",
        "qris_payload",
    ]
    invoice_id = created["invoice_id"]
    assert invoice_id in served.invoice_ids()
    assert created["amount"] == 25_000
    assert type(created["amount"]) is int
    assert created["fee"] == 1
    assert created["total"] == 25_001
    assert created["status"] == "pending"
    assert created["expired_at"].endswith("+07:00")
    assert created["created_at"] is None  # the create answer does not say

    shown = run_json(capsys, "invoice", "show", invoice_id)
    assert isinstance(shown, dict)
    assert shown["invoice_id"] == invoice_id
    assert shown["total"] == 25_001
    assert shown["created_at"].endswith("+07:00")
    assert shown["expired_at"] == created["expired_at"]

    code, out, _ = run(capsys, "invoice", "show", invoice_id)
    assert code == 0
    assert "Rp 25.001" in out
    assert "pending" in out
    assert "WIB" in out

    cancelled = run_json(capsys, "invoice", "cancel", invoice_id)
    assert cancelled == {
        "invoice_id": invoice_id,
        "status": "expired",
        "message": "Invoice berhasil dibatalkan",
    }
    assert served.invoice(invoice_id)["status"] == "expired"


def test_invoice_text_output(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "invoice", "create", "10000")
    assert code == 0, err
    assert "Rp 10.001" in out
    assert "the customer pays exactly this" in out
    # The create answer has no creation time: the moment it came is shown, in WIB.
    created = next(line for line in out.splitlines() if line.lstrip().startswith("created"))
    assert "WIB (when the gateway answered)" in created
    invoice_id = served.invoice_ids()[0]
    code, out, _ = run(capsys, "invoice", "cancel", invoice_id)
    assert code == 0
    assert f"Invoice {invoice_id} cancelled" in out


def test_invoice_not_found(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "invoice", "show", "6b0000000000000000000000")
    assert code == cli.EXIT_ERROR
    assert out == ""
    assert one_error_line(err) == (
        "qrispay: error: not found: Invoice tidak ditemukan (HTTP 404, GET /api/v1/invoice/status)"
    )


def test_cancelling_a_paid_invoice(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    invoice = served.create_invoice(30_000)
    served.pay(invoice["total"])
    code, out, err = run(capsys, "invoice", "cancel", invoice["invoice_id"])
    assert code == cli.EXIT_ERROR
    assert out == ""
    line = one_error_line(err)
    assert line.startswith("qrispay: error: cannot cancel: ")
    assert "status saat ini: paid" in line


def test_wrong_api_key(
    served: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRISPAY_API_KEY", "not-the-key")
    code, out, err = run(capsys, "balance")
    assert code == cli.EXIT_ERROR
    assert out == ""
    assert one_error_line(err) == (
        "qrispay: error: authentication failed: API key tidak valid "
        "(HTTP 401, GET /api/v1/balance); check QRISPAY_API_KEY"
    )


def test_wrong_feed_token(
    served: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QRISPAY_TOKEN", "000001:wrong-token")
    for argv in (["mutations"], ["watch", "--once"]):
        code, out, err = run(capsys, *argv)
        assert code == cli.EXIT_ERROR
        assert out == ""
        line = err.splitlines()[-1]
        assert line == (
            "qrispay: error: authentication failed: Invalid auth or token "
            "(HTTP 401, GET /check-payment); check QRISPAY_AUTH, QRISPAY_MERCHANT and QRISPAY_TOKEN"
        )
        assert "Traceback" not in err


def test_outcome_unknown_create_invoice(
    served: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    served.fail_next("error_after", endpoint="create_invoice")
    code, out, err = run(capsys, "invoice", "create", "40000")
    assert code == cli.EXIT_OUTCOME_UNKNOWN
    assert out == ""
    line = one_error_line(err)
    assert line.startswith("qrispay: error: outcome unknown: create_invoice")
    assert "not sent again" in line
    assert "check the gateway before creating another" in line
    # It did happen, once: which is why the command must not just retry.
    assert len(served.invoice_ids()) == 1


def test_outcome_unknown_withdrawal(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    served.fail_next("error_after", endpoint="create_withdrawal")
    code, _, err = run(capsys, "withdraw", "create", "50000", "081234567890", "Budi")
    assert code == cli.EXIT_OUTCOME_UNKNOWN
    line = one_error_line(err)
    assert "outcome unknown: create_withdrawal" in line
    assert "qrispay withdraw list --status pending" in line
    listed = run_json(capsys, "withdraw", "list", "--status", "pending")
    assert isinstance(listed, dict)
    assert [w["amount"] for w in listed["items"]] == [50_000]


def test_outcome_unknown_cancel(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    invoice = served.create_invoice(20_000)
    served.fail_next("truncated", endpoint="cancel_invoice")
    code, _, err = run(capsys, "invoice", "cancel", invoice["invoice_id"])
    assert code == cli.EXIT_OUTCOME_UNKNOWN
    assert "qrispay invoice show ID" in one_error_line(err)


def test_server_error_on_a_read(
    served: Sandbox, capsys: pytest.CaptureFixture[str], sleeps: list[float]
) -> None:
    served.fail_next("error", endpoint="balance", times=3)  # the first try and 2 retries
    code, _, err = run(capsys, "balance")
    assert code == cli.EXIT_ERROR
    assert one_error_line(err).startswith("qrispay: error: server error: ")
    assert len(sleeps) == 2  # it did retry the read


# -- withdrawals ---------------------------------------------------------------------


def test_withdraw_create_show_list(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    created = run_json(capsys, "withdraw", "create", "50000", "081234567890", "Budi Santoso")
    assert isinstance(created, dict)
    assert created["amount"] == 50_000
    assert created["fee"] == 1000
    assert created["total_deduct"] == 51_000
    assert created["new_balance"] == 949_000
    assert created["status"] == "pending"
    assert created["created_at"].endswith("+07:00")  # one display zone: WIB
    withdraw_id = created["withdraw_id"]

    shown = run_json(capsys, "withdraw", "show", withdraw_id)
    assert isinstance(shown, dict)
    assert shown["account_number"] == "081234567890"
    assert shown["account_name"] == "Budi Santoso"
    assert shown["processed_at"] is None

    served.approve_withdrawal(withdraw_id, note="ok")
    for _ in range(2):
        run_json(capsys, "withdraw", "create", "1000", "6281234567890", "Ani")
    page = run_json(capsys, "withdraw", "list", "--limit", "2", "--page", "1")
    assert isinstance(page, dict)
    assert (page["page"], page["limit"], page["total"], page["total_pages"]) == (1, 2, 3, 2)
    assert len(page["items"]) == 2
    success = run_json(capsys, "withdraw", "list", "--status", "success")
    assert isinstance(success, dict)
    assert [w["withdraw_id"] for w in success["items"]] == [withdraw_id]
    assert success["items"][0]["admin_note"] == "ok"
    assert success["items"][0]["processed_at"].endswith("+07:00")
    everything = run_json(capsys, "withdraw", "list", "--all", "--limit", "1")
    assert isinstance(everything, dict)
    assert everything["total"] == 3
    assert len({w["withdraw_id"] for w in everything["items"]}) == 3

    code, out, _ = run(capsys, "withdraw", "list")
    assert code == 0
    assert "Rp 51.000" in out
    assert "Page 1 of 1 (3 withdrawal(s), 10 a page)." in out
    code, out, _ = run(capsys, "withdraw", "show", withdraw_id)
    assert code == 0
    assert "success" in out
    code, out, err = run(capsys, "withdraw", "create", "1000", "081234567890", "Citra")
    assert code == 0
    assert "pending until the gateway's admin decides" in err


def test_withdraw_validation_error(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "withdraw", "create", "50000", "12345", "Budi")
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert one_error_line(err).startswith(
        "qrispay: error: invalid argument: account_number must be a DANA phone number"
    )
    assert served.withdrawal_ids() == []  # nothing was sent


def test_withdraw_refused_by_the_server(
    served: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "withdraw", "create", "5000000", "081234567890", "Budi")
    assert code == cli.EXIT_ERROR
    assert one_error_line(err) == (
        "qrispay: error: refused: Saldo tidak mencukupi (HTTP 400, POST /api/v1/withdraw)"
    )


# -- mutations ---------------------------------------------------------------------------


def test_mutations(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    paid = served.pay(25_001, brand="OVO")
    served.add_row(
        {
            "date": "2025-01-01 12:00:00",
            "amount": "10.000,00",
            "type": "CR",
            "qris": "static",
            "brand_name": "DANA",
            "issuer_reff": "bad-row",
            "buyer_reff": "x",
            "balance": 1,
        }
    )
    body = run_json(capsys, "mutations")
    assert isinstance(body, dict)
    assert list(body) == ["rows", "rejected"]
    (row,) = body["rows"]
    assert row["amount"] == 25_001
    assert row["type"] == "credit"
    assert row["brand_name"] == "OVO"
    assert row["issuer_reff"] == paid.issuer_reff
    assert row["balance"] == 25_001
    assert row["date"].endswith("+07:00")
    (bad,) = body["rejected"]
    assert bad["raw"]["issuer_reff"] == "bad-row"
    assert "amount" in bad["reason"]

    served.invalidate_cache()
    code, out, err = run(capsys, "mutations")
    assert code == 0
    assert "Rp 25.001" in out
    assert paid.issuer_reff in out
    assert "1 row(s) could not be read" in out
    assert "30 s" in err


def test_mutations_empty(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mutations")
    assert code == 0
    assert "The feed has no rows." in out


# -- watch ---------------------------------------------------------------------------


def after_first_fetch(sandbox: Sandbox, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a thread once the watcher made its first fetch (so the
    payment is news to it, not history or an invoice already paid)."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + 10
        while sandbox.stats.feed_fetches < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread


def test_watch_reports_a_payment(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    invoice = served.create_invoice(25_000)
    payment = after_first_fetch(served, lambda: [served.pay(invoice["total"]), served.pay(777)])
    try:
        code, out, err = run(
            capsys,
            "watch",
            "--json",
            "--ttl",
            "0.5",
            "--duration",
            "2.2",
            "--invoice",
            invoice["invoice_id"],
        )
    finally:
        payment.join()
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [event["event"] for event in events]
    assert sorted(kinds) == ["InvoicePaid", "UnmatchedCredit"]
    paid = events[kinds.index("InvoicePaid")]
    assert paid["source"] == "mutation"
    assert paid["invoice"]["invoice_id"] == invoice["invoice_id"]
    assert paid["invoice"]["status"] == "paid"
    assert paid["mutation"]["amount"] == invoice["total"]
    assert paid["seen_at"].endswith("+07:00")
    unmatched = events[kinds.index("UnmatchedCredit")]
    assert unmatched["mutation"]["amount"] == 777
    assert "Watching the feed of merchant OK000001 with the gateway" in err
    assert "Stopped after" in err


def test_watch_reports_an_invoice_paid_before_it_started(
    served: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    invoice = served.create_invoice(26_000)
    served.pay(invoice["total"])
    code, out, err = run(
        capsys,
        "watch",
        "--json",
        "--ttl",
        "0.5",
        "--duration",
        "1.2",
        "--invoice",
        invoice["invoice_id"],
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [event["event"] for event in events] == ["InvoicePaid"]
    assert events[0]["invoice"]["invoice_id"] == invoice["invoice_id"]


def test_watch_with_a_db_resumes_where_it_stopped(
    served: Sandbox, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "watch.db")
    first = served.create_invoice(31_000)
    served.pay(first["total"])
    watch = ("watch", "--json", "--ttl", "0.5", "--duration", "1.2", "--db", db)
    code, out, err = run(capsys, *watch, "--invoice", first["invoice_id"])
    assert code == 0, err
    assert [json.loads(line)["event"] for line in out.splitlines()] == ["InvoicePaid"]

    # While no watch runs: the first customer pays again, a second one pays.
    second = served.create_invoice(32_000)
    served.pay(first["total"])
    served.pay(second["total"])
    code, out, err = run(capsys, *watch, "--invoice", second["invoice_id"])
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    # The first payment is not reported again; the downtime's two are, once each.
    assert sorted(event["event"] for event in events) == ["DuplicatePayment", "InvoicePaid"]
    paid = next(event for event in events if event["event"] == "InvoicePaid")
    assert paid["invoice"]["invoice_id"] == second["invoice_id"]


def test_watch_text(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    invoice = served.create_invoice(10_000)
    payment = after_first_fetch(served, lambda: served.pay(invoice["total"]))
    try:
        code, out, err = run(
            capsys, "watch", "--ttl", "0.5", "--duration", "1.6", "--invoice", invoice["invoice_id"]
        )
    finally:
        payment.join()
    assert code == 0, err
    assert invoice["invoice_id"] in out
    paid_lines = [line for line in out.splitlines() if "PAID" in line]
    assert len(paid_lines) == 1
    assert f"invoice {invoice['invoice_id']} is paid: Rp 10.001 by GOPAY" in paid_lines[0]


def test_watch_once_without_the_gateway(
    served: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QRISPAY_API_KEY")
    code, out, err = run(capsys, "watch", "--once")
    assert code == 0, err
    assert out == ""
    assert "without the gateway" in err
    assert "Stopped after 1 fetch(es)." in err
    code, _, err = run(capsys, "watch", "--once", "--invoice", "abc")
    assert code == cli.EXIT_USAGE
    assert "QRISPAY_API_KEY is not set (needed to look up --invoice" in one_error_line(err)


def test_watch_unknown_invoice(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "watch", "--once", "--invoice", "6b0000000000000000000000")
    assert code == cli.EXIT_ERROR
    assert one_error_line(err).startswith("qrispay: error: not found: Invoice tidak ditemukan")


def test_watch_when_every_fetch_fails(served: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    served.fail_next("error", endpoint="check_payment", times=5)
    code, _, err = run(capsys, "watch", "--once")
    assert code == cli.EXIT_ERROR
    lines = err.splitlines()
    assert lines[-1].startswith("qrispay: error: no fetch of the feed succeeded: ServerError")
    assert any(line.startswith("qrispay: warning: feed fetch failed") for line in lines)
    assert "Traceback" not in err


# -- secrets ---------------------------------------------------------------------------

TOKEN = "589309:Zgekx7TOUzmB0tEMc6GD8nipaRr"
FORMS = {SECRET, quote(SECRET, safe=""), quote_plus(SECRET), TOKEN, quote_plus(TOKEN)}


def assert_clean(text: str) -> None:
    found = [form for form in FORMS if form in text]
    assert not found, f"secret leaked: {found!r}"


def test_no_command_prints_a_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox(ttl=0.5, api_key=SECRET, auth=SECRET, token=TOKEN, gateway_balance=10**6)
    with sandbox.serve(port=0) as url:
        point_at(monkeypatch, sandbox, url)
        invoice = sandbox.create_invoice(10_000)
        sandbox.pay(invoice["total"])
        outputs: list[str] = []
        for json_flag in ([], ["--json"]):
            for argv in (
                ["balance"],
                ["invoice", "create", "5000"],
                ["invoice", "show", invoice["invoice_id"]],
                ["invoice", "cancel", invoice["invoice_id"]],  # refused: paid
                ["withdraw", "create", "1000", "081234567890", "Ani"],
                ["withdraw", "list", "--all"],
                ["mutations"],
                ["watch", "--once", "--invoice", invoice["invoice_id"]],
            ):
                cli.main([*json_flag, *argv])
                out, err = capsys.readouterr()
                outputs += [out, err]
        sandbox.fail_next("error_after", endpoint="create_invoice")
        cli.main(["invoice", "create", "7000"])
        outputs += list(capsys.readouterr())
        # Wrong credentials: the secret is sent and refused.
        monkeypatch.setenv("QRISPAY_API_KEY", SECRET + "x")
        monkeypatch.setenv("QRISPAY_TOKEN", TOKEN + "x")
        for argv in (["balance"], ["mutations"], ["watch", "--once"]):
            assert cli.main(argv) == cli.EXIT_ERROR
            outputs += list(capsys.readouterr())
    text = "\n".join(outputs)
    assert "Rp 10.001" in text  # the commands did run
    assert_clean(text)


def test_secrets_echoed_by_a_server_are_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = "https://gateway.test"
    monkeypatch.setenv("QRISPAY_API_KEY", SECRET)
    monkeypatch.setenv("QRISPAY_GATEWAY_URL", base)
    invoice = {
        "invoice_id": "abc",
        "amount": 1000,
        "fee": 1,
        "total": 1001,
        "status": "pending",
        "qris_image": f"{base}/qr.png?key={quote_plus(SECRET)}&apikey={SECRET}",
        "expired_at": "2025-01-01 12:15:00",
    }
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{base}/api/v1/invoice/status").respond(200, json=invoice)
        mock.get(f"{base}/api/v1/balance").respond(
            400, json={"error": f"bad key {SECRET} in apikey={SECRET}"}
        )
        for argv in (["invoice", "show", "abc"], ["--json", "invoice", "show", "abc"], ["balance"]):
            cli.main(argv)
            out, err = capsys.readouterr()
            assert "***" in out + err
            assert_clean(out + err)


# -- the sandbox command ---------------------------------------------------------------


def test_sandbox_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict[str, object] = {}

    def interrupt() -> None:
        # While it serves: the printed variables work.
        out = capsys.readouterr().out
        env = dict(
            line.strip().removeprefix("export ").replace("'", "").split("=", 1)
            for line in out.splitlines()
            if line.strip().startswith("export ")
        )
        served["env"] = env
        served["out"] = out
        answer = httpx.get(
            env["QRISPAY_GATEWAY_URL"] + "/api/v1/balance",
            params={"apikey": env["QRISPAY_API_KEY"]},
        )
        served["balance"] = answer.json()
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_sandbox, "_wait_for_interrupt", interrupt)
    monkeypatch.setattr(
        sys,
        "stdin",
        io.StringIO(
            "help\npay 1000 ovo\ninvoices\nwithdrawals\nfly away\npay x\npay\n"
            "approve\ninvoices now\n"
        ),
    )
    code, _, err = run(capsys, "sandbox", "--port", "0", "--ttl", "5", "--balance", "5000")
    assert code == 0
    assert "stopped" in err
    out = str(served["out"])
    assert "loopback only" in out
    assert "feed cache 5 s" in out
    env = served["env"]
    assert isinstance(env, dict)
    assert set(env) == {
        "QRISPAY_GATEWAY_URL",
        "QRISPAY_API_KEY",
        "QRISPAY_FEED_URL",
        "QRISPAY_AUTH",
        "QRISPAY_MERCHANT",
        "QRISPAY_TOKEN",
    }
    assert env["QRISPAY_GATEWAY_URL"].startswith("http://127.0.0.1:")
    assert env["QRISPAY_API_KEY"] == "sandbox-api-key"
    assert served["balance"] == {"balance": 5000}
    assert "credit Rp 1.000 by OVO" in out
    assert "no pending invoice has that total" in out
    assert "none pending" in out
    assert "not understood: 'fly away'" in out
    assert "refused: 'x' is not an amount" in out
    # help lists every command; a known command with the wrong arguments prints its usage.
    for usage in ("pay TOTAL [BRAND]", "invoices", "withdrawals", "approve ID [NOTE]"):
        assert f"  {usage}" in out
    assert "reject ID [NOTE]" in out
    assert "usage: pay TOTAL [BRAND]  (a customer pays TOTAL" in out
    assert "usage: approve ID [NOTE]" in out
    assert "usage: invoices  (the pending invoices)" in out
    assert "not understood: 'pay'" not in out


def test_sandbox_json_and_quit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("quit\n"))
    code, out, _ = run(capsys, "sandbox", "--json", "--port", "0")
    assert code == 0
    config = json.loads(out)
    assert config["env"]["QRISPAY_FEED_URL"] == config["base_url"]
    assert config["feed_url"] == config["base_url"] + "/check-payment"
    assert config["ttl"] == 30


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_sandbox_refuses_a_public_host(capsys: pytest.CaptureFixture[str], host: str) -> None:
    code, _, err = run(capsys, "sandbox", "--host", host, "--port", "0")
    assert code == cli.EXIT_USAGE
    assert "loopback only" in one_error_line(err)


def test_sandbox_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "sandbox", "--port", str(port))
    assert code == cli.EXIT_ERROR
    assert one_error_line(err).startswith(f"qrispay: error: cannot serve on 127.0.0.1:{port}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT semantics differ")
def test_sandbox_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "qrispay", "--json", "sandbox", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell running the suite in the background ignores SIGINT, and the child
        # would inherit that: give it Ctrl-C back, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout is not None
        config = json.loads(process.stdout.readline())
        assert config["base_url"].startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in err


# -- QRIS payloads ----------------------------------------------------------------------


def test_a_closed_pipe_is_not_a_traceback() -> None:
    # `qrispay ... | head -1`: the reader goes away; that is not an error of ours.
    child = (
        "import os, sys\n"
        "read, write = os.pipe()\n"
        "os.close(read)\n"
        "os.dup2(write, 1)\n"
        "from qrispay import cli\n"
        "code = cli.main(['qris', 'show', sys.argv[1]])\n"
        "print('exit', code, file=sys.stderr)\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", child, STATIC],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in process.stderr
    assert "exit 1" in process.stderr
    assert process.returncode == 0


def test_qris_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "qris", "show", STATIC)
    assert code == 0
    assert "TOKO SARI, JAKARTA" in out
    assert "static (tag 01 = 11)" in out
    assert "0230 (valid)" in out
    assert "Globally unique identifier" in out
    assert "ID.CO.QRIS.WWW" in out
    assert "360 (IDR)" in out

    shown = run_json(capsys, "qris", "show", STATIC)
    assert isinstance(shown, dict)
    assert shown["dynamic"] is False
    assert shown["amount"] is None
    assert shown["merchant_name"] == "TOKO SARI"
    assert shown["merchant_city"] == "JAKARTA"
    assert shown["crc"] == "0230"
    assert shown["crc_valid"] is True
    tags = {tag["tag"]: tag for tag in shown["tags"]}
    assert list(tags) == ["00", "01", "26", "52", "53", "58", "59", "60", "61", "63"]
    assert tags["26"]["subtags"] == [
        {"tag": "00", "name": "Globally unique identifier", "value": "ID.CO.QRIS.WWW"},
        {"tag": "02", "name": "Merchant ID", "value": "ID1020000001"},
    ]
    assert "subtags" not in tags["59"]


def test_qris_convert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "qris", "convert", STATIC, "25000")
    assert code == 0
    dynamic = out.strip()
    assert dynamic.endswith("6304" + dynamic[-4:])
    assert err == ""
    shown = run_json(capsys, "qris", "show", dynamic)
    assert isinstance(shown, dict)
    assert shown["dynamic"] is True
    assert shown["amount"] == 25_000

    png, svg = tmp_path / "qr.png", tmp_path / "qr.svg"
    code, out, err = run(capsys, "qris", "convert", STATIC, "25000", "--png", str(png))
    assert code == 0
    assert out.strip() == dynamic
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert str(png) in err
    converted = run_json(capsys, "qris", "convert", dynamic, "30000", "--svg", str(svg))
    assert isinstance(converted, dict)
    assert converted["amount"] == 30_000
    assert converted["image"] == str(svg)
    assert converted["image_kind"] == "svg"
    assert b"<svg" in svg.read_bytes()


def test_qris_payload_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(STATIC + "\n"))
    code, out, _ = run(capsys, "qris", "show", "-")
    assert code == 0
    assert "TOKO SARI" in out


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (STATIC[:-4] + "0231", "CRC mismatch"),
        (STATIC[:40], "truncated"),
        ("hello", "tag id 'he' at position 0 is not two digits"),
        (STATIC.replace("5303360", "5303ééé"), "non-ASCII"),
    ],
)
def test_qris_bad_payload(capsys: pytest.CaptureFixture[str], payload: str, message: str) -> None:
    for argv in (["qris", "show", payload], ["qris", "convert", payload, "1000"]):
        code, out, err = run(capsys, *argv)
        assert code == cli.EXIT_ERROR
        assert out == ""
        line = one_error_line(err)
        assert line.startswith("qrispay: error: invalid QRIS payload: ")
        assert message in line


def test_qris_convert_unwritable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "missing" / "qr.png"
    code, _, err = run(capsys, "qris", "convert", STATIC, "1000", "--png", str(target))
    assert code == cli.EXIT_ERROR
    assert one_error_line(err).startswith(f"qrispay: error: cannot write {target}")


def test_qris_convert_without_segno(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "segno", None)
    code, _, err = run(capsys, "qris", "convert", STATIC, "1000", "--svg", str(tmp_path / "a.svg"))
    assert code == cli.EXIT_USAGE
    assert "pip install 'qrispay[qr]'" in one_error_line(err)


@pytest.mark.parametrize("argv", [["demo"], ["sandbox", "--port", "0"]])
def test_without_the_sandbox_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.delitem(sys.modules, "qrispay.sandbox")
    monkeypatch.setitem(sys.modules, "starlette", None)
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "pip install 'qrispay[sandbox]'" in one_error_line(err)


def test_page_and_all_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "withdraw", "list", "--all", "--page", "2")
    assert code == cli.EXIT_USAGE
    assert "not allowed with argument" in err


# -- the demo through the command -------------------------------------------------------


def test_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "demo", "--speed", "6")
    assert isinstance(result, dict)
    assert result["ok"] is True
    assert result["counts"] == {"paid": 2, "late": 1, "duplicate": 1, "unmatched": 1, "expired": 3}


# -- output helpers -----------------------------------------------------------------------


def test_format_rupiah() -> None:
    assert format_rupiah(0) == "Rp 0"
    assert format_rupiah(35_002) == "Rp 35.002"
    assert format_rupiah(1_000_000) == "Rp 1.000.000"
    assert format_rupiah(-1_000) == "-Rp 1.000"
    assert format_rupiah(None) == "-"


def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_colour(Terminal())
    assert not wants_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "")
    assert not wants_colour(Terminal())


def test_jsonable_keeps_ints_and_offsets() -> None:
    from datetime import datetime, timedelta, timezone

    when = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=7)))
    assert jsonable({"a": (1, when)}) == {"a": [1, "2025-01-01T12:00:00+07:00"]}


def test_jsonable_prints_every_time_in_wib_at_the_same_instant() -> None:
    from datetime import datetime, timedelta, timezone

    utc = datetime(2025, 1, 1, 23, 30, 5, tzinfo=timezone.utc)
    tokyo = datetime(2025, 1, 2, 8, 30, 5, tzinfo=timezone(timedelta(hours=9)))
    for when in (utc, tokyo):
        printed = jsonable(when)
        assert printed == "2025-01-02T06:30:05+07:00"
        assert datetime.fromisoformat(printed) == when


def test_serve_postgres_takes_a_schema_and_refuses_one_without_postgres() -> None:
    from qrispay.cli import serve
    from qrispay.cli._exit import ConfigError
    from qrispay.cli._main import build_parser

    parser = build_parser()
    dsn = "postgresql://shop@127.0.0.1:1/shop"
    args = parser.parse_args(["serve", "--postgres", dsn, "--schema", "shop_two"])
    assert serve._store(args).schema == "shop_two"  # type: ignore[attr-defined]
    listed = parser.parse_args(["webhooks", "list", "--postgres", dsn])
    assert serve._store(listed).schema == "qrispay"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="--postgres"):
        serve._store(parser.parse_args(["serve", "--db", "x.db", "--schema", "shop_two"]))
