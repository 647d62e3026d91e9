"""The poll schedule's arithmetic (pure, no event loop)."""

from __future__ import annotations

import math
import random

import pytest

from qrispay import PollPolicy
from qrispay.polling import Schedule


def test_policy_defaults_and_interval() -> None:
    policy = PollPolicy()
    assert (policy.ttl, policy.margin, policy.idle_interval, policy.max_backoff) == (
        30.0,
        0.5,
        300.0,
        300.0,
    )
    assert policy.interval == 30.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"margin": -0.1},
        {"idle_interval": 0},
        {"max_backoff": 0},
        {"ttl": True},
    ],
)
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        PollPolicy(**kwargs)


def test_first_fetch_is_immediate_then_once_per_interval() -> None:
    schedule = Schedule(PollPolicy())
    assert schedule.next_start(busy=True) == -math.inf
    schedule.started(100.0)
    schedule.succeeded()
    assert schedule.next_start(busy=True) == 130.5


def test_idle_interval_and_none() -> None:
    schedule = Schedule(PollPolicy(idle_interval=120))
    schedule.started(0.0)
    assert schedule.next_start(busy=False) == 120.0
    never = Schedule(PollPolicy(idle_interval=None))
    never.started(0.0)
    assert never.next_start(busy=False) == math.inf
    assert never.next_start(busy=True) == 30.5


def test_idle_interval_shorter_than_ttl_still_respects_the_cache() -> None:
    schedule = Schedule(PollPolicy(idle_interval=5))
    schedule.started(0.0)
    assert schedule.next_start(busy=False) == 30.5


def test_rate_limit_waits_retry_after_or_the_interval_doubling_to_the_cap() -> None:
    schedule = Schedule(PollPolicy(max_backoff=300))
    schedule.started(0.0)
    schedule.rate_limited(retry_after=10)
    assert schedule.next_start(busy=True) == 30.5  # max(10, 30.5)
    schedule.rate_limited(retry_after=100)
    assert schedule.next_start(busy=True) == 200.0  # 100 doubled
    schedule.rate_limited(retry_after=100)
    assert schedule.next_start(busy=True) == 300.0  # 400, capped
    schedule.succeeded()
    assert schedule.next_start(busy=True) == 30.5


def test_failures_back_off_with_jitter_from_the_interval() -> None:
    schedule = Schedule(PollPolicy(max_backoff=300), rng=random.Random(1))
    schedule.started(0.0)
    waits = []
    for _ in range(8):
        schedule.failed()
        waits.append(schedule.next_start(busy=True))
    assert all(w >= 30.5 for w in waits)
    assert waits[0] <= 30.5 * 1.25
    assert 61.0 <= waits[1] <= 61.0 * 1.25
    assert waits[-1] == 300.0
    assert waits == sorted(waits)


def test_backoff_cap_below_the_interval_never_polls_faster_than_the_cache() -> None:
    schedule = Schedule(PollPolicy(max_backoff=5))
    schedule.started(0.0)
    schedule.failed()
    assert schedule.next_start(busy=True) == 30.5
    schedule.rate_limited(retry_after=1)
    assert schedule.next_start(busy=True) == 30.5
