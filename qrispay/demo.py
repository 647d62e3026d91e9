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

import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TextIO

import anyio
import attrs

from ._tables import (
    Style,
    describe_event,
    event_kind,
    event_label,
    format_rupiah,
    format_time,
    key_values,
    table,
    wants_colour,
)
from .engine import ReconciliationEngine
from .errors import EventsOverflowError, InvoiceExpiredError, ReconcilerStoppedError
from .events import (
    DuplicatePayment,
    Event,
    InvoicePaid,
    LatePayment,
    UnmatchedCredit,
)
from .models import Invoice
from .polling import PollPolicy
from .reconciler import Reconciler

__all__ = ["PAYERS", "DemoResult", "Payer", "run_demo"]

# The demo's settings, in demo seconds (divided by ``speed`` for wall time).
FEED_TTL = 2.0  # the simulated feed caches each answer this long
MARGIN = 0.5  # so the Reconciler fetches every 2.5 s
INVOICE_TTL = 5  # whole seconds: the gateway shows whole seconds
SKEW = timedelta(seconds=1)
LATE_GRACE = timedelta(seconds=30)
DEADLINE = 40.0  # give up waiting after this long (it never takes half of it)

#: The verdicts the summary always shows, in order, with what each one asks of a merchant.
VERDICTS: dict[str, str] = {
    "paid": "the invoice is paid: deliver",
    "late": "paid after the invoice expired: refund, or honour it by hand",
    "duplicate": "paid twice: refund the second payment",
    "unmatched": "fits no invoice (a wrong amount?): find the payer",
    "expired": "not paid in time",
}


@attrs.frozen
class Payer:
    """A simulated customer: who, how much, how they pay, and what should happen."""

    name: str
    amount: int
    behaviour: str  # "on_time", "late", "wrong_amount", "double", "never"
    story: str
    expected: tuple[str, ...]


PAYERS: tuple[Payer, ...] = (
    Payer("Ani", 25_000, "on_time", "pays on time", ("paid",)),
    Payer("Budi", 40_000, "late", "pays after expiry", ("expired", "late")),
    Payer("Citra", 15_000, "wrong_amount", "forgets the code", ("unmatched", "expired")),
    Payer("Dewi", 25_000, "double", "pays twice", ("paid", "duplicate")),
    Payer("Eko", 10_000, "never", "never pays", ("expired",)),
)


@attrs.frozen
class DemoResult:
    """What a demo run saw. ``counts``: events by verdict (the five of
    ``VERDICTS`` always, others only if they happened). ``outcomes``: each
    payer's verdicts, in the order they came. ``complete``: every payment was
    judged and every invoice closed before the deadline."""

    counts: Mapping[str, int]
    outcomes: Mapping[str, tuple[str, ...]]
    expected: Mapping[str, tuple[str, ...]]
    payments: int
    polls: int
    failures: int
    elapsed: float
    complete: bool

    @property
    def ok(self) -> bool:
        """Complete, and every payer landed in the expected verdicts."""
        return self.complete and all(
            sorted(self.outcomes.get(name, ())) == sorted(expected)
            for name, expected in self.expected.items()
        )


class ScaledClock:
    """Aware UTC time running ``speed`` times as fast as the wall clock, from now."""

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        self.speed = speed
        self._start = start or datetime.now(timezone.utc)
        self._origin = time.monotonic()

    def __call__(self) -> datetime:
        elapsed = (time.monotonic() - self._origin) * self.speed
        return self._start + timedelta(seconds=elapsed)


class _Screen:
    """Event lines, plus a live status line on a terminal."""

    def __init__(self, out: TextIO, style: Style, live: bool) -> None:
        self.out = out
        self.style = style
        self.live = live
        self._status = False

    def line(self, text: str = "") -> None:
        self.clear_status()
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        if self.live:
            self.out.write("\r\033[K" + self.style(text, "dim"))
            self.out.flush()
            self._status = True

    def clear_status(self) -> None:
        if self._status:
            self.out.write("\r\033[K")
            self._status = False


