"""One subscriber's bounded buffer: what ``Reconciler.events()`` and
``Fleet.events()`` both hand out. Offering never blocks the publisher; a
subscriber more than its buffer behind gets ``EventsOverflowError`` after what
it did receive, never a silent gap."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import anyio

from .errors import EventsOverflowError

__all__ = ["Subscription"]

T = TypeVar("T")


class _Owner(Protocol):
    def unsubscribe(self, subscription: Any) -> None: ...


class Subscription(Generic[T]):
    """Items from the moment of subscribing, in order, through a buffer of
    ``buffer`` items; iteration ends when the publisher stops (``_end``) or the
    subscriber closes it (``aclose``, ``async with``)."""

    def __init__(self, owner: _Owner, buffer: int):
        self._owner = owner
        self._send, self._receive = anyio.create_memory_object_stream[T](buffer)
        self._overflowed = False

    def _put(self, item: T) -> None:
        if self._overflowed:
            return
        try:
            self._send.send_nowait(item)
        except anyio.WouldBlock:
            self._overflowed = True
            self._send.close()
            self._owner.unsubscribe(self)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._owner.unsubscribe(self)

    async def _next(self) -> T:
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            self._receive.close()
            if self._overflowed:
                raise EventsOverflowError(
                    "this subscriber fell behind its event buffer; events after the last "
                    "one received were not delivered to it"
                ) from None
            raise StopAsyncIteration from None
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    def _end(self) -> None:
        # The publisher stopped: the subscriber drains what it has, then iteration ends.
        self._send.close()

    async def aclose(self) -> None:
        """Unsubscribe; iteration ends."""
        self._owner.unsubscribe(self)
        self._send.close()
        self._receive.close()
