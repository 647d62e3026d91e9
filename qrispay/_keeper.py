"""The Reconciler's side of a store: load on start, commit before publishing.

Every event is committed, with the engine changes that produced it, in one
transaction before it is published or wakes a waiter (docs/design.md,
"Stores"). A commit that fails keeps its changes and events pending for the
next one; nothing is published until it is stored, and an event whose id the
store already holds is never published again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio

from . import _durable
from .engine import ReconciliationEngine
from .events import Event
from .polling import Schedule
from .store._base import Store

__all__ = ["Keeper"]

Publish = Callable[[list[tuple[int, Event]]], None]


class Keeper:
    """Keeps one merchant's engine in ``store``; ``clock`` gives commit times."""

    def __init__(self, store: Store, merchant: str, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.merchant = merchant
        self._clock = clock
        self._lock = anyio.Lock()
        self._pending: list[Event] = []
        #: The poller's own times, kept beside the engine (wall-clock ISO or None).
        self.poller: dict[str, Any] = {"last_fetch": None, "not_before": None}
        #: The ``seq`` of the last event this process committed or found stored.
        self.last_seq = 0
        self.loaded = False

    async def load(
        self, seed: ReconciliationEngine | None, make: Callable[[], ReconciliationEngine]
    ) -> ReconciliationEngine:
        """The stored engine; or, for a merchant the store does not know, ``seed``
        (or ``make()``), written to the store whole."""
        await self.store.open()
        state = await self.store.load(self.merchant)
        if state is None:
            engine = seed if seed is not None else make()
            everything = _durable.everything(engine)
            _durable.attach(engine)
            async with self._lock:
                await self._write(engine, everything, [])
        else:
            engine = _durable.engine_from(state)
            _durable.attach(engine)
            self.poller = {key: state.meta.get(key) for key in self.poller}
            self.last_seq = state.last_seq
        self.loaded = True
        return engine

    async def commit(
        self, engine: ReconciliationEngine, events: list[Event], publish: Publish
    ) -> None:
        """Commit what changed in ``engine`` and ``events``; then, still in commit
        order, ``publish`` the events newly stored, each with its ``seq``.

        On failure the changes and events stay pending (the next commit takes
        them) and the error is raised.
        """
        self._pending.extend(events)
        async with self._lock:
            journal = _durable.take(engine)
            pending, self._pending = self._pending, []
            try:
                stored = await self._write(engine, journal, pending)
            except BaseException:
                _durable.give_back(engine, journal)
                self._pending[:0] = pending
                raise
            publish(stored)

    async def _write(
        self, engine: ReconciliationEngine, journal: Any, events: list[Event]
    ) -> list[tuple[int, Event]]:
        changes = _durable.changes(
            engine, journal, events, committed_at=self._clock(), poller=self.poller
        )
        stored = await self.store.commit(self.merchant, changes)
        seq_of = {item.id: item.seq for item in stored}
        new: list[tuple[int, Event]] = []
        for event in events:
            seq = seq_of.pop(event.id, None)
            if seq is not None:
                new.append((seq, event))
                self.last_seq = max(self.last_seq, seq)
        return new

    # -- the poller's times ------------------------------------------------------

    def fetched(self, started: datetime, schedule: Schedule) -> None:
        """Note a fetch that started at ``started`` and the schedule after it."""
        self.poller["last_fetch"] = started.isoformat()
        wait = schedule.backoff if schedule.failures else 0.0
        self.poller["not_before"] = None if not wait else _later(started, wait)

    def resume(self, schedule: Schedule, now: datetime) -> None:
        """Set ``schedule`` so that the first fetch after a restart still honours
        the cache window (and a backoff) that the last fetch began."""
        last = self.poller.get("last_fetch")
        if not last:
            return
        elapsed = (now - datetime.fromisoformat(last)).total_seconds()
        schedule.started(anyio.current_time() - max(0.0, elapsed))
        not_before = self.poller.get("not_before")
        if not_before:
            left = (datetime.fromisoformat(not_before) - now).total_seconds()
            if left > 0 and math.isfinite(left):
                schedule.failures = max(schedule.failures, 1)
                schedule.backoff = max(left + max(0.0, elapsed), schedule.policy.interval)


def _later(start: datetime, seconds: float) -> str:
    return (start + timedelta(seconds=seconds)).isoformat()
