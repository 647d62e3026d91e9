"""The spinner of the command line: on a terminal's stderr while a call waits,
erased before the result; never on a pipe or with --json. Real subprocesses
against a sandbox on loopback that answers slowly (a latency fault)."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qrispay.sandbox import Faults, Sandbox

from .conftest import sandbox_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no pseudo-terminals")


@pytest.fixture
def slow_env() -> Iterator[dict[str, str]]:
    sandbox = Sandbox(faults=Faults(latency=1.0))
    with sandbox.serve(port=0) as url:
        env = dict(os.environ, **sandbox_env(sandbox, url), NO_COLOR="1")
        env.pop("TERM", None)
        yield env


def _balance(env: dict[str, str], *flags: str, terminal: bool) -> tuple[int, bytes, bytes]:
    """``qrispay balance``, stderr on a terminal or a pipe: code, stdout, stderr."""
    argv = [sys.executable, "-m", "qrispay", "balance", *flags]
    if not terminal:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=60)
        return done.returncode, done.stdout, done.stderr
    main, other = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=other, stdin=subprocess.DEVNULL
        )
        os.close(other)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the other end closed (Linux says EIO)
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stdout is not None
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


def test_a_spinner_while_waiting_then_erased(slow_env: dict[str, str]) -> None:
    code, out, err = _balance(slow_env, terminal=True)
    assert code == 0, err
    text = err.decode()
    frames = re.findall(r"\r(. GET balance from 127\.0\.0\.1:\d+(?:…|\.\.\.) \d+\.\d s)", text)
    assert len(frames) >= 3, text
    assert "?" not in text
    assert "apikey" not in text
    assert slow_env["QRISPAY_API_KEY"] not in text
    assert text.endswith("\r\x1b[K")
    assert visible(text).strip() == ""
    assert b"balance" in out


@pytest.mark.parametrize(
    ("flags", "terminal"), [((), False), (("--json",), True), (("--no-progress",), True)]
)
def test_no_spinner_on_a_pipe_with_json_or_no_progress(
    slow_env: dict[str, str], flags: tuple[str, ...], terminal: bool
) -> None:
    code, out, err = _balance(slow_env, *flags, terminal=terminal)
    assert code == 0, err
    assert err == b""
    _, plain_out, _ = _balance(slow_env, *flags, terminal=False)
    assert out == plain_out


def test_ctrl_c_stops_the_spinner_and_erases_it(slow_env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "qrispay", "balance"]
    main, other = pty.openpty()
    try:
        proc = subprocess.Popen(
            argv,
            env=slow_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=other,
            stdin=subprocess.DEVNULL,
        )
        os.close(other)
        chunks: list[bytes] = []
        while b"GET balance" not in b"".join(chunks):  # the spinner is up
            chunks.append(os.read(main, 4096))
        proc.send_signal(signal.SIGINT)
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    finally:
        os.close(main)
    text = b"".join(chunks).decode()
    assert code == 130
    assert [line for line in visible(text).splitlines() if line] == ["qrispay: interrupted"]
