"""The demo's story: its settings, its five customers and what a run saw."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import attrs

__all__ = [
    "BRANDS",
    "DEADLINE",
    "FEED_TTL",
    "INVOICE_TTL",
    "LATE_GRACE",
    "MARGIN",
    "PAYERS",
    "SKEW",
    "VERDICTS",
    "DemoResult",
    "Payer",
    "ScaledClock",
]

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


#: The wallet each customer pays with.
BRANDS = {"Ani": "GOPAY", "Budi": "OVO", "Citra": "DANA", "Dewi": "SHOPEEPAY", "Eko": "GOPAY"}
