"""``qrispay serve`` as a real process on loopback, beside ``qrispay sandbox``
and a webhook receiver (each a process of its own): create, pay, status,
events, the event stream, webhooks verified by the independent
``standardwebhooks`` package; SIGKILL between the commit of an event and its
delivery; an idempotency key across a SIGKILL; SIGTERM with a stream open."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from .conftest import SECRET, postgres_dsn

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TOKEN = "tok-" + SECRET
WHSEC = "whsec_" + base64.b64encode(b"process-test-key-0123").decode()
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        # A shell running the suite in the background ignores SIGINT: give it back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kw,
    )


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    if process.poll() is None:
        process.kill()
    out, err = process.communicate(timeout=10)
    return out, err


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sandbox = start(
            [sys.executable, "-m", "qrispay", "--json", "sandbox", "--port", "0", "--ttl", "1"],
            {},
            stdin=subprocess.PIPE,
        )
        assert self.sandbox.stdout is not None
        self.env: dict[str, str] = json.loads(self.sandbox.stdout.readline())["env"]
        self.env |= {"QRISPAY_SERVE_TOKEN": TOKEN, "QRISPAY_WEBHOOK_SECRET": WHSEC}
        self.hook_port = free_port()
        self.received = tmp / "received.jsonl"
        self.receiver: subprocess.Popen[str] | None = None
        self.servers: list[subprocess.Popen[str]] = []
        self.url = ""

    def pay(self, total: int) -> str:
        assert self.sandbox.stdin is not None
        assert self.sandbox.stdout is not None
        self.sandbox.stdin.write(f"pay {total}\n")
        self.sandbox.stdin.flush()
        return self.sandbox.stdout.readline()

    def receiver_up(self) -> None:
        self.receiver = start(
            [
                sys.executable,
                str(HERE / "webhook_receiver.py"),
                str(self.hook_port),
                str(self.received),
            ],
            {},
        )
        assert self.receiver.stdout is not None
        assert self.receiver.stdout.readline().strip() == "ready"

    def serve(self, store: list[str] | None = None) -> subprocess.Popen[str]:
        store = store or ["--db", str(self.tmp / "serve.db")]
        hook = f"http://127.0.0.1:{self.hook_port}/hook"
        command = [sys.executable, "-m", "qrispay", "--json", "serve", "--port", "0"]
        process = start([*command, "--ttl", "1", *store, "--webhook", hook], self.env)
        self.servers.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, stop(process)[1]
        self.url = json.loads(line)["url"]
        return process

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )

    def deliveries(self) -> list[dict[str, Any]]:
        if not self.received.exists():
            return []
        lines = self.received.read_text().splitlines()
        return [json.loads(line) for line in lines]

    def close(self) -> str:
        errors = ""
        for process in [*self.servers, self.sandbox, *([self.receiver] if self.receiver else [])]:
            errors += stop(process)[1]
        return errors


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def create(http: httpx.Client, amount: int, key: str) -> httpx.Response:
    return http.post("/v1/invoices", json={"amount": amount}, headers={"Idempotency-Key": key})


def paid(http: httpx.Client, invoice_id: str) -> bool:
    return bool(http.get(f"/v1/invoices/{invoice_id}").json()["status"] == "paid")


def stream_ids(world: World, count: int, last_event_id: str | None = None) -> list[str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    ids: list[str] = []
    with httpx.stream(
        "GET", world.url + "/v1/events/stream", headers=headers, timeout=10
    ) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        data: list[dict[str, Any]] = []
        for line in answer.iter_lines():
            if line.startswith("id: "):
                ids.append(line[4:])
            if line.startswith("data: "):
                data.append(json.loads(line[6:]))
                assert data[-1]["id"] == ids[-1]
            if len(data) == count:
                return ids
    return ids


def test_create_pay_status_events_stream_and_signed_webhooks(world: World) -> None:
    world.receiver_up()
    server = world.serve()
    with world.http() as http:
        assert httpx.get(world.url + "/healthz").json()["status"] == "ok"
        assert httpx.get(world.url + "/v1/events").status_code == 401
        first = create(http, 10_000, "order-1").json()
        second = create(http, 20_000, "order-2").json()
        world.pay(first["total"])
        wait_for(lambda: paid(http, first["invoice_id"]))
        world.pay(second["total"])
        wait_for(lambda: paid(http, second["invoice_id"]))
        events = http.get("/v1/events").json()["data"]
        ids = [event["id"] for event in events]
        assert ids == [f"paid:{first['invoice_id']}", f"paid:{second['invoice_id']}"]
        assert [event["type"] for event in events] == ["invoice.paid", "invoice.paid"]
    assert stream_ids(world, 2) == ids
    assert stream_ids(world, 1, last_event_id=ids[0]) == ids[1:]
    got = wait_for(lambda: len(world.deliveries()) >= 2 and world.deliveries())
    verifier = standardwebhooks.Webhook(WHSEC)
    for delivery, event_id in zip(got, ids, strict=True):
        body = verifier.verify(delivery["body"], delivery["headers"])
        assert body["id"] == event_id == delivery["headers"]["webhook-id"]
        assert body["data"]["invoice"]["status"] == "paid"

    # SIGTERM with a stream open: the stream ends and the service exits, cleanly, quickly.
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("GET", world.url + "/v1/events/stream", headers=headers, timeout=10) as sse:
        lines = sse.iter_lines()
        assert next(lines).startswith("retry:")
        began = time.monotonic()
        server.send_signal(signal.SIGTERM)
        for _ in lines:
            pass  # ends when the service closes the stream
    out, err = server.communicate(timeout=10)
    assert time.monotonic() - began < 6
    assert server.returncode == 0, err
    assert "Traceback" not in err
    for secret in (TOKEN, SECRET, WHSEC, WHSEC[6:], world.env["QRISPAY_API_KEY"]):
        assert secret not in out + err


def test_an_event_committed_before_a_sigkill_is_delivered_after_the_restart(world: World) -> None:
    server = world.serve()  # the receiver is down
    with world.http() as http:
        invoice = create(http, 10_000, "k").json()
        world.pay(invoice["total"])
        wait_for(lambda: paid(http, invoice["invoice_id"]))
        event_id = http.get("/v1/events").json()["data"][0]["id"]
    server.kill()  # committed, never delivered
    server.communicate(timeout=10)
    assert world.deliveries() == []
    world.receiver_up()
    world.serve()
    got = wait_for(lambda: world.deliveries(), timeout=40)
    time.sleep(1)
    got = world.deliveries()
    assert [d["headers"]["webhook-id"] for d in got] == [event_id]
    standardwebhooks.Webhook(WHSEC).verify(got[0]["body"], got[0]["headers"])
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "qrispay",
            "--json",
            "webhooks",
            "list",
            "--db",
            str(world.tmp / "serve.db"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **world.env},
        timeout=30,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert [(row["event_id"], row["state"]) for row in rows] == [(event_id, "delivered")]
    assert rows[0]["attempts"] >= 2


def test_an_idempotency_key_answers_the_same_after_a_sigkill(world: World) -> None:
    server = world.serve()
    with world.http() as http:
        first = create(http, 10_000, "order-9")
    assert first.status_code == 201
    server.kill()
    server.communicate(timeout=10)
    world.serve()
    with world.http() as http:
        again = create(http, 10_000, "order-9")
        other = create(http, 11_000, "order-9")
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A DSN of a fresh database on the test server, dropped afterwards."""
    import uuid

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    dsn = postgres_dsn()
    name = f"qrispay_serve_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def lease_holder(http: httpx.Client) -> int:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("qrispay_lease_holder"):
            return int(float(line.split()[-1]))
    raise AssertionError("no lease metric")


