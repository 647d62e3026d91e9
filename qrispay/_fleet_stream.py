"""A fleet's events on their way out: every merchant's, through one bounded
buffer per subscriber, with the overflow rule of ``Reconciler.events``."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ._subscription import Subscription
from .events import Event

__all__ = ["FleetEvent", "FleetSubscription", "FleetTap"]


@attrs.frozen
class FleetEvent:
    """One event of one merchant of a fleet."""

    merchant: str
    event: Event


class FleetSubscription(Subscription[FleetEvent]):
    """Events of every merchant a fleet runs here, from the moment of
    subscribing, in each merchant's order. Iterate with ``async for``; a
    subscriber more than its buffer behind gets ``EventsOverflowError`` after
    what it did receive. Iteration ends when the fleet stops."""

    _offer = Subscription._put

    def __aiter__(self) -> FleetSubscription:
        return self

    async def __anext__(self) -> FleetEvent:
        return await self._next()

    async def __aenter__(self) -> FleetSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class FleetTap:
    """Where the fleet's Reconcilers publish, besides their own subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[FleetSubscription] = []
        self._stopped = False

    def tap(self, merchant: str) -> Callable[[list[tuple[int, Event]]], None]:
        """What ``merchant``'s Reconciler calls with each batch it publishes."""

        def publish(events: list[tuple[int, Event]]) -> None:
            for _, event in events:
                item = FleetEvent(merchant, event)
                for subscriber in list(self._subscribers):
                    subscriber._offer(item)

        return publish

    def subscribe(self, buffer: int) -> FleetSubscription:
        subscription = FleetSubscription(self, buffer)
        if self._stopped:
            subscription._end()
        else:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: FleetSubscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def open(self) -> None:
        self._stopped = False

    def close(self) -> None:
        self._stopped = True
        subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription._end()
