"""``qrispay sandbox``: serve the simulator of both APIs on loopback."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from typing import Any

from .._wire import FEED_PATH
from . import argtypes
from ._exit import CommandError, ConfigError, ExitCode
from .argtypes import command, int_at_least, port, seconds
from .context import Ctx, interactive
from .output import format_rupiah, key_values, table

__all__ = ["register"]

#: Each command's usage and what it does, in the order ``help`` lists them.
_COMMANDS = {
    "pay": ("pay TOTAL [BRAND]", "a customer pays TOTAL (an invoice with that total turns paid)"),
    "invoices": ("invoices", "the pending invoices"),
    "withdrawals": ("withdrawals", "the withdrawals"),
    "approve": ("approve ID [NOTE]", "the gateway's admin approves a withdrawal"),
    "reject": ("reject ID [NOTE]", "... or rejects it (the amount is refunded)"),
    "help": ("help", "this list;  quit  stops the sandbox (so does Ctrl-C)"),
}
_SANDBOX_HELP = "Commands (type one and Enter):\n" + "\n".join(
    f"  {usage:<22} {what}" for usage, what in _COMMANDS.values()
)


def _wait_for_interrupt() -> None:  # pragma: no cover - replaced in tests
    while True:
        time.sleep(3600)


def _pay(sandbox: Any, rest: list[str]) -> str:
    total = argtypes.amount(rest[0])
    brand = rest[1].upper() if len(rest) > 1 else "GOPAY"
    invoice_id = sandbox.pending_totals().get(total)
    row = sandbox.pay(total, brand=brand)
    paid = (
        f"invoice {invoice_id} is now paid" if invoice_id else "no pending invoice has that total"
    )
    return f"credit {format_rupiah(total)} by {brand}, ref {row.issuer_reff}: {paid}"


def _invoices(sandbox: Any) -> str:
    pending = sandbox.pending_totals()
    rows = [(invoice_id, format_rupiah(total)) for total, invoice_id in sorted(pending.items())]
    return table(("invoice", "total"), rows, right=(1,)) if rows else "none pending"


def _withdrawals(sandbox: Any) -> str:
    items = [sandbox.withdrawal(wid) for wid in sandbox.withdrawal_ids()]
    listed = [
        (w["withdraw_id"], format_rupiah(w["amount"]), w["status"], w["account_number"])
        for w in items
    ]
    if not listed:
        return "none"
    return table(("withdrawal", "amount", "status", "account"), listed, right=(1,))


def _decide(sandbox: Any, command: str, rest: list[str]) -> str:
    note = " ".join(rest[1:]) or None
    act = sandbox.approve_withdrawal if command == "approve" else sandbox.reject_withdrawal
    result = act(rest[0], note=note)
    return f"withdrawal {result['withdraw_id']} is now {result['status']}"


def _answer(sandbox: Any, line: str) -> str | None:
    """What one line typed into ``qrispay sandbox`` prints; None to stop."""
    words = line.split()
    command, rest = words[0].lower(), words[1:]
    try:
        if command in ("quit", "exit"):
            return None
        if command == "help":
            return _SANDBOX_HELP
        if command == "pay" and 1 <= len(rest) <= 2:
            return _pay(sandbox, rest)
        if command == "invoices" and not rest:
            return _invoices(sandbox)
        if command == "withdrawals" and not rest:
            return _withdrawals(sandbox)
        if command in ("approve", "reject") and rest:
            return _decide(sandbox, command, rest)
        if command in _COMMANDS:
            # A known command with the wrong arguments: how to write it, not a shrug.
            usage, what = _COMMANDS[command]
            return f"usage: {usage}  ({what})"
        return f"not understood: {line.strip()!r} (type 'help')"
    except KeyError as exc:
        return f"no such withdrawal: {exc.args[0]}"
    except (ValueError, argparse.ArgumentTypeError) as exc:
        return f"refused: {exc}"


def _sandbox_command(sandbox: Any, line: str, ctx: Ctx) -> bool:
    """Run one line typed into ``qrispay sandbox``; False to stop."""
    if not line.split():
        return True
    answer = _answer(sandbox, line)
    if answer is None:
        return False
    ctx.line(answer)
    ctx.out.flush()
    return True


def _announce(args: argparse.Namespace, ctx: Ctx, url: str, env: dict[str, str]) -> None:
    if ctx.json:
        ctx.emit(
            {
                "base_url": url,
                "gateway_url": url,
                "feed_url": url + FEED_PATH,
                "env": env,
                "ttl": args.ttl,
                "invoice_ttl": args.invoice_ttl,
                "gateway_balance": args.balance,
            },
            compact=True,
        )
        return
    ctx.line(
        ctx.style("qrispay sandbox", "bold") + f": both APIs, simulated, on {url} (loopback only)."
    )
    settings = (
        f"feed cache {args.ttl:g} s, invoices expire after {args.invoice_ttl:g} s, "
        f"gateway balance {format_rupiah(args.balance)}"
    )
    pairs = [
        ("gateway", f"{url}/api/v1/... (balance, invoice, withdraw)"),
        ("feed", f"{url}{FEED_PATH}"),
        ("settings", settings),
    ]
    ctx.line(key_values(pairs, indent="  "))
    ctx.line("\nIt accepts only these (fake) credentials. To use it, in another shell:")
    for name, value in env.items():
        ctx.line(f"  export {name}='{value}'")
    ctx.line(
        "then, e.g.:  qrispay invoice create 25000;  qrispay watch --ttl "
        f"{args.ttl:g} --invoice ID\n"
    )
    if interactive(sys.stdin):
        ctx.line(_SANDBOX_HELP + "\n")
    ctx.line("Ctrl-C stops it.")


def _serve(args: argparse.Namespace, ctx: Ctx, sandbox: Any) -> None:
    env = {
        "QRISPAY_GATEWAY_URL": "",
        "QRISPAY_API_KEY": sandbox.api_key,
        "QRISPAY_FEED_URL": "",
        "QRISPAY_AUTH": sandbox.auth,
        "QRISPAY_MERCHANT": sandbox.merchant,
        "QRISPAY_TOKEN": sandbox.token,
    }
    with sandbox.serve(host=args.host, port=args.port) as url:
        env["QRISPAY_GATEWAY_URL"] = env["QRISPAY_FEED_URL"] = url
        _announce(args, ctx, url, env)
        ctx.out.flush()
        try:
            for line in sys.stdin:
                if not _sandbox_command(sandbox, line, ctx):
                    return
        except (OSError, ValueError):  # no usable stdin: just serve
            pass
        _wait_for_interrupt()


def _run_sandbox(args: argparse.Namespace, ctx: Ctx) -> int:
    try:
        from ..sandbox import Sandbox
    except ImportError as exc:
        raise ConfigError(str(exc)) from None

    sandbox = Sandbox(
        ttl=args.ttl,
        seed=args.seed,
        invoice_ttl=timedelta(seconds=args.invoice_ttl),
        gateway_balance=args.balance,
    )
    try:
        _serve(args, ctx, sandbox)
    except KeyboardInterrupt:
        ctx.note("qrispay sandbox: stopped.")
        return ExitCode.OK
    except OSError as exc:
        raise CommandError(
            f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return ExitCode.OK


def register(commands: Any) -> None:
    """Add ``sandbox`` to the ``commands`` sub-parsers."""
    p = command(commands, "sandbox", "serve the simulator of both APIs on loopback", _run_sandbox)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8765, help="default 8765; 0 picks a free one")
    p.add_argument(
        "--ttl", type=seconds, default=30.0, metavar="SECONDS", help="feed cache (default 30)"
    )
    p.add_argument(
        "--invoice-ttl",
        type=seconds,
        default=900.0,
        metavar="SECONDS",
        help="invoice lifetime (default 900)",
    )
    p.add_argument(
        "--balance",
        type=int_at_least(0),
        default=1_000_000,
        metavar="RUPIAH",
        help="starting gateway balance (default 1000000)",
    )
    p.add_argument(
        "--seed",
        type=int_at_least(0),
        default=None,
        help=(
            "ids and references derive from it, the same in every run; by default "
            "they are fresh in every run, so a restarted service never takes a new "
            "payment for one it saw before"
        ),
    )
