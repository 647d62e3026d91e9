"""Virtual time for both anyio backends, so no test waits out a real TTL.

trio has ``MockClock``; asyncio gets an event loop whose clock jumps to the
next timer whenever nothing is ready to run. Both only make sense with
in-process I/O (the sandbox's ASGI transport): a real socket would still
take real time. Worker threads (a store's driver) do take real time: with
``hold_time_during_threads`` installed, the clock stands still while one runs,
so it never races ahead of a commit, and no test pays a real idle per jump.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import pytest
import sniffio
import trio.lowlevel
import trio.testing


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; when nothing is ready, time jumps by the timeout."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        if self.loop.threads:
            # A worker thread runs: wait for it for real, and let no virtual time pass.
            wait = 0.05 if timeout is None else min(timeout, 0.05)
            return super().select(wait)  # type: ignore[no-any-return]
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
        self.threads = 0

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


_real_run_sync = anyio.to_thread.run_sync


@contextmanager
def _time_held() -> Iterator[None]:
    if sniffio.current_async_library() == "trio":
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, trio.testing.MockClock):
            yield
            return
        held = getattr(clock, "_qrispay_held", None)
        if held is None:
            held = clock._qrispay_held = [0, clock.autojump_threshold]  # type: ignore[attr-defined]
        if held[0] == 0:
            held[1] = clock.autojump_threshold
            clock.autojump_threshold = math.inf
        held[0] += 1
        try:
            yield
        finally:
            held[0] -= 1
            if held[0] == 0:
                # Back in the task, with the result: a jump now cannot overtake it.
                clock.autojump_threshold = held[1]
        return
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        yield
        return
    loop.threads += 1
    try:
        yield
    finally:
        loop.threads -= 1


async def _run_sync_holding_time(*args: Any, **kwargs: Any) -> Any:
    with _time_held():
        return await _real_run_sync(*args, **kwargs)


def hold_time_during_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the virtual clock while any ``anyio.to_thread.run_sync`` call runs."""
    monkeypatch.setattr(anyio.to_thread, "run_sync", _run_sync_holding_time)
