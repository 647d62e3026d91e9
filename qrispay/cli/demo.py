"""``qrispay demo``: a complete reconciliation against an in-process sandbox.

No network, no credentials. A simulated shop creates five invoices through
the gateway client; five simulated customers pay them in five ways (on time,
late, a wrong amount, twice, never); the Reconciler polls the simulated feed
and says what happened, as it happens; a summary closes the run.

The sandbox runs on a *scaled clock*: at ``speed=1`` it is the wall clock
(the run takes about ten seconds); at ``speed=4`` everything, the feed's
cache, the invoices' lifetime and the poll schedule, runs four times faster.
The timeline, in demo seconds:

======  =================================================================
0       the Reconciler's first fetch; five invoices are created (5 s TTL)
1-1.5   Ani pays, Dewi pays, Citra pays her amount without the unique code
2.5     fetch: Ani and Dewi PAID, Citra's credit UNMATCHED
3       Dewi pays a second time
5       fetch: Dewi's second payment is a DUPLICATE
7.5     fetch, and the gateway asked: Budi, Citra and Eko EXPIRED
8       Budi pays after all
10      fetch: Budi's payment is LATE
======  =================================================================
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from ..engine import ReconciliationEngine
from ..errors import EventsOverflowError, InvoiceExpiredError, ReconcilerStoppedError
from ..events import DuplicatePayment, Event, InvoicePaid, LatePayment, UnmatchedCredit
from ..models import Invoice
from ..polling import PollPolicy
from ..reconciler import EventSubscription, Reconciler
from ._demo_screen import Screen, clock_time, invoice_table, summary
from ._demo_story import (
    BRANDS,
    DEADLINE,
    FEED_TTL,
    INVOICE_TTL,
    LATE_GRACE,
    MARGIN,
    PAYERS,
    SKEW,
    VERDICTS,
    DemoResult,
    Payer,
    ScaledClock,
)
from ._exit import ExitCode
from .argtypes import command, seconds
from .context import Ctx
from .output import Style, describe_event, event_kind, event_label, format_rupiah, wants_colour

if TYPE_CHECKING:
    from ..sandbox import Sandbox

__all__ = ["PAYERS", "VERDICTS", "DemoResult", "Payer", "register", "run_demo"]


async def run_demo(
    *, out: TextIO | None = None, speed: float = 1.0, colour: bool | None = None
) -> DemoResult:
    """Run the demo, writing to ``out`` (default ``sys.stdout``), and return what
    happened. ``speed`` > 1 runs faster (tests use 4 or more). ``colour``: None
    decides from ``out`` (a terminal, ``NO_COLOR`` unset)."""
    from ..sandbox import Sandbox  # needs the sandbox extra

    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < speed <= 20:
        raise ValueError(f"speed must be a number above 0 and at most 20, not {speed!r}")
    stream = out if out is not None else sys.stdout
    live = wants_colour(stream)
    style = Style(live if colour is None else colour)
    screen = Screen(stream, style, live)
    clock = ScaledClock(speed)
    real = 1.0 / speed

    sandbox = Sandbox(
        ttl=FEED_TTL,
        clock=clock,
        invoice_ttl=timedelta(seconds=INVOICE_TTL),
        seed=2025,
    )
    engine = ReconciliationEngine(started_at=clock(), skew=SKEW, late_grace=LATE_GRACE)
    policy = PollPolicy(
        ttl=FEED_TTL * real, margin=MARGIN * real, idle_interval=None, max_backoff=5 * real
    )
    _intro(screen, speed)
    started = time.monotonic()
    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        rec = Reconciler(feed, gateway=gateway, engine=engine, policy=policy, clock=clock)
        run = _Run(sandbox, rec, screen, speed, started)
        polls, failures = await run.play()
    screen.clear_status()
    result = run.result(polls, failures)
    summary(screen, style, result)
    return result


def _intro(screen: Screen, speed: float) -> None:
    screen.line(
        screen.style("qrispay demo", "bold") + ": a simulated shop, no network, no credentials."
    )
    screen.line(
        f"The simulated feed caches each answer {FEED_TTL:g} s, so the Reconciler fetches it "
        f"every {FEED_TTL + MARGIN:g} s; invoices expire after {INVOICE_TTL} s."
    )
    if speed != 1:
        screen.line(f"Running {speed:g}x faster: the times below are demo seconds.")


class _Run:
    """One run of the demo: the customers, the event printer, and what they saw."""

    def __init__(
        self, sandbox: Sandbox, rec: Reconciler, screen: Screen, speed: float, started: float
    ) -> None:
        self.sandbox = sandbox
        self.rec = rec
        self.screen = screen
        self.speed = speed
        self.real = 1.0 / speed
        self.started = started
        self.by_invoice: dict[str, Payer] = {}
        self.by_reff: dict[str, Payer] = {}
        self.outcomes: dict[str, list[str]] = {payer.name: [] for payer in PAYERS}
        self.counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
        self.payments = 0
        self.judged = 0
        self.payers_left = len(PAYERS)
        self.done = anyio.Event()

    async def play(self) -> tuple[int, int]:
        """Create the invoices, let the customers pay and print the events until
        every payment is judged (or the deadline); the polls and failures."""
        rec, screen = self.rec, self.screen
        subscription = rec.events()
        async with anyio.create_task_group() as tasks:
            async with rec:  # the first fetch happens here
                invoices = [await rec.create_invoice(payer.amount) for payer in PAYERS]
                for payer, invoice in zip(PAYERS, invoices, strict=True):
                    self.by_invoice[invoice.invoice_id] = payer
                screen.line()
                screen.line(
                    "Five customers get invoices; the gateway adds a unique code so that "
                    "every total differs:"
                )
                screen.line()
                screen.line(invoice_table(invoices, screen.style))
                screen.line()
                tasks.start_soon(self.printer, subscription)
                if screen.live:
                    tasks.start_soon(self.ticker)
                for payer, invoice in zip(PAYERS, invoices, strict=True):
                    tasks.start_soon(self.customer, payer, invoice)
                with anyio.move_on_after(DEADLINE * self.real):
                    await self.done.wait()
                polls, failures = rec.stats.polls, rec.stats.failures
            tasks.cancel_scope.cancel()
        await subscription.aclose()
        return polls, failures

    def result(self, polls: int, failures: int) -> DemoResult:
        """What the run saw."""
        return DemoResult(
            counts=dict(self.counts),
            outcomes={name: tuple(kinds) for name, kinds in self.outcomes.items()},
            expected={payer.name: payer.expected for payer in PAYERS},
            payments=self.payments,
            polls=polls,
            failures=failures,
            elapsed=time.monotonic() - self.started,
            complete=self.done.is_set(),
        )

    def stamp(self) -> str:
        elapsed = (time.monotonic() - self.started) * self.speed
        open_now = len(self.rec.engine.open_invoices())
        return f"[{elapsed:5.1f}s  poll {self.rec.stats.polls:>2}  {open_now} open]"

    def check_done(self) -> None:
        settled = self.payers_left == 0 and self.judged >= self.payments
        if settled and not self.rec.engine.open_invoices():
            self.done.set()

    def invoice_name(self, invoice: Invoice) -> str:
        payer = self.by_invoice.get(invoice.invoice_id)
        return f"{payer.name}'s invoice" if payer else f"invoice {invoice.invoice_id}"

    async def pay(self, payer: Payer, total: int, why: str) -> None:
        row = self.sandbox.pay(total, brand=BRANDS[payer.name])
        self.by_reff[row.issuer_reff] = payer
        self.payments += 1
        self.screen.line(
            f"{self.stamp()}  {payer.name} pays {format_rupiah(total)} with {row.brand_name}{why}"
        )

    async def customer(self, payer: Payer, invoice: Invoice) -> None:
        real = self.real
        try:
            if payer.behaviour == "on_time":
                await anyio.sleep(1.0 * real)
                await self.pay(payer, invoice.total, "")
            elif payer.behaviour == "double":
                await anyio.sleep(1.2 * real)
                await self.pay(payer, invoice.total, "")
                await anyio.sleep(1.8 * real)
                await self.pay(payer, invoice.total, " again (by mistake)")
            elif payer.behaviour == "wrong_amount":
                await anyio.sleep(1.5 * real)
                await self.pay(payer, invoice.amount, f", not {format_rupiah(invoice.total)}")
            elif payer.behaviour == "late":
                try:
                    await self.rec.wait_for_payment(invoice.invoice_id)
                except InvoiceExpiredError:
                    await anyio.sleep(0.5 * real)
                    await self.pay(payer, invoice.total, ", after the invoice expired")
        except ReconcilerStoppedError:  # the demo was interrupted: nothing to do
            pass
        finally:
            self.payers_left -= 1
            self.check_done()

    def attribute(self, event: Event) -> Payer | None:
        invoice = getattr(event, "invoice", None)
        if isinstance(invoice, Invoice) and invoice.invoice_id in self.by_invoice:
            return self.by_invoice[invoice.invoice_id]
        mutation = getattr(event, "mutation", None)
        reff = getattr(mutation, "issuer_reff", None)
        return self.by_reff.get(reff) if isinstance(reff, str) else None

    def judge(self, event: Event) -> None:
        kind = event_kind(event)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        payer = self.attribute(event)
        if payer is not None and kind in VERDICTS:
            self.outcomes[payer.name].append(kind)
        if isinstance(event, (InvoicePaid, LatePayment, DuplicatePayment, UnmatchedCredit)):
            self.judged += 1
        text = describe_event(event, name=self.invoice_name, when=clock_time)
        if isinstance(event, UnmatchedCredit) and payer is not None:
            text = f"{payer.name}'s credit fits no invoice: " + text.split(": ", 1)[1]
        self.screen.line(f"{self.stamp()}  {event_label(event, self.screen.style)}  {text}")
        self.check_done()

    async def printer(self, subscription: EventSubscription) -> None:
        try:
            async for event in subscription:
                self.judge(event)
        except EventsOverflowError:  # pragma: no cover - 1000 events of buffer
            self.screen.line("the event buffer overflowed; the summary may be incomplete")

    async def ticker(self) -> None:
        while True:
            self.screen.status(f"{self.stamp()}  watching the feed... (Ctrl-C to stop)")
            await anyio.sleep(0.25)


# -- the command ----------------------------------------------------------------------


def _run_demo(args: argparse.Namespace, ctx: Ctx) -> int:
    out = io.StringIO() if ctx.json else ctx.out
    try:
        result = anyio.run(lambda: run_demo(out=out, speed=args.speed))
    except KeyboardInterrupt:
        ctx.note("\nqrispay demo: stopped.")
        return ExitCode.INTERRUPTED
    if ctx.json:
        ctx.emit(
            {
                "ok": result.ok,
                "complete": result.complete,
                "counts": result.counts,
                "outcomes": result.outcomes,
                "expected": result.expected,
                "payments": result.payments,
                "polls": result.polls,
                "failures": result.failures,
                "elapsed": round(result.elapsed, 3),
            }
        )
    return ExitCode.OK if result.ok else ExitCode.ERROR


def register(commands: Any) -> None:
    """Add ``demo`` to the ``commands`` sub-parsers."""
    p = command(
        commands, "demo", "a complete reconciliation against a simulator, in ~10 s", _run_demo
    )
    p.add_argument(
        "--speed", type=seconds, default=1.0, metavar="FACTOR", help="run FACTOR times faster"
    )
