"""What every command runs with: the output context, and the configuration the
environment gives (the ``QRISPAY_*`` variables and the clients made from them)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import attrs

from .._http import Redactor, Timeout
from .._wire import DEFAULT_FEED_URL
from ..gateway import GatewayClient
from ..mutations import MutationClient
from ._exit import ConfigError
from .output import Style, dumps
from .progress import Spinner, call_label

__all__ = [
    "ENV_VARS",
    "GATEWAY_VARS",
    "SECRET_VARS",
    "Ctx",
    "Scrubbed",
    "env",
    "feed",
    "gateway",
    "gateway_configured",
    "interactive",
    "log_level",
    "require",
    "warnings_to",
]

#: The environment variables the API commands read, and what each one is.
ENV_VARS: dict[str, str] = {
    "QRISPAY_API_KEY": "the gateway's API key (secret)",
    "QRISPAY_GATEWAY_URL": "the gateway's base URL, e.g. https://gateway.example",
    "QRISPAY_AUTH": "the check-payment feed's auth value (secret)",
    "QRISPAY_MERCHANT": "the feed's merchant code",
    "QRISPAY_TOKEN": "the feed's token (secret)",
    "QRISPAY_FEED_URL": f"the feed's base URL (optional; default {DEFAULT_FEED_URL})",
}
SECRET_VARS = (
    "QRISPAY_API_KEY",
    "QRISPAY_AUTH",
    "QRISPAY_TOKEN",
    "QRISPAY_SERVE_TOKEN",
    "QRISPAY_WEBHOOK_SECRET",
)
GATEWAY_VARS = ("QRISPAY_API_KEY", "QRISPAY_GATEWAY_URL")
_FEED_VARS = ("QRISPAY_AUTH", "QRISPAY_MERCHANT", "QRISPAY_TOKEN")


# -- output ---------------------------------------------------------------------


class Scrubbed(io.TextIOBase):
    """A text stream that masks the credentials in everything written to it."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def write(self, text: str) -> int:
        self._stream.write(self._redactor.scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


@attrs.define
class Ctx:
    """A command's output: tables or JSON, on ``out``; notes on ``err``."""

    json: bool
    out: TextIO
    err: TextIO
    style: Style
    #: The spinner on a terminal's stderr (None: on a pipe, with --json or --no-progress).
    spinner: Spinner | None = None

    def waiting(self, endpoint: str, url_var: str) -> contextlib.AbstractContextManager[None]:
        """Show, on a terminal, that the call to ``endpoint`` (at the URL in
        the variable ``url_var``) is awaited, until the block ends."""
        if self.spinner is None:
            return contextlib.nullcontext()
        url = env(url_var) or (DEFAULT_FEED_URL if url_var == "QRISPAY_FEED_URL" else "")
        return self.spinner.waiting(call_label(endpoint, url))

    def line(self, text: str = "") -> None:
        """A line of the command's output."""
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """A message for the person, not the script: stderr."""
        self.err.write(text + "\n")
        self.err.flush()

    def emit(self, value: Any, *, compact: bool = False) -> None:
        """``value`` as JSON on ``out``."""
        self.out.write(dumps(value, compact=compact) + "\n")
        self.out.flush()


def interactive(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a person reads it, not a program)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


class _LogLine(logging.Formatter):
    """``qrispay: warning: message``, one line, never a traceback; below
    warnings (``-v``) the logger's name too, to say which part spoke."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"qrispay: {record.levelname.lower()}: {record.getMessage()}"
        if record.levelno < logging.WARNING:
            line += f" [{record.name}]"
        return line


class _Progress(_LogLine):
    """A retry as a person at a terminal wants it: ``qrispay: attempt 2 of 3 in
    1.2 s, after APIConnectionError (GET /api/v1/balance)``."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "retry_in", None) is None:
            return super().format(record)
        info = record.__dict__
        return (
            f"qrispay: attempt {info['attempt']} of {info['attempts']} in "
            f"{info['retry_in']:.1f} s, after {info['error']} ({info['call']})"
        )


def _warnings_or_retries(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or hasattr(record, "retry_in")


@contextlib.contextmanager
def warnings_to(
    stream: TextIO, level: int = logging.WARNING, *, progress: bool = False
) -> Iterator[None]:
    """The package's records from ``level`` up (warnings by default), as one
    line each on ``stream``, while inside; with ``progress`` (a terminal), each
    retry too, as a line saying which attempt comes and when."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_LogLine())
    if progress and level > logging.INFO:
        handler.setFormatter(_Progress())
        handler.addFilter(_warnings_or_retries)
        level = logging.INFO
    handler.setLevel(level)
    target = logging.getLogger("qrispay")
    before = target.level
    if target.getEffectiveLevel() > level:
        # Records below the root's level are not even made otherwise.
        target.setLevel(level)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(before)


LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_level(verbose: int, named: str | None) -> int:
    """The level ``-v`` (info), ``-vv`` (debug) or ``--log-level`` asks for."""
    if named is not None:
        return LOG_LEVELS[named]
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


# -- configuration ---------------------------------------------------------------


def env(name: str) -> str:
    """The variable's value, stripped; empty when unset."""
    return os.environ.get(name, "").strip()


def require(names: Sequence[str], what: str) -> dict[str, str]:
    """The values of ``names``; ``ConfigError`` naming those that are not set."""
    missing = [name for name in names if not env(name)]
    if missing:
        listed = (
            missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        )
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{listed} {verb} not set ({what}; see 'qrispay --help')")
    return {name: env(name) for name in names}


def _url(name: str, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    return value


#: ``--timeout``: the most one API call of this command may take, retries
#: included (None: the clients' defaults). Set by ``main`` for each run.
call_timeout: float | None = None


def _limits() -> dict[str, Any]:
    if call_timeout is None:
        return {}
    # Each attempt within the whole: a call never outlasts --timeout, whatever it retries.
    attempt = Timeout(min(30.0, call_timeout), connect=min(5.0, call_timeout))
    return {"timeout": attempt, "deadline": call_timeout}


def gateway_configured() -> bool:
    """Whether every gateway variable is set."""
    return all(env(name) for name in GATEWAY_VARS)


def gateway() -> GatewayClient:
    """The gateway client the environment describes."""
    values = require(GATEWAY_VARS, "needed for the gateway API")
    url = _url("QRISPAY_GATEWAY_URL", values["QRISPAY_GATEWAY_URL"])
    return GatewayClient(values["QRISPAY_API_KEY"], base_url=url, **_limits())


def feed() -> MutationClient:
    """The feed client the environment describes."""
    values = require(_FEED_VARS, "needed for the check-payment feed")
    url = _url("QRISPAY_FEED_URL", env("QRISPAY_FEED_URL") or DEFAULT_FEED_URL)
    return MutationClient(
        values["QRISPAY_AUTH"],
        values["QRISPAY_MERCHANT"],
        values["QRISPAY_TOKEN"],
        base_url=url,
        **_limits(),
    )
