"""The FastAPI example as two real uvicorn processes on one store (SQLite, PostgreSQL).

A sandbox serves the gateway and the feed on loopback; two worker processes
share one database, as ``uvicorn --workers 2`` (or two hosts on one database)
would. Invoices are made through both, each is paid once (one twice), and
every payment must be reported once, to its own invoice, in both workers.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from qrispay.sandbox import Sandbox

from .conftest import sandbox_env

ROOT = Path(__file__).resolve().parent.parent
TTL = 1.0
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/attention", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"worker did not start:\n{log.read_text()}")


def _worker(port: int, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def two_workers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Sandbox, list[str], Path]]:
    sandbox = Sandbox(ttl=TTL)
    db = tmp_path / "shop.db"
    store_env = {"QRISPAY_DB": str(db)}
    if request.param == "postgres":
        dsn, schema = request.getfixturevalue("pg_schema")
        store_env.update({"QRISPAY_POSTGRES": dsn, "QRISPAY_POSTGRES_SCHEMA": schema})
    with sandbox.serve(port=0) as url:
        env = dict(os.environ)
        env.update(
            {
                **sandbox_env(sandbox, url),
                "QRISPAY_FEED_TTL": str(TTL),
                **store_env,
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
            }
        )
        ports = [_free_port(), _free_port()]
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        files = [log.open("wb") for log in logs]
        procs = [_worker(port, env, file) for port, file in zip(ports, files, strict=True)]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for base, proc, log in zip(bases, procs, logs, strict=True):
                _wait_until_up(base, proc, log)
            yield sandbox, bases, db
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            codes = [proc.wait(timeout=30) for proc in procs]
            assert codes == [0, 0], [log.read_text() for log in logs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for file in files:
                file.close()


def _eventually(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_processes_share_the_store_and_report_each_payment_once(
    two_workers: tuple[Sandbox, list[str], Path],
) -> None:
    sandbox, bases, db = two_workers
    started = time.monotonic()
    fetches_before = sandbox.stats.feed_fetches
    invoices = []
    for i in range(8):
        # The same amount through both workers: the store keeps the totals apart.
        answer = httpx.post(f"{bases[i % 2]}/invoices", json={"amount": 10_000}, timeout=30)
        assert answer.status_code == 201, answer.text
        invoices.append((bases[i % 2], answer.json()))
    totals = [invoice["total"] for _, invoice in invoices]
    assert len(set(totals)) == len(totals)

    for _, invoice in invoices:
        sandbox.pay(invoice["total"])
    sandbox.pay(invoices[0][1]["total"])  # the first customer pays twice

    for maker, invoice in invoices:
        # Asked of the worker that did not make it, as a frontend polls the status.
        other = f"{bases[1 - bases.index(maker)]}/invoices/{invoice['invoice_id']}"
        _eventually(
            lambda url=other: httpx.get(url, timeout=10).json()["status"] == "paid",
            "paid in the worker that did not make it",
            timeout=30.0,
        )
        assert httpx.get(other, timeout=10).json()["total"] == invoice["total"]
        for base in bases:
            # A worker that does not poll learns of a payment within about a second.
            url = f"{base}/invoices/{invoice['invoice_id']}"
            _eventually(
                lambda url=url: httpx.get(url, timeout=10).json()["status"] == "paid",
                "paid in every worker",
                timeout=5.0,
            )

    # Both workers handle every event; the shop's database takes each once.
    def handled() -> list[tuple[str, str | None]] | None:
        with sqlite3.connect(db.with_name("shop-shop.db")) as conn:
            rows = conn.execute("SELECT event_id, invoice_id FROM handled").fetchall()
        paid = [row for row in rows if row[1] is not None]
        duplicate = [row for row in rows if row[0].startswith("duplicate:")]
        return rows if len(paid) == len(invoices) and duplicate else None

    rows = _eventually(handled, "every payment handled")
    paid = sorted(invoice_id for event_id, invoice_id in rows if invoice_id is not None)
    assert paid == sorted(invoice["invoice_id"] for _, invoice in invoices)
    assert all(event_id == f"paid:{invoice_id}" for event_id, invoice_id in rows if invoice_id)
    for base in bases:
        attention = _eventually(
            lambda base=base: httpx.get(f"{base}/attention", timeout=10).json(), "attention"
        )
        assert [item["type"] for item in attention] == ["payment.duplicate"]

    # The durable events feed reads the one store: every worker answers the same
    # events, and resuming after one of them in the other repeats none.
    pages = [httpx.get(f"{base}/events", timeout=10).json()["events"] for base in bases]
    assert [e["id"] for e in pages[0]] == [e["id"] for e in pages[1]]
    assert {e["id"] for e in pages[0]} >= {event_id for event_id, _ in rows}
    resumed = httpx.get(f"{bases[1]}/events", params={"after": pages[0][3]["id"]}, timeout=10)
    assert [e["id"] for e in resumed.json()["events"]] == [e["id"] for e in pages[0][4:]]

    # One of them polls: about one fetch per cache window for both together.
    elapsed = time.monotonic() - started
    fetches = sandbox.stats.feed_fetches - fetches_before
    assert fetches <= elapsed / TTL + 2, (fetches, elapsed)
