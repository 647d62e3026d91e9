"""Argument types of the ``qrispay`` command, and the helpers that add a command
or an action to the parser with the options every command shares."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "AMOUNT_HELP",
    "action",
    "actions",
    "amount",
    "command",
    "int_at_least",
    "port",
    "seconds",
]

AMOUNT_HELP = "whole rupiah in digits, e.g. 25000"


def _digits(text: str) -> int | None:
    # `str.isdigit()` alone also accepts digits of other scripts: ASCII only.
    value = text.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def amount(text: str) -> int:
    """Whole rupiah in ASCII digits, at least 1."""
    value = _digits(text)
    if value is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an amount: give whole rupiah in digits, like 25000 "
            "(no dots, commas or 'Rp')"
        )
    if value < 1:
        raise argparse.ArgumentTypeError("an amount must be at least 1 rupiah")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers of at least ``minimum``."""

    def parse(text: str) -> int:
        value = _digits(text)
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return value

    return parse


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return value


# -- building the parser ------------------------------------------------------------

TIMEOUT_HELP = "the most one API call may take, retries included (default: 30 s an attempt)"


def _shared() -> argparse.ArgumentParser:
    # --json after the command too; SUPPRESS keeps a --json given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of tables",
    )
    common.add_argument(
        "--timeout", type=seconds, default=argparse.SUPPRESS, metavar="SECONDS", help=TIMEOUT_HELP
    )
    progress_option(common, default=argparse.SUPPRESS)
    logging_options(common, default=argparse.SUPPRESS)
    return common


def progress_option(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """``--no-progress``: no spinner and no retry lines, even on a terminal."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=default,
        help="no spinner or retry lines on a terminal (as on a pipe)",
    )


def logging_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """``-v/--verbose`` and ``--log-level``: what qrispay logs, on stderr."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default is None else default,
        help="show qrispay's info lines (retries, conflicts); twice: debug",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default,
        help="the least severe qrispay log lines shown (default warning)",
    )


def command(
    commands: Any,
    name: str,
    help: str,
    handler: Callable[..., Any],
    *,
    asynchronous: bool = False,
) -> argparse.ArgumentParser:
    """Add the command ``name`` to the ``commands`` sub-parsers, run by ``handler``
    (awaited under ``anyio.run`` when ``asynchronous``)."""
    p: argparse.ArgumentParser = commands.add_parser(
        name, parents=[_shared()], help=help, description=help
    )
    p.set_defaults(handler=handler, asynchronous=asynchronous)
    return p


def actions(p: argparse.ArgumentParser) -> Any:
    """The (required) actions of the command ``p``."""
    return p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)


def action(group: Any, name: str, help: str) -> argparse.ArgumentParser:
    """Add the action ``name`` to ``group`` (made by ``actions``)."""
    p: argparse.ArgumentParser = group.add_parser(
        name, parents=[_shared()], help=help, description=help
    )
    return p
