"""A spinner on stderr while an API call waits, for a person at a terminal.

Only drawn when stderr is a terminal (never on a pipe, never with --json or
--no-progress). Everything else written to stdout or stderr goes through
``Guarded``, which erases the spinner first, so no frame is left behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from typing import TextIO
from urllib.parse import urlsplit

import anyio

from .._wire import FEED_ENDPOINT, GATEWAY_PATHS

__all__ = ["Guarded", "Spinner", "call_label"]

_UNICODE_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_FRAMES = "|/-\\"
#: A call quicker than this shows nothing: no flash of a spinner.
DELAY = 0.2
INTERVAL = 0.1


def call_label(endpoint: str, url: str) -> str:
    """``GET balance from 127.0.0.1:8765``: the method, the endpoint's name and
    the host; never the path's query, the user part of the URL or a secret."""
    method = "GET" if endpoint == FEED_ENDPOINT else GATEWAY_PATHS[endpoint][0]
    parts = urlsplit(url)
    host = parts.hostname or "the server"
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port else host
    return f"{method} {endpoint.replace('_', ' ')} from {where}"


class Spinner:
    """The one spinner line of a command run; ``waiting`` says what is awaited."""

    def __init__(self, stream: TextIO, *, unicode: bool, fileno: int | None = None) -> None:
        self._stream = stream
        self._frames = _UNICODE_FRAMES if unicode else _ASCII_FRAMES
        self._dots = "…" if unicode else "..."
        self._fileno = fileno
        self._label: str | None = None
        self._since = 0.0
        self._frame = 0
        self._drawn = False

    @contextlib.contextmanager
    def waiting(self, label: str) -> Iterator[None]:
        self._label, self._since = label, time.monotonic()
        try:
            yield
        finally:
            self._label = None
            self.erase()

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._fileno).columns if self._fileno is not None else 0
        except OSError:
            columns = 0
        return columns if columns > 0 else 80  # a new pseudo-terminal says 0

    def tick(self) -> None:
        if self._label is None:
            return
        elapsed = time.monotonic() - self._since
        if elapsed < DELAY:
            return
        frame = self._frames[self._frame % len(self._frames)]
        self._frame += 1
        text = f"{frame} {self._label}{self._dots} {elapsed:.1f} s"
        # Never wider than the terminal: a wrapped line could not be erased with \r.
        text = text[: max(self._columns() - 1, 1)]
        self._stream.write("\r" + text + "\033[K")
        self._stream.flush()
        self._drawn = True

    def erase(self) -> None:
        if self._drawn:
            self._drawn = False
            self._stream.write("\r\033[K")
            self._stream.flush()

    async def run(self) -> None:
        """Redraw about ten times a second until cancelled."""
        try:
            while True:
                self.tick()
                await anyio.sleep(INTERVAL)
        finally:
            self.erase()


class Guarded(io.TextIOBase):
    """A stream that erases the spinner before anything else is written."""

    def __init__(self, stream: TextIO, spinner: Spinner) -> None:
        self._stream = stream
        self._spinner = spinner

    def write(self, text: str) -> int:
        if text:
            self._spinner.erase()
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()
