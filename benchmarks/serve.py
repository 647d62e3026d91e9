"""Issue 15: what ``qrispay serve`` costs, against the in-process SDK.

* Invoice create and status through the service (``qrispay serve``, a real
  process on loopback, SQLite store) against the SDK in this process on the
  same loopback sandbox: ``Reconciler.create_invoice`` with an ``SQLiteStore``
  (it commits, as the service does), and ``GatewayClient.get_invoice`` (one
  round trip, as the service's status is). Interleaved blocks; the median.
* Status reads per second: concurrent ``GET /v1/invoices/{id}`` against the
  service for a fixed time, against ``GET /healthz`` of the same process (no
  auth, no lookup). The service process and the load generator share this
  machine's cores (``os.cpu_count()`` is in the figure's name).
* Webhook delivery latency after commit, p50 and p99: an event committed to an
  ``SQLiteStore`` until a live loopback receiver has it, signed, through
  ``WebhookDispatcher``; against a bare httpx POST of the same body to the same
  receiver.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx

from qrispay import Reconciler
from qrispay.polling import PollPolicy
from qrispay.sandbox import Sandbox
from qrispay.store import Changes, SQLiteStore
from qrispay.webhooks import WebhookDispatcher, WebhookSigner, event_body

from ._harness import Figure, Timer, figure, interleaved, percentile

TOKEN = "benchmark-token-0123456789"
WHSEC = "whsec_" + base64.b64encode(b"benchmark-webhook-key-01").decode()
# Readers at once: at 16 one Python httpx client process (the load generator)
# becomes slower than the service on this machine, and the figure measures it.
CONCURRENCY = 4


@attrs.frozen
class Config:
    repeats: int
    block: int
    read_seconds: float
    deliveries: int


def _serve(sandbox: Sandbox, base_url: str, db: Path) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "QRISPAY_GATEWAY_URL": base_url,
        "QRISPAY_FEED_URL": base_url,
        "QRISPAY_API_KEY": sandbox.api_key,
        "QRISPAY_AUTH": sandbox.auth,
        "QRISPAY_MERCHANT": sandbox.merchant,
        "QRISPAY_TOKEN": sandbox.token,
        "QRISPAY_SERVE_TOKEN": TOKEN,
    }
    command = [sys.executable, "-m", "qrispay", "--json", "serve", "--port", "0", "--db", str(db)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"qrispay serve did not start: {process.communicate()[1][-500:]}")
    return process, json.loads(line)["url"]


async def _through_service(cfg: Config, sandbox: Sandbox, base_url: str, tmp: Path) -> list[Figure]:
    process, url = _serve(sandbox, base_url, tmp / "serve.db")
    counter = iter(range(10**6))
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        policy = PollPolicy(ttl=30.0, idle_interval=60.0)
        async with (
            httpx.AsyncClient(base_url=url, headers=headers) as http,
            sandbox.mutation_client(base_url=base_url) as feed,
            sandbox.gateway_client(base_url=base_url) as gateway,
            SQLiteStore(tmp / "sdk.db") as store,
            Reconciler(feed, gateway=gateway, store=store, policy=policy) as rec,
        ):

            def amount() -> int:
                # Totals a thousand apart: no two invoices ever want one total.
                return 10_000 + 1000 * next(counter)

            async def service_create(rep: int) -> float:
                with Timer() as t:
                    for _ in range(cfg.block):
                        key = f"bench-{next(counter)}"
                        answer = await http.post(
                            "/v1/invoices",
                            json={"amount": amount()},
                            headers={"Idempotency-Key": key},
                        )
                        answer.raise_for_status()
                return t.elapsed / cfg.block

            async def sdk_create(rep: int) -> float:
                with Timer() as t:
                    for _ in range(cfg.block):
                        await rec.create_invoice(amount())
                return t.elapsed / cfg.block

            created = await interleaved(
                {"service": service_create, "sdk": sdk_create}, repeats=cfg.repeats, warmup=1
            )
            invoice = (
                await http.post(
                    "/v1/invoices", json={"amount": 5_000}, headers={"Idempotency-Key": "s"}
                )
            ).json()
            path = f"/v1/invoices/{invoice['invoice_id']}"

            async def service_status(rep: int) -> float:
                with Timer() as t:
                    for _ in range(cfg.block):
                        (await http.get(path)).raise_for_status()
                return t.elapsed / cfg.block

            async def sdk_status(rep: int) -> float:
                with Timer() as t:
                    for _ in range(cfg.block):
                        await gateway.get_invoice(invoice["invoice_id"])
                return t.elapsed / cfg.block

            status = await interleaved(
                {"service": service_status, "sdk": sdk_status}, repeats=cfg.repeats, warmup=1
            )
            reads = await _rate(http, path, cfg.read_seconds)
            health = await _rate(http, "/healthz", cfg.read_seconds)
    finally:
        process.terminate()
        process.communicate(timeout=15)
    cores = os.cpu_count() or 1
    return [
        figure(
            "serve: invoice create vs SDK create_invoice",
            created["service"] * 1e3,
            "ms/call",
            created["sdk"] * 1e3,
        ),
        figure(
            "serve: invoice status vs SDK get_invoice",
            status["service"] * 1e3,
            "ms/call",
            status["sdk"] * 1e3,
        ),
        figure(
            f"serve: status reads, {CONCURRENCY} concurrent, {cores} cores shared",
            reads,
            "req/s",
            health,
        ),
    ]


async def _rate(http: httpx.AsyncClient, path: str, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            (await http.get(path)).raise_for_status()
            done += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for _ in range(CONCURRENCY):
            tasks.start_soon(worker)
    return done / (time.perf_counter() - started)


# -- webhook latency ----------------------------------------------------------------------


async def _receiver(arrived: dict[str, float]) -> tuple[Any, int, Any]:
    """A keep-alive HTTP/1.1 receiver noting when each delivery arrived (by
    ``webhook-id``; "bare" for a POST without one)."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def answer(stream: Any) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            await _answer(stream)

    async def _answer(stream: Any) -> None:
        async with stream:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive()
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (x.partition(":") for x in lines[1:])
                }
                length = int(fields.get("content-length", "0"))
                while len(rest) < length:
                    rest += await stream.receive()
                data = rest[length:]
                arrived.setdefault(fields.get("webhook-id", "bare"), time.perf_counter())
                await stream.send(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    return listener, port, answer


async def _webhook_latency(cfg: Config, tmp: Path) -> list[Figure]:
    arrived: dict[str, float] = {}
    listener, port, answer = await _receiver(arrived)
    url = f"http://127.0.0.1:{port}/hook"
    latencies: list[float] = []
    bare: list[float] = []
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, answer)
        async with SQLiteStore(tmp / "hooks.db") as store:
            work = WebhookDispatcher(store, "m", [url], WebhookSigner([WHSEC]))
            await tasks.start(work.run)
            async with httpx.AsyncClient() as client:
                for n in range(cfg.deliveries):
                    event_id = f"e{n}"
                    event = (event_id, "payment.unmatched", json.dumps({"amount": 10_000 + n}))
                    await store.commit("m", Changes(meta=None, events=[event]))
                    committed = time.perf_counter()
                    work.wake()
                    while event_id not in arrived:  # noqa: ASYNC110 - a timing probe
                        await anyio.sleep(0.0005)
                    latencies.append(arrived[event_id] - committed)
                    body = event_body((await store.events_after("m", 0, 1))[0])
                    arrived.pop("bare", None)
                    before = time.perf_counter()
                    await client.post(url, content=body)
                    bare.append(arrived["bare"] - before)
        tasks.cancel_scope.cancel()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    bare50, bare99 = percentile(bare, 50), percentile(bare, 99)
    return [
        figure("webhook latency after commit, p50, vs bare POST", p50 * 1e3, "ms", bare50 * 1e3),
        figure("webhook latency after commit, p99, vs bare POST", p99 * 1e3, "ms", bare99 * 1e3),
    ]


async def run(cfg: Config) -> list[Figure]:
    sandbox = Sandbox(seed=3, gateway_balance=10**9)
    with (
        tempfile.TemporaryDirectory(prefix="qrispay-bench-serve-") as name,
        sandbox.serve(port=0) as base_url,
    ):
        tmp = Path(name)
        figures = await _through_service(cfg, sandbox, base_url, tmp)
        figures += await _webhook_latency(cfg, tmp)
    return figures


def main(cfg: Config) -> list[Figure]:
    figures: list[Figure] = anyio.run(run, cfg)
    return figures
