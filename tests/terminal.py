"""Running the command line with stderr on a pseudo-terminal, as a person at
a terminal would, and what that terminal would show of the bytes written."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # the other end closed (Linux says EIO)
        return b""


def run_on_terminal(
    argv: list[str],
    env: dict[str, str],
    *,
    capture_stdout: bool = False,
    interrupt_after: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with stderr on a pseudo-terminal: its code, stdout (if
    captured) and the raw bytes of stderr. With ``interrupt_after``, SIGINT is
    sent once stderr has shown those bytes."""
    main, other = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE if capture_stdout else subprocess.DEVNULL,
            stderr=other,
            stdin=subprocess.DEVNULL,
        )
        os.close(other)
        chunks: list[bytes] = []
        if interrupt_after is not None:
            while interrupt_after not in b"".join(chunks):
                chunk = _read(main)
                if not chunk:
                    break
                chunks.append(chunk)
            proc.send_signal(signal.SIGINT)
        while chunk := _read(main):
            chunks.append(chunk)
        out = b""
        if proc.stdout is not None:
            with proc.stdout:
                out = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        os.close(main)
    return code, out, b"".join(chunks)


def visible(raw: str) -> str:
    """What a terminal shows of ``raw``: each ``\\r`` back to the line's start,
    each erase-line (ESC [ K) blanks the rest of it."""
    lines: list[str] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown, cursor = "", 0
        for piece in re.split(r"(\r|\x1b\[K)", line):
            if piece == "\r":
                cursor = 0
            elif piece == "\x1b[K":
                shown = shown[:cursor]
            else:
                shown = shown[:cursor] + piece + shown[cursor + len(piece) :]
                cursor += len(piece)
        lines.append(shown)
    return "\n".join(lines)