def test_two_instances_on_postgres_share_one_poller_and_deliver_once(
    world: World, pg_database: str
) -> None:
    world.receiver_up()
    world.serve(["--postgres", pg_database])
    first_url = world.url
    world.serve(["--postgres", pg_database])
    second_url = world.url
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=first_url, headers=headers, timeout=10) as a,
        httpx.Client(base_url=second_url, headers=headers, timeout=10) as b,
    ):
        made = create(a, 10_000, "shared-key")
        assert made.status_code == 201
        replayed = create(b, 10_000, "shared-key")
        assert replayed.json() == made.json()
        assert replayed.headers["idempotent-replayed"] == "true"
        invoice = made.json()
        world.pay(invoice["total"])
        wait_for(lambda: paid(b, invoice["invoice_id"]) and paid(a, invoice["invoice_id"]))
        assert lease_holder(a) + lease_holder(b) == 1
        event_id = f"paid:{invoice['invoice_id']}"
        assert [e["id"] for e in b.get("/v1/events").json()["data"]] == [event_id]
    got = wait_for(lambda: world.deliveries())
    time.sleep(2)  # a second delivery, if one came, would be here by now
    got = world.deliveries()
    assert [d["headers"]["webhook-id"] for d in got] == [event_id]
    standardwebhooks.Webhook(WHSEC).verify(got[0]["body"], got[0]["headers"])
