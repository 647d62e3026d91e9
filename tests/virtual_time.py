"""Virtual time for both anyio backends, so no test waits out a real TTL.

trio has ``MockClock``; asyncio gets an event loop whose clock jumps to the
next timer whenever nothing is ready to run. Both only make sense with
in-process I/O (the sandbox's ASGI transport): a real socket would still
take real time.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import trio.testing


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; when nothing is ready, time jumps by the timeout."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        # With worker threads about (a store's driver), wait a short real while
        # first, so that time does not race ahead of a thread's result.
        events = super().select(min(self.loop.idle, timeout) if timeout is not None else 0)
        if not events and timeout is not None and timeout > 0:
            self.loop.virtual_now += timeout
        elif not events and timeout is None:
            # No timer at all and no I/O ready: block for real (a hang here is a
            # test bug, and pytest-timeout ends it).
            events = super().select(None)
        return events  # type: ignore[no-any-return]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, idle: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = 0.0
        self.idle = idle

    def time(self) -> float:
        return self.virtual_now


def virtual_backend(name: str, *, idle: float = 0.0) -> tuple[str, dict[str, Any]]:
    """An ``anyio_backend`` value running ``name`` in virtual time (a fresh clock).

    ``idle``: real seconds of nothing to do before time jumps; give it when
    worker threads run (a store's driver), else the clock races their results.
    """
    if name == "asyncio":
        return ("asyncio", {"loop_factory": lambda: VirtualTimeLoop(idle)})
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=idle)})
