"""Figure 6: many merchants in one process, in real time.

One Reconciler per merchant, all in one event loop, against a loopback
server in a separate process holding one sandbox per merchant (so the
client's CPU is its own). The merchants share one ``httpx.AsyncClient``
(``http_client=``, httpx's default limits), as a platform serving many
merchants would; what a merchant's own default client costs to start is
measured apart (the start-up figure). The CPU baseline is bare pollers: a
GET and ``json.loads`` per fetch through the same shared client, at the
first step's rate.

The number of merchants ramps up in steps. Each step adds merchants with
their first fetch spread evenly over one poll interval (as merchants coming
online at different times would), waits for every one to have fetched once,
then observes ``observe_cycles`` intervals: every fetch start is compared
with its schedule (the previous start plus ``ttl + margin``), and a merchant
whose next fetch is overdue at the end counts as late too. A step is held
when no fetch is late by more than ``LATE`` s and none failed. The ramp stops
at the first step not held.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import attrs
import httpx

from qrispay import Invoice, InvoiceStatus, MutationBatch, MutationClient, PollPolicy, Reconciler

from ._harness import Figure, figure
from ._merchants_server import credentials

MARGIN = 0.5
LATE = 1.0
COLLAPSE = 3.0
FLOOR_INTERVAL = 5.0
STARTUP_MERCHANTS = 10


@attrs.frozen
class Config:
    ttl: float
    steps: tuple[int, ...]
    observe_cycles: int = 1


class _TimedFeed(MutationClient):
    """A feed client that notes when each fetch starts."""

    def __init__(self, merchant: str, base_url: str, http_client: httpx.AsyncClient | None):
        auth, token = credentials(merchant)
        super().__init__(auth, merchant, token, base_url=base_url, http_client=http_client)
        self.starts: list[float] = []
        self.first_due = 0.0

    def due(self, interval: float) -> float:
        """When the next fetch should start."""
        return self.starts[-1] + interval if self.starts else self.first_due

    async def fetch(self, *, max_retries: int | None = None) -> MutationBatch:
        self.starts.append(anyio.current_time())
        return await super().fetch(max_retries=max_retries)


@contextlib.contextmanager
def _server(ttl: float) -> Iterator[str]:
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._merchants_server", str(ttl)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url:
            raise RuntimeError("the merchants' server did not start")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _open_invoice(merchant: str) -> Invoice:
    # Keeps the Reconciler busy: it polls every ttl + margin, not at the idle interval.
    now = datetime.now(timezone.utc)
    return Invoice(
        invoice_id=f"{merchant}-1",
        amount=10_000,
        fee=1,
        total=10_001,
        status=InvoiceStatus.PENDING,
        qris_image="",
        expired_at=now + timedelta(days=1),
        created_at=now,
    )


@attrs.frozen
class _Step:
    merchants: int
    worst_lateness: float
    fetches: int
    cpu: float  # ms per fetch
    failures: int

    @property
    def held(self) -> bool:
        return self.worst_lateness <= LATE and self.failures == 0 and self.fetches > 0

    def __str__(self) -> str:
        verdict = "held" if self.held else "LATE"
        return (
            f"{self.merchants} merchants {verdict}: worst {self.worst_lateness:+.2f} s, "
            f"{self.fetches} fetches, {self.cpu:.2f} ms CPU each, {self.failures} failed"
        )


async def _bare_cpu(
    base_url: str, client: httpx.AsyncClient, rate: float, interval: float
) -> float:
    """CPU ms per fetch of bare pollers: a GET and ``json.loads`` on a fixed
    schedule, through the same shared client, at ``rate`` fetches per second
    (the ramp's first step's rate, on an interval of ``interval`` s)."""
    count = max(1, round(rate * interval))
    started = 0
    counting = False

    async def poller(i: int) -> None:
        nonlocal started
        auth, token = credentials(f"B{i}")
        query = {"merchant": f"B{i}", "auth": auth, "token": token}
        due = anyio.current_time() + i * interval / count
        while True:
            await anyio.sleep_until(due)
            started += counting
            json.loads((await client.get(f"{base_url}/check-payment", params=query)).content)
            due += interval

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(poller, i)
        await anyio.sleep(interval + LATE)
        counting, cpu = True, time.process_time()
        await anyio.sleep(interval)
        cpu = time.process_time() - cpu
        tg.cancel_scope.cancel()
    return cpu / max(started, 1) * 1e3


async def _startup_cpu(base_url: str, shared: httpx.AsyncClient | None) -> float:
    """CPU seconds to make a merchant's feed client and fetch once."""
    cpu = time.process_time()
    for i in range(STARTUP_MERCHANTS):
        async with _TimedFeed(f"S{i}", base_url, shared) as feed:
            await feed.fetch()
    return (time.process_time() - cpu) / STARTUP_MERCHANTS


