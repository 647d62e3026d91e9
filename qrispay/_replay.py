"""``events(after=ID)``: the stored events after one, then the live ones, with
neither a gap nor a duplicate at the seam.

The live subscription is made first, when ``events()`` is called; the store is
read on first iteration, page by page, up to its end. An event committed while
the store is being read is in both, and is given once: the live side skips
every event at or before the last ``seq`` replayed.
"""

from __future__ import annotations

from collections import deque

from ._hub import EventSubscription
from .events import Event
from .store._base import Store, StoredEvent

__all__ = ["PAGE", "ReplaySubscription"]

#: How many stored events are read at a time.
PAGE = 500


class ReplaySubscription:
    """Every event of the merchant committed after ``after``, in commit order,
    then live events as ``EventSubscription`` gives them (iteration ends when
    the Reconciler stops; ``EventsOverflowError`` if the live buffer overflowed
    while the store was being read or later).

    ``after=""`` starts before the first stored event: every stored event,
    for a consumer that has not handled one yet. ``KeyError`` on first
    iteration if the store does not hold ``after``.
    """

    def __init__(self, live: EventSubscription, store: Store, merchant: str, after: str) -> None:
        self._live = live
        self._store = store
        self._merchant = merchant
        self._after = after
        self._cursor: int | None = None
        self._replaying = True
        self._backlog: deque[StoredEvent] = deque()

    def __aiter__(self) -> ReplaySubscription:
        return self

    async def __anext__(self) -> Event:
        if self._cursor is None:
            await self._store.open()
            after = self._after
            try:
                self._cursor = (
                    0 if after == "" else await self._store.event_seq(self._merchant, after)
                )
            except BaseException:
                # Not iterable any more: the live buffer would only fill up.
                await self._live.aclose()
                raise
        while self._replaying and not self._backlog:
            page = await self._store.events_after(self._merchant, self._cursor, PAGE)
            if not page:
                self._replaying = False
                break
            self._backlog.extend(page)
            self._cursor = page[-1].seq
        if self._backlog:
            return self._backlog.popleft().event()
        while True:
            seq, event = await self._live._next()
            if seq > self._cursor:
                self._cursor = seq
                return event

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        await self._live.aclose()

    async def __aenter__(self) -> ReplaySubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
