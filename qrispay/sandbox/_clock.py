"""Clocks for the sandbox: wall time, a manual clock, and event-loop time.

A clock is any zero-argument callable returning an aware ``datetime``.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import anyio

__all__ = ["LoopClock", "ManualClock", "utc_now"]

#: The default start of the clocks below: 2025-01-01 12:00:00 WIB. A fixed
#: instant, so two runs with the same seed give the same answers.
DEFAULT_START = datetime(2025, 1, 1, 5, 0, 0, tzinfo=timezone.utc)


def utc_now() -> datetime:
    """The wall clock, aware UTC (the sandbox's default clock)."""
    return datetime.now(timezone.utc)


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("a clock's time must be timezone-aware")
    return when


def _delta(step: float | timedelta) -> timedelta:
    if isinstance(step, timedelta):
        return step
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise TypeError(f"a step is seconds or a timedelta, not {type(step).__name__}")
    return timedelta(seconds=step)


class ManualClock:
    """A clock that moves only when told to: ``clock.advance(30)``.

    Thread-safe, so a test can advance it while a loopback server reads it.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _aware(start)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, step: float | timedelta) -> datetime:
        """Move forward by ``step`` (seconds or a timedelta; never backwards)."""
        delta = _delta(step)
        if delta < timedelta(0):
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (an aware datetime, any direction)."""
        when = _aware(when)
        with self._lock:
            self._now = when

    def __repr__(self) -> str:
        return f"ManualClock({self().isoformat()})"


class LoopClock:
    """Event-loop time as a datetime: ``start`` plus the ``anyio.current_time()``
    elapsed since the clock was first read inside an event loop.

    Under trio's ``MockClock`` (or any virtual loop clock) the sandbox then runs
    in virtual time: a simulated day of polling takes milliseconds. Read
    outside an event loop it answers the last time it gave. Use it with an
    in-process sandbox: a loopback server runs its own event loop.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._start = _aware(start)
        self._origin: float | None = None
        self._last = self._start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        try:
            loop_now = anyio.current_time()
        except Exception:  # no running event loop: keep the last answer
            with self._lock:
                return self._last
        with self._lock:
            if self._origin is None:
                self._origin = loop_now
            when = self._start + timedelta(seconds=loop_now - self._origin)
            self._last = max(when, self._last)
            return self._last

    def __repr__(self) -> str:
        return f"LoopClock(start={self._start.isoformat()})"
