"""What the demo shows: event lines with a live status line, the invoices, the summary."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TextIO

from ..models import Invoice
from ._demo_story import PAYERS, VERDICTS, DemoResult
from .output import Style, format_rupiah, format_time, key_values, table

__all__ = ["Screen", "clock_time", "invoice_table", "summary"]


class Screen:
    """Event lines, plus a live status line on a terminal."""

    def __init__(self, out: TextIO, style: Style, live: bool) -> None:
        self.out = out
        self.style = style
        self.live = live
        self._status = False

    def line(self, text: str = "") -> None:
        """A line of output (over the status line, if one shows)."""
        self.clear_status()
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        """Show ``text`` as the status line, on a terminal only."""
        if self.live:
            self.out.write("\r\033[K" + self.style(text, "dim"))
            self.out.flush()
            self._status = True

    def clear_status(self) -> None:
        """Wipe the status line."""
        if self._status:
            self.out.write("\r\033[K")
            self._status = False


def clock_time(when: datetime) -> str:
    """``12:00:05 WIB``: the demo's times are all today's."""
    return format_time(when)[11:]


def invoice_table(invoices: list[Invoice], style: Style) -> str:
    """The customers and their invoices (``invoices`` in the order of ``PAYERS``)."""
    rows = [
        (
            payer.name,
            invoice.invoice_id,
            format_rupiah(invoice.amount),
            invoice.fee,
            format_rupiah(invoice.total),
            clock_time(invoice.expired_at),
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


def summary(screen: Screen, style: Style, result: DemoResult) -> None:
    """The closing summary: the verdicts, each customer's outcome, what next."""
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
