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
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            self.loop.virtual_now += timeout
        elif not events and timeout is None:
            # No timer at all and no I/O ready: block for real (a hang here is a
            # test bug, and pytest-timeout ends it).
            events = super().select(None)
        return events  # type: ignore[no-any-return]


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self.virtual_now = 0.0

    def time(self) -> float:
        return self.virtual_now


def virtual_backend(name: str) -> tuple[str, dict[str, Any]]:
    """An ``anyio_backend`` value running ``name`` in virtual time (a fresh clock)."""
    if name == "asyncio":
        return ("asyncio", {"loop_factory": VirtualTimeLoop})
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
