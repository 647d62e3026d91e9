"""The spinner of the command line: on a terminal's stderr while a call waits,
erased before the result; never on a pipe or with --json. Real subprocesses
against a sandbox on loopback that answers slowly (a latency fault)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from qrispay.sandbox import Faults, Sandbox

from .conftest import sandbox_env
from .terminal import ROOT, run_on_terminal, visible

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
    return run_on_terminal(argv, env, capture_stdout=True)


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
    # SIGINT once the spinner is up.
    code, _, err = run_on_terminal(argv, slow_env, interrupt_after=b"GET balance")
    assert code == 130
    assert [line for line in visible(err.decode()).splitlines() if line] == ["qrispay: interrupted"]
