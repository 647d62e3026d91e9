"""The entry point: the parser (a loop over the command groups), the one mapping
from an error to its message and exit code, and ``main``."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO, cast

import anyio

from .. import errors, qris
from .._http import Redactor
from .._version import __version__
from .._wire import FEED_PATH
from . import argtypes, context, demo, feed, gateway, sandbox, serve, watch
from . import qris as qris_command
from ._exit import CommandError, ExitCode
from .argtypes import TIMEOUT_HELP
from .context import (
    ENV_VARS,
    SECRET_VARS,
    Ctx,
    Scrubbed,
    env,
    interactive,
    log_level,
    warnings_to,
)
from .output import Style, wants_colour
from .progress import Guarded, Spinner

__all__ = ["build_parser", "main"]

#: The command groups, in the order ``qrispay --help`` lists their commands.
_GROUPS = (demo, sandbox, gateway, feed, watch, serve, qris_command)

_EPILOG = (
    "environment (for balance, invoice, withdraw, mutations and watch):\n"
    + "\n".join(f"  {name:<20} {what}" for name, what in ENV_VARS.items())
    + "\n\n"
    "  'qrispay sandbox' prints the values that point these at a local simulator.\n\n"
    "output:\n"
    "  tables by default; --json (before or after the command) for scripts: money as\n"
    "  int rupiah, times as ISO 8601 in WIB, +07:00 ('watch --json': one object a line).\n"
    "  --timeout SECONDS (before or after the command): the most one API call may take.\n\n"
    "exit codes:\n"
    "  0 done   1 the API, the network or a payload said no   2 bad usage or configuration\n"
    "  3 the outcome of a create or cancel is unknown: look it up before trying again\n"
    "  130 interrupted (watch and sandbox stop with 0 on Ctrl-C)"
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``qrispay`` command."""
    parser = argparse.ArgumentParser(
        prog="qrispay",
        description="QRIS payments in Indonesia: the gateway, the mutation feed, reconciliation.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qrispay {__version__}")
    parser.add_argument(
        "--json", action="store_true", default=False, help="print JSON instead of tables"
    )
    parser.add_argument(
        "--timeout", type=argtypes.seconds, default=None, metavar="SECONDS", help=TIMEOUT_HELP
    )
    argtypes.progress_option(parser, default=False)
    argtypes.logging_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for group in _GROUPS:
        group.register(commands)
    return parser


# -- errors -----------------------------------------------------------------------------

_LOOKUP = {
    "create_invoice": "an invoice may have been made; check the gateway before creating another",
    "cancel_invoice": "check it with 'qrispay invoice show ID'",
    "create_withdrawal": "look for it with 'qrispay withdraw list --status pending' "
    "before asking again",
}

