"""What every part of the sandbox's state shares: its settings, one lock, the
seeded id generator, the counters and the clock."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import attrs

from .._wire import FEED_ENDPOINT

if TYPE_CHECKING:
    from ._settings import SandboxSettings

__all__ = ["Shared", "Stats"]


@attrs.define
class Stats:
    """What the sandbox served. ``requests`` counts every request by endpoint
    name (``"check_payment"`` for the feed, the ``GatewayEndpoints`` field names
    for the gateway, ``"not_found"`` for unknown paths), whatever the answer."""

    requests: Counter[str] = attrs.field(factory=Counter)
    #: answers by HTTP status
    statuses: Counter[int] = attrs.field(factory=Counter)
    #: injected faults by kind
    faults: Counter[str] = attrs.field(factory=Counter)
    #: feed answers built (cache misses), and feed requests refused by the quota
    feed_builds: int = 0
    rate_limited: int = 0

    @property
    def feed_fetches(self) -> int:
        """Requests to the feed endpoint, answered or not."""
        return self.requests[FEED_ENDPOINT]

    def copy(self) -> Stats:
        return Stats(
            Counter(self.requests),
            Counter(self.statuses),
            Counter(self.faults),
            self.feed_builds,
            self.rate_limited,
        )


class Shared:
    """The settings, the lock every part runs under (a loopback server thread and
    the test thread both call in), the id generator and the counters."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.clock = settings.clock
        self.lock = threading.RLock()
        # Ids have their own stream: they never depend on how many faults were drawn.
        # Without a seed they come from the OS, so that no reference of an earlier
        # run comes again (a service that remembers rows would drop it as seen).
        self.ids: random.Random = (
            random.SystemRandom() if settings.seed is None else random.Random(settings.seed)
        )
        #: Digits of a row reference: more without a seed, so runs never collide.
        self.reff_digits = 11 if settings.seed is not None else 18
        self.stats = Stats()

    def now(self) -> datetime:
        """The clock's time, which must be aware."""
        when = self.clock()
        if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"the sandbox clock must return an aware datetime, got {when!r}")
        return when

    def object_id(self, when: datetime, taken: Mapping[str, object]) -> str:
        """A fresh id shaped like a MongoDB ObjectId (24 hex digits, seconds
        first), as the documented examples are."""
        seconds = int(when.timestamp()) & 0xFFFFFFFF
        while True:
            candidate = f"{seconds:08x}{self.ids.getrandbits(64):016x}"
            if candidate not in taken:
                return candidate