async def _ramp(cfg: Config, base_url: str, shared: httpx.AsyncClient) -> list[_Step]:
    interval = cfg.ttl + MARGIN
    policy = PollPolicy(ttl=cfg.ttl, margin=MARGIN)
    feeds: list[_TimedFeed] = []
    recs: list[Reconciler] = []
    steps: list[_Step] = []

    async def merchant(name: str, start: float) -> None:
        # Made when it comes online, so adding merchants never blocks the loop at once.
        await anyio.sleep_until(start)
        feed = _TimedFeed(name, base_url, shared)
        feed.first_due = start
        rec = Reconciler(feed, policy=policy)
        feeds.append(feed)
        recs.append(rec)
        rec.track(_open_invoice(name))
        await rec.run()

    async with anyio.create_task_group() as tg:
        made = 0
        for count in cfg.steps:
            added, now = count - made, anyio.current_time()
            for i in range(added):
                tg.start_soon(merchant, f"M{made + i}", now + i * interval / added)
            made = count
            # Every new merchant has fetched once (and so has a schedule) after this.
            # Adding them is a load spike of its own: only a collapse ends the step here.
            spike = await _watch(feeds, interval, now + interval + LATE, COLLAPSE)
            if spike > COLLAPSE:
                steps.append(_Step(count, spike, 0, math.nan, 0))
                print(f"  {steps[-1]} (while adding merchants)", file=sys.stderr, flush=True)
                break
            failures = sum(rec.stats.failures for rec in recs)
            begin, cpu = anyio.current_time(), time.process_time()
            await _watch(feeds, interval, begin + interval * cfg.observe_cycles, LATE)
            end, cpu = anyio.current_time(), time.process_time() - cpu
            step = _judge(feeds, begin, end, interval, cpu, recs, failures)
            if len(feeds) < count:  # some never even came online: as late as the last one
                worst = max(step.worst_lateness, end - now - interval)
                step = attrs.evolve(step, merchants=count, worst_lateness=worst)
            steps.append(step)
            print(f"  {steps[-1]}", file=sys.stderr, flush=True)
            if not steps[-1].held:
                break
        tg.cancel_scope.cancel()
    return steps


def _overdue(feeds: list[_TimedFeed], interval: float, now: float) -> float:
    """How late the most overdue fetch is at ``now`` (negative: none is due yet)."""
    return now - min((feed.due(interval) for feed in feeds), default=now)


async def _watch(feeds: list[_TimedFeed], interval: float, until: float, limit: float) -> float:
    """Sleep until ``until``, or until a fetch is ``limit`` s overdue. A lost
    step ends at once: past saturation requests queue in httpx's pool, which
    scans its whole queue for every request it serves, and the loop collapses.
    Returns how overdue the most overdue fetch was when it returned."""
    while True:
        now = anyio.current_time()
        overdue = _overdue(feeds, interval, now)
        if now >= until or overdue > limit:
            return overdue
        await anyio.sleep(min(0.5, until - now))


def _judge(
    feeds: list[_TimedFeed],
    begin: float,
    end: float,
    interval: float,
    cpu: float,
    recs: list[Reconciler],
    failures_before: int,
) -> _Step:
    # A fetch that should have started by the end and has not is late too.
    worst = _overdue(feeds, interval, end)
    fetches = 0
    for feed in feeds:
        for before, start in itertools.pairwise(feed.starts):
            if begin <= start < end:
                fetches += 1
                worst = max(worst, start - (before + interval))
    failures = sum(rec.stats.failures for rec in recs) - failures_before
    return _Step(len(feeds), worst, fetches, cpu / max(fetches, 1) * 1e3, failures)


async def run(cfg: Config) -> list[Figure]:
    interval = cfg.ttl + MARGIN
    with _server(cfg.ttl) as base_url:
        async with httpx.AsyncClient() as client:
            own = await _startup_cpu(base_url, None)
            shared = await _startup_cpu(base_url, client)
            # A shorter interval at the same rate: the same load, in less time.
            rate = cfg.steps[0] / interval
            floor = await _bare_cpu(base_url, client, rate, min(interval, FLOOR_INTERVAL))
            steps = await _ramp(cfg, base_url, client)
    held = [step for step in steps if step.held]
    best = held[-1] if held else steps[0]
    label = f"ttl {cfg.ttl:g} s" + ("" if cfg.ttl == 30 else " SHORTENED")
    bound = " (lower bound)" if steps[-1].held else ""
    return [
        figure(
            f"merchants held, {label}{bound} vs bare capacity",
            best.merchants if held else 0,
            "merchants",
            interval / floor * 1e3,
        ),
        figure(
            f"CPU/fetch at {steps[0].merchants} merchants vs bare pollers",
            steps[0].cpu,
            "ms",
            floor,
        ),
        figure(
            f"worst lateness at {best.merchants} merchants vs {LATE:g} s",
            best.worst_lateness,
            "s",
            LATE,
            max_value=LATE,
        ),
        figure("merchant start-up CPU, own client vs shared", own * 1e3, "ms", shared * 1e3),
    ]


def main(cfg: Config) -> list[Figure]:
    figures: list[Figure] = anyio.run(run, cfg)
    return figures