#: The other expected failures, most specific first: the prefix of their message
#: and the exit code.
_EXITS: tuple[tuple[type[BaseException], str, ExitCode], ...] = (
    (errors.InvoiceNotCancellableError, "cannot cancel: ", ExitCode.ERROR),
    (errors.NotFoundError, "not found: ", ExitCode.ERROR),
    (errors.BadRequestError, "refused: ", ExitCode.ERROR),
    (errors.ServerError, "server error: ", ExitCode.ERROR),
    (errors.APIStatusError, "refused: ", ExitCode.ERROR),
    (errors.APITimeoutError, "timed out: ", ExitCode.ERROR),
    (errors.APIConnectionError, "cannot connect: ", ExitCode.ERROR),
    (errors.ResponseDecodeError, "unreadable answer: ", ExitCode.ERROR),
    (errors.QrispayError, "", ExitCode.ERROR),
    (ImportError, "", ExitCode.USAGE),  # a missing extra
    (ValueError, "invalid argument: ", ExitCode.USAGE),  # client-side: nothing was sent
)


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the error itself."""
    inner = getattr(error, "exceptions", None)
    if isinstance(inner, tuple) and inner and all(isinstance(e, BaseException) for e in inner):
        return [leaf for e in inner for leaf in _leaves(e)]
    return [error]


def _explain(error: BaseException) -> tuple[str, int] | None:
    """The one line and the exit code for an expected failure, or None."""
    if isinstance(error, CommandError):
        return str(error), error.code
    if isinstance(error, errors.OutcomeUnknownError):
        hint = _LOOKUP.get(error.operation, "look the outcome up before trying again")
        return f"outcome unknown: {error}; {hint}", ExitCode.OUTCOME_UNKNOWN
    if isinstance(error, qris.QrisError):
        detail = re.sub(r"^payload:? ", "", str(error))
        return f"invalid QRIS payload: {detail}", ExitCode.ERROR
    if isinstance(error, errors.AuthenticationError):
        names = (
            "QRISPAY_AUTH, QRISPAY_MERCHANT and QRISPAY_TOKEN"
            if error.path == FEED_PATH
            else "QRISPAY_API_KEY"
        )
        return f"authentication failed: {error}; check {names}", ExitCode.ERROR
    if isinstance(error, errors.RateLimitError):
        wait = f"; try again in {error.retry_after:g} s" if error.retry_after else ""
        return f"rate limited: {error}{wait}", ExitCode.ERROR
    for cls, prefix, code in _EXITS:
        if isinstance(error, cls):
            return f"{prefix}{error}", code
    return None


def _report(error: BaseException, err: TextIO) -> int:
    leaves = _leaves(error)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        err.write("qrispay: interrupted\n")
        return ExitCode.INTERRUPTED
    explained = [_explain(leaf) for leaf in leaves]
    if not explained or any(item is None for item in explained):
        raise error  # a bug: the traceback is the honest report
    message, code = next(item for item in explained if item is not None)
    err.write(f"qrispay: error: {message}\n")
    return code


# -- main ------------------------------------------------------------------------------


def _lenient(stream: TextIO) -> None:
    # A server's text may not fit a legacy console's code page: never crash on it.
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(Exception):
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    _lenient(sys.stdout)
    _lenient(sys.stderr)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error argparse printed
        return exit.code if isinstance(exit.code, int) else ExitCode.USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE

    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    if args.command != "sandbox":  # the sandbox prints its own fake credentials on purpose
        # Split: QRISPAY_WEBHOOK_SECRET may hold several secrets (a rotation).
        redactor = Redactor(part for name in SECRET_VARS for part in env(name).split())
        out = cast(TextIO, Scrubbed(sys.stdout, redactor))
        err = cast(TextIO, Scrubbed(sys.stderr, redactor))
    context.call_timeout = args.timeout
    spinner = None
    # Progress for a person at a terminal; never to a pipe, in JSON or on a dumb terminal.
    progress = (
        not args.json
        and not args.no_progress
        and interactive(err)
        and os.environ.get("TERM") != "dumb"
    )
    if progress and args.asynchronous:
        encoding = (getattr(sys.stderr, "encoding", None) or "").lower().replace("-", "")
        spinner = Spinner(err, unicode=encoding == "utf8", fileno=_fileno(sys.stderr))
        out = cast(TextIO, Guarded(out, spinner))
        err = cast(TextIO, Guarded(err, spinner))
    ctx = Ctx(
        json=args.json,
        out=out,
        err=err,
        style=Style(wants_colour(sys.stdout)),
        spinner=spinner,
    )
    try:
        return _run(args, ctx, out, err, progress)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.ERROR


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


async def _spinning(handler: Any, args: argparse.Namespace, ctx: Ctx) -> int:
    """Run ``handler`` with the spinner redrawn beside it; its result or error as is."""
    assert ctx.spinner is not None
    failure: Exception | None = None
    code = 0
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ctx.spinner.run)
        try:
            code = int(await handler(args, ctx))
        except Exception as error:  # re-raised outside, not wrapped in a group
            failure = error
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return code


def _run(args: argparse.Namespace, ctx: Ctx, out: TextIO, err: TextIO, progress: bool) -> int:
    # Retries shown as they come to a person at a terminal; never to a pipe or in JSON.
    with warnings_to(err, log_level(args.verbose, args.log_level), progress=progress):
        try:
            if ctx.spinner is not None:
                code = anyio.run(_spinning, args.handler, args, ctx)
            elif args.asynchronous:
                code = anyio.run(args.handler, args, ctx)
            else:
                code = args.handler(args, ctx)
            out.flush()
            return int(code)
        except BaseException as error:
            if isinstance(error, SystemExit):
                raise
            if any(isinstance(leaf, BrokenPipeError) for leaf in _leaves(error)):
                raise BrokenPipeError from None
            return _report(error, err)