async def run_demo(
    *, out: TextIO | None = None, speed: float = 1.0, colour: bool | None = None
) -> DemoResult:
    """Run the demo, writing to ``out`` (default ``sys.stdout``), and return what
    happened. ``speed`` > 1 runs faster (tests use 4 or more). ``colour``: None
    decides from ``out`` (a terminal, ``NO_COLOR`` unset)."""
    from .sandbox import Sandbox  # needs the sandbox extra

    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0 < speed <= 20:
        raise ValueError(f"speed must be a number above 0 and at most 20, not {speed!r}")
    stream = out if out is not None else sys.stdout
    live = wants_colour(stream)
    style = Style(live if colour is None else colour)
    screen = _Screen(stream, style, live)
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

    screen.line(style("qrispay demo", "bold") + ": a simulated shop, no network, no credentials.")
    screen.line(
        f"The simulated feed caches each answer {FEED_TTL:g} s, so the Reconciler fetches it "
        f"every {FEED_TTL + MARGIN:g} s; invoices expire after {INVOICE_TTL} s."
    )
    if speed != 1:
        screen.line(f"Running {speed:g}x faster: the times below are demo seconds.")

    by_invoice: dict[str, Payer] = {}
    by_reff: dict[str, Payer] = {}
    outcomes: dict[str, list[str]] = {payer.name: [] for payer in PAYERS}
    counts: dict[str, int] = dict.fromkeys(VERDICTS, 0)
    payments = 0
    judged = 0
    payers_left = len(PAYERS)
    done = anyio.Event()
    started = time.monotonic()

    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        rec = Reconciler(feed, gateway=gateway, engine=engine, policy=policy, clock=clock)
        subscription = rec.events()

        def stamp() -> str:
            elapsed = (time.monotonic() - started) * speed
            return (
                f"[{elapsed:5.1f}s  poll {rec.stats.polls:>2}  {len(engine.open_invoices())} open]"
            )

        def check_done() -> None:
            if payers_left == 0 and judged >= payments and not engine.open_invoices():
                done.set()

        def invoice_name(invoice: Invoice) -> str:
            payer = by_invoice.get(invoice.invoice_id)
            return f"{payer.name}'s invoice" if payer else f"invoice {invoice.invoice_id}"

        async def pay(payer: Payer, total: int, why: str) -> None:
            nonlocal payments
            row = sandbox.pay(total, brand=_BRANDS[payer.name])
            by_reff[row.issuer_reff] = payer
            payments += 1
            screen.line(
                f"{stamp()}  {payer.name} pays {format_rupiah(total)} with {row.brand_name}{why}"
            )

        async def customer(payer: Payer, invoice: Invoice) -> None:
            nonlocal payers_left
            try:
                if payer.behaviour == "on_time":
                    await anyio.sleep(1.0 * real)
                    await pay(payer, invoice.total, "")
                elif payer.behaviour == "double":
                    await anyio.sleep(1.2 * real)
                    await pay(payer, invoice.total, "")
                    await anyio.sleep(1.8 * real)
                    await pay(payer, invoice.total, " again (by mistake)")
                elif payer.behaviour == "wrong_amount":
                    await anyio.sleep(1.5 * real)
                    await pay(payer, invoice.amount, f", not {format_rupiah(invoice.total)}")
                elif payer.behaviour == "late":
                    try:
                        await rec.wait_for_payment(invoice.invoice_id)
                    except InvoiceExpiredError:
                        await anyio.sleep(0.5 * real)
                        await pay(payer, invoice.total, ", after the invoice expired")
            except ReconcilerStoppedError:  # the demo was interrupted: nothing to do
                pass
            finally:
                payers_left -= 1
                check_done()

        def attribute(event: Event) -> Payer | None:
            invoice = getattr(event, "invoice", None)
            if isinstance(invoice, Invoice) and invoice.invoice_id in by_invoice:
                return by_invoice[invoice.invoice_id]
            mutation = getattr(event, "mutation", None)
            reff = getattr(mutation, "issuer_reff", None)
            return by_reff.get(reff) if isinstance(reff, str) else None

        async def printer() -> None:
            nonlocal judged
            try:
                async for event in subscription:
                    kind = event_kind(event)
                    counts[kind] = counts.get(kind, 0) + 1
                    payer = attribute(event)
                    if payer is not None and kind in VERDICTS:
                        outcomes[payer.name].append(kind)
                    if isinstance(
                        event, (InvoicePaid, LatePayment, DuplicatePayment, UnmatchedCredit)
                    ):
                        judged += 1
                    text = describe_event(event, name=invoice_name, when=_clock_time)
                    if isinstance(event, UnmatchedCredit) and payer is not None:
                        text = f"{payer.name}'s credit fits no invoice: " + text.split(": ", 1)[1]
                    screen.line(f"{stamp()}  {event_label(event, style)}  {text}")
                    check_done()
            except EventsOverflowError:  # pragma: no cover - 1000 events of buffer
                screen.line("the event buffer overflowed; the summary may be incomplete")

        async def ticker() -> None:
            while True:
                screen.status(f"{stamp()}  watching the feed... (Ctrl-C to stop)")
                await anyio.sleep(0.25)

        async with anyio.create_task_group() as tasks:
            async with rec:  # the first fetch happens here
                invoices = [await rec.create_invoice(payer.amount) for payer in PAYERS]
                for payer, invoice in zip(PAYERS, invoices, strict=True):
                    by_invoice[invoice.invoice_id] = payer
                screen.line()
                screen.line(
                    "Five customers get invoices; the gateway adds a unique code so that "
                    "every total differs:"
                )
                screen.line()
                screen.line(_invoice_table(invoices, style))
                screen.line()
                tasks.start_soon(printer)
                if live:
                    tasks.start_soon(ticker)
                for payer, invoice in zip(PAYERS, invoices, strict=True):
                    tasks.start_soon(customer, payer, invoice)
                with anyio.move_on_after(DEADLINE * real):
                    await done.wait()
                polls, failures = rec.stats.polls, rec.stats.failures
            tasks.cancel_scope.cancel()
        await subscription.aclose()

    screen.clear_status()
    result = DemoResult(
        counts=dict(counts),
        outcomes={name: tuple(kinds) for name, kinds in outcomes.items()},
        expected={payer.name: payer.expected for payer in PAYERS},
        payments=payments,
        polls=polls,
        failures=failures,
        elapsed=time.monotonic() - started,
        complete=done.is_set(),
    )
    _summary(screen, style, result)
    return result


