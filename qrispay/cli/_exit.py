"""The command's exit codes, and the failure a command raises to exit with one."""

from __future__ import annotations

import enum

__all__ = ["CommandError", "ConfigError", "ExitCode"]


class ExitCode(enum.IntEnum):
    """What ``qrispay`` exits with (listed in ``qrispay --help``)."""

    OK = 0
    #: The API, the network or a QRIS payload said no.
    ERROR = 1
    #: Bad arguments, a missing or invalid environment variable, a missing extra.
    USAGE = 2
    #: A request that creates something may or may not have happened: look it up first.
    OUTCOME_UNKNOWN = 3
    INTERRUPTED = 130


class CommandError(Exception):
    """An expected failure: one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(CommandError):
    """Bad configuration (a variable, a missing extra): exits with ``ExitCode.USAGE``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)
