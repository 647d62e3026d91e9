"""Figure 5: quota and detection latency over a virtual hour.

trio's ``MockClock(autojump_threshold=0)`` drives an in-process sandbox whose
``LoopClock`` reads the same virtual time, so an hour takes seconds. Invoices
are created at random in the first 45 minutes (15 minutes' validity); most
are paid at a random moment of their life. The same plan runs twice:

* the Reconciler: one feed fetch per ``ttl + margin`` serves every invoice;
* the usual public pattern: one poller per open invoice, asking the feed
  every 5 s and scanning the answer for its total, until paid or expired.

The sandbox enforces a quota (``QUOTA`` requests per ``QUOTA_PERIOD`` s),
which the per-invoice pollers run into. Latency is the virtual time from the
payment to its detection (the ``InvoicePaid`` event, or the poller's match).
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone

import anyio
import attrs
import httpx
import trio.testing

from qrispay import InvoicePaid, PollPolicy, Reconciler
from qrispay._http import asgi_transport
from qrispay.sandbox import SANDBOX_URL, LoopClock, Sandbox

from ._harness import Figure, figure, percentile

START = datetime(2025, 1, 1, 2, 0, tzinfo=timezone.utc)
HOUR = 3600.0
TTL, MARGIN = 30.0, 0.5
# An assumption, not a documented figure: one request a second on average.
QUOTA, QUOTA_PERIOD = 60, 60.0
POLL_EVERY = 5.0
SEED = 2025


@attrs.frozen
class Config:
    invoices: int


@attrs.frozen
class _Plan:
    create_at: float
    amount: int
    pay_after: float | None


@attrs.define
class _Outcome:
    requests: int = 0
    rate_limited: int = 0
    payments: int = 0
    latencies: list[float] = attrs.Factory(list)


def _plan(count: int) -> list[_Plan]:
    rng = random.Random(SEED)
    # Distinct amounts: totals never collide, so no creation is ever retried.
    return [
        _Plan(
            create_at=rng.uniform(0, 2700),
            amount=10_000 + 1000 * i,
            pay_after=rng.uniform(5, 600) if rng.random() < 0.8 else None,
        )
        for i in range(count)
    ]


def _sandbox(clock: LoopClock) -> Sandbox:
    return Sandbox(ttl=TTL, clock=clock, seed=SEED, quota=QUOTA, quota_period=QUOTA_PERIOD)


async def _reconciler_hour(plan: list[_Plan]) -> _Outcome:
    clock = LoopClock(START)
    clock()  # virtual time 0 is now
    sandbox = _sandbox(clock)
    out = _Outcome()
    paid_at: dict[str, float] = {}
    async with sandbox.mutation_client() as feed, sandbox.gateway_client() as gateway:
        rec = Reconciler(
            feed, gateway=gateway, clock=clock, policy=PollPolicy(ttl=TTL, margin=MARGIN)
        )

        async def customer(step: _Plan, start: float) -> None:
            await anyio.sleep_until(start + step.create_at)
            invoice = await rec.create_invoice(step.amount)
            if step.pay_after is not None:
                await anyio.sleep(step.pay_after)
                sandbox.pay(invoice.total)
                paid_at[invoice.invoice_id] = anyio.current_time()
                out.payments += 1

        async def listen(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with rec.events() as events:
                task_status.started()
                async for event in events:
                    if isinstance(event, InvoicePaid):
                        paid = paid_at[event.invoice.invoice_id]
                        out.latencies.append(anyio.current_time() - paid)

        async with anyio.create_task_group() as tg:
            await tg.start(listen)
            start = anyio.current_time()
            await tg.start(rec.run)
            for step in plan:
                tg.start_soon(customer, step, start)
            await anyio.sleep_until(start + HOUR)
            tg.cancel_scope.cancel()
    out.requests = sandbox.stats.feed_fetches
    out.rate_limited = sandbox.stats.rate_limited
    return out


async def _pollers_hour(plan: list[_Plan]) -> _Outcome:
    clock = LoopClock(START)
    clock()
    sandbox = _sandbox(clock)
    out = _Outcome()
    query = {"auth": sandbox.auth, "merchant": sandbox.merchant, "token": sandbox.token}
    transport = asgi_transport(sandbox.app)
    async with (
        sandbox.gateway_client() as gateway,
        httpx.AsyncClient(transport=transport, base_url=SANDBOX_URL) as http,
    ):

        async def customer(step: _Plan, start: float) -> None:
            await anyio.sleep_until(start + step.create_at)
            invoice = await gateway.create_invoice(step.amount)
            paid_at: list[float] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll, invoice.total, invoice.expired_at, paid_at)
                if step.pay_after is not None:
                    await anyio.sleep(step.pay_after)
                    sandbox.pay(invoice.total)
                    paid_at.append(anyio.current_time())
                    out.payments += 1

        async def poll(total: int, expired_at: datetime, paid_at: list[float]) -> None:
            while clock() <= expired_at:
                response = await http.get("/check-payment", params=query)
                if response.status_code == 200:
                    for row in response.json()["data"]:
                        if row["type"] == "CR" and int(row["amount"]) == total:
                            out.latencies.append(anyio.current_time() - paid_at[0])
                            return
                await anyio.sleep(POLL_EVERY)

        async with anyio.create_task_group() as tg:
            start = anyio.current_time()
            for step in plan:
                tg.start_soon(customer, step, start)
            await anyio.sleep_until(start + HOUR)
            tg.cancel_scope.cancel()
    out.requests = sandbox.stats.feed_fetches
    out.rate_limited = sandbox.stats.rate_limited
    return out


def _virtual(fn: object, plan: list[_Plan]) -> _Outcome:
    outcome: _Outcome = anyio.run(
        fn,  # type: ignore[arg-type]
        plan,
        backend="trio",
        backend_options={"clock": trio.testing.MockClock(autojump_threshold=0)},
    )
    return outcome


def _latency_figures(who: str, out: _Outcome, *, bound: float | None) -> list[Figure]:
    # With payments at uniformly random times and one fetch per interval, the
    # cache alone makes the latency uniform on [0, interval]: that is the floor.
    interval = TTL + MARGIN
    latencies = out.latencies
    missed = out.payments - len(latencies)
    return [
        figure(f"{who}: latency p50 vs cache floor", percentile(latencies, 50), "s", interval / 2),
        figure(
            f"{who}: latency p99 vs cache floor", percentile(latencies, 99), "s", 0.99 * interval
        ),
        figure(
            f"{who}: latency max vs cache floor",
            max(latencies, default=math.nan),
            "s",
            interval,
            max_value=bound,
        ),
        figure(
            f"{who}: missed payments vs payments",
            missed,
            "payments",
            out.payments,
            max_value=None if bound is None else 0,
        ),
    ]


def main(cfg: Config) -> list[Figure]:
    plan = _plan(cfg.invoices)
    minimum = HOUR / (TTL + MARGIN)
    rec = _virtual(_reconciler_hour, plan)
    naive = _virtual(_pollers_hour, plan)
    return [
        figure(
            "Reconciler: feed requests/hour vs min",
            rec.requests,
            "requests",
            minimum,
            max_value=minimum + 1,
        ),
        figure(
            "Reconciler: 429s vs requests", rec.rate_limited, "requests", rec.requests, max_value=0
        ),
        *_latency_figures("Reconciler", rec, bound=TTL + MARGIN + 1),
        figure("5 s pollers: feed requests/hour vs min", naive.requests, "requests", minimum),
        figure("5 s pollers: 429s vs requests", naive.rate_limited, "requests", naive.requests),
        *_latency_figures("5 s pollers", naive, bound=None),
    ]