def _clock_time(when: datetime) -> str:
    return format_time(when)[11:]


_BRANDS = {"Ani": "GOPAY", "Budi": "OVO", "Citra": "DANA", "Dewi": "SHOPEEPAY", "Eko": "GOPAY"}


def _invoice_table(invoices: list[Invoice], style: Style) -> str:
    rows = [
        (
            payer.name,
            invoice.invoice_id,
            format_rupiah(invoice.amount),
            invoice.fee,
            format_rupiah(invoice.total),
            _clock_time(invoice.expired_at),
            payer.story,
        )
        for payer, invoice in zip(PAYERS, invoices, strict=True)
    ]
    return table(
        ("customer", "invoice", "amount", "code", "total", "expires", "will"),
        rows,
        right=(2, 3, 4),
        indent="  ",
        style=style,
    )


def _summary(screen: _Screen, style: Style, result: DemoResult) -> None:
    line: Callable[[str], None] = screen.line
    line("")
    line(
        style("Summary", "bold")
        + f": {result.elapsed:.1f} s, {result.polls} feed fetches ({result.failures} failed), "
        f"{len(result.expected)} invoices, {result.payments} payments"
    )
    line("")
    extra = [kind for kind in result.counts if kind not in VERDICTS and result.counts[kind]]
    rows = [(kind, result.counts.get(kind, 0), VERDICTS[kind]) for kind in VERDICTS]
    rows += [(kind, result.counts[kind], "unexpected in this demo") for kind in extra]
    line(table(("verdict", "count", "meaning"), rows, right=(1,), indent="  ", style=style))
    line("")
    payer_rows = []
    for payer in PAYERS:
        got = result.outcomes.get(payer.name, ())
        ok = sorted(got) == sorted(payer.expected)
        payer_rows.append(
            (payer.name, payer.story, ", ".join(got) or "nothing", "yes" if ok else "NO")
        )
    line(table(("customer", "story", "outcome", "as expected"), payer_rows, indent="  "))
    line("")
    if not result.complete:
        line(
            "The demo stopped waiting before every payment was judged; "
            "this machine may be very busy. Try again."
        )
    elif result.ok:
        line(
            key_values(
                [
                    ("Next:", "qrispay sandbox   (serve this simulator for your own code)"),
                    ("", "qrispay --help    (the commands for the real APIs)"),
                ]
            )
        )
    else:
        line("Some customers did not land where expected (see the table above).")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(0 if anyio.run(lambda: run_demo()).ok else 1)
