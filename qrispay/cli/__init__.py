"""The ``qrispay`` command.

``qrispay demo`` and ``qrispay sandbox`` need no credentials. The other
commands call the real APIs (or a sandbox) with credentials from the
environment; see ``qrispay --help``. Every expected failure is one line on
stderr and an exit code, never a traceback; the credentials are never printed.
"""

from __future__ import annotations

from ._exit import ExitCode
from ._main import build_parser, main
from .context import ENV_VARS

__all__ = [
    "ENV_VARS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTCOME_UNKNOWN",
    "EXIT_USAGE",
    "ExitCode",
    "build_parser",
    "main",
]

EXIT_OK = ExitCode.OK
#: The API, the network or a QRIS payload said no.
EXIT_ERROR = ExitCode.ERROR
#: Bad arguments, a missing or invalid environment variable, a missing extra.
EXIT_USAGE = ExitCode.USAGE
#: A request that creates something may or may not have happened: look it up first.
EXIT_OUTCOME_UNKNOWN = ExitCode.OUTCOME_UNKNOWN
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
