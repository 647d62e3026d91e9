"""The command line on a terminal: each retry shown as it comes, on stderr;
never on a pipe, never with --json. Real subprocesses, stderr on a
pseudo-terminal, against a loopback port nobody listens on."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from .terminal import ROOT, run_on_terminal, visible

SECRET = "secret-api-key-value"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no pseudo-terminals")


def _refused_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def _balance(*flags: str, terminal: bool) -> tuple[int, str]:
    """Run ``qrispay balance`` with stderr on a terminal or a pipe; its code and stderr."""
    env = dict(os.environ, QRISPAY_API_KEY=SECRET, QRISPAY_GATEWAY_URL=_refused_url(), NO_COLOR="1")
    argv = [sys.executable, "-m", "qrispay", "balance", *flags]
    if not terminal:
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr
    code, _, err = run_on_terminal(argv, env)
    return code, err.decode().replace("\r\n", "\n")


def test_on_a_terminal_each_retry_is_shown_before_the_error() -> None:
    code, raw = _balance(terminal=True)
    assert code == 1
    # The spinner is drawn during the backoff sleeps and erased before each line.
    assert re.search(r"\r. GET balance from 127\.0\.0\.1:\d+", raw), raw
    err = visible(raw)
    lines = [line for line in err.strip().splitlines() if line]
    assert lines[0].startswith("qrispay: attempt 2 of 3 in ")
    assert lines[0].endswith(" s, after APIConnectionError (GET /api/v1/balance)")
    assert lines[1].startswith("qrispay: attempt 3 of 3 in ")
    assert lines[2].startswith("qrispay: error: cannot connect: ")
    assert len(lines) == 3
    assert SECRET not in err


@pytest.mark.parametrize(("flags", "terminal"), [((), False), (("--json",), True)])
def test_no_progress_on_a_pipe_or_with_json(flags: tuple[str, ...], terminal: bool) -> None:
    code, err = _balance(*flags, terminal=terminal)
    assert code == 1
    assert "attempt 2 of 3" not in err
    assert err.strip().splitlines()[-1].startswith("qrispay: error: cannot connect: ")
    assert len(err.strip().splitlines()) == 1
