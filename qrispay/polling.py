"""When to fetch the feed next: the schedule, as pure arithmetic.

The server caches each answer for ``ttl`` seconds and counts every request,
so the schedule never fetches more than once per ``ttl + margin``, whatever
happens. The margin makes each of our fetches land after the cached answer
expired, so every fetch returns fresh rows.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

__all__ = ["PollPolicy", "Schedule"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{attribute.name} must be zero or more seconds, not {value!r}")


def _idle(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How the Reconciler polls the feed.

    ``ttl``: the server's cache lifetime. ``margin``: added so each fetch
    finds the cache expired. ``idle_interval``: the interval when nothing is
    open and nothing is inside the late grace (None: do not poll then).
    ``max_backoff``: the cap on waits after failures.
    """

    ttl: float = attrs.field(default=30.0, validator=_positive)
    margin: float = attrs.field(default=0.5, validator=_not_negative)
    idle_interval: float | None = attrs.field(default=300.0, validator=_idle)
    max_backoff: float = attrs.field(default=300.0, validator=_positive)

    @property
    def interval(self) -> float:
        """The shortest gap between two fetches: ``ttl + margin``."""
        return self.ttl + self.margin


@attrs.define
class Schedule:
    """The state behind the next fetch time, in monotonic seconds."""

    policy: PollPolicy
    rng: random.Random = attrs.field(factory=random.Random)
    last_start: float = -math.inf
    failures: int = 0
    rate_limits: int = 0
    backoff: float = 0.0

    def started(self, now: float) -> None:
        self.last_start = now

    def succeeded(self) -> None:
        self.failures = self.rate_limits = 0
        self.backoff = 0.0

    def rate_limited(self, retry_after: float | None) -> None:
        """After a 429: ``max(Retry-After, interval)``, doubled on each further 429."""
        interval = self.policy.interval
        base = max(retry_after or 0.0, interval)
        self.failures += 1
        self.rate_limits += 1
        self.backoff = min(self.policy.max_backoff, base * 2 ** (self.rate_limits - 1))
        self.backoff = max(self.backoff, interval)

    def failed(self) -> None:
        """After another failure: exponential backoff with jitter from the interval."""
        interval = self.policy.interval
        self.failures += 1
        self.rate_limits = 0
        grown = interval * 2 ** (self.failures - 1)
        jittered = grown * (1 + self.rng.random() / 4)
        self.backoff = max(interval, min(self.policy.max_backoff, jittered))

    def next_start(self, *, busy: bool) -> float:
        """When the next fetch may start; ``inf`` to wait for new work."""
        if self.failures:
            gap = self.backoff
        elif busy:
            gap = self.policy.interval
        elif self.policy.idle_interval is None:
            return math.inf
        else:
            gap = max(self.policy.idle_interval, self.policy.interval)
        return self.last_start + max(gap, self.policy.interval)
