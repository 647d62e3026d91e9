"""``qrispay balance``, ``qrispay invoice`` and ``qrispay withdraw``: the gateway API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import attrs

from ..gateway import GatewayClient
from ..models import Invoice, Withdrawal
from . import context
from ._exit import ExitCode
from .argtypes import AMOUNT_HELP, action, actions, amount, command, int_at_least
from .context import Ctx
from .output import Style, format_rupiah, format_time, key_values, table

__all__ = ["register"]


def _invoice_pairs(invoice: Invoice, answered: datetime | None = None) -> list[tuple[str, object]]:
    created = format_time(invoice.created_at)
    if invoice.created_at is None and answered is not None:
        # The create answer carries no creation time: the moment it came is the best known.
        created = f"{format_time(answered)} (when the gateway answered)"
    pairs: list[tuple[str, object]] = [
        ("invoice", invoice.invoice_id),
        ("status", invoice.status),
        ("amount", format_rupiah(invoice.amount)),
        ("code/fee", format_rupiah(invoice.fee)),
        ("total", f"{format_rupiah(invoice.total)}  (the customer pays exactly this)"),
        ("created", created),
        ("expires", format_time(invoice.expired_at)),
        ("QRIS image", invoice.qris_image or None),
    ]
    if invoice.qris_payload:
        pairs.append(("QRIS payload", invoice.qris_payload))
    return pairs


def _withdrawal_pairs(w: Withdrawal) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = [
        ("withdrawal", w.withdraw_id),
        ("status", w.status),
        ("amount", format_rupiah(w.amount)),
        ("fee", format_rupiah(w.fee)),
        ("deducted", format_rupiah(w.total_deduct)),
        ("method", w.method),
        ("account", w.account_number),
        ("name", w.account_name),
        ("created", format_time(w.created_at)),
        ("processed", format_time(w.processed_at)),
        ("admin note", w.admin_note),
    ]
    if w.new_balance is not None:
        pairs.append(("balance after", format_rupiah(w.new_balance)))
    return pairs


def _withdrawal_table(items: Sequence[Withdrawal], style: Style) -> str:
    rows = [
        (
            w.withdraw_id,
            format_time(w.created_at, seconds=False),
            format_rupiah(w.amount),
            format_rupiah(w.fee),
            format_rupiah(w.total_deduct),
            str(w.status),
            w.account_number,
            w.account_name,
            format_time(w.processed_at, seconds=False),
        )
        for w in items
    ]
    headers = ("withdrawal", "created", "amount", "fee", "deducted", "status", "account", "name")
    return table((*headers, "processed"), rows, right=(2, 3, 4), style=style)


async def _balance(args: argparse.Namespace, ctx: Ctx) -> int:
    async with context.gateway() as gw:
        with ctx.waiting("balance", "QRISPAY_GATEWAY_URL"):
            balance = await gw.get_balance()
    if ctx.json:
        ctx.emit(balance)
    else:
        ctx.line(key_values([("balance", format_rupiah(balance.balance))]))
    return ExitCode.OK


async def _invoice(args: argparse.Namespace, ctx: Ctx) -> int:
    answered = None
    async with context.gateway() as gw:
        if args.action == "create":
            with ctx.waiting("create_invoice", "QRISPAY_GATEWAY_URL"):
                invoice = await gw.create_invoice(args.amount)
            answered = datetime.now(timezone.utc)
        elif args.action == "show":
            with ctx.waiting("invoice_status", "QRISPAY_GATEWAY_URL"):
                invoice = await gw.get_invoice(args.invoice_id)
        else:
            with ctx.waiting("cancel_invoice", "QRISPAY_GATEWAY_URL"):
                result = await gw.cancel_invoice(args.invoice_id)
            if ctx.json:
                ctx.emit(result)
            else:
                message = f" ({result.message})" if result.message else ""
                ctx.line(f"Invoice {result.invoice_id} cancelled: now {result.status}{message}.")
            return ExitCode.OK
    if ctx.json:
        ctx.emit(invoice)
    else:
        ctx.line(key_values(_invoice_pairs(invoice, answered)))
    return ExitCode.OK


async def _withdraw(args: argparse.Namespace, ctx: Ctx) -> int:
    async with context.gateway() as gw:
        if args.action == "list":
            with ctx.waiting("withdrawal_history", "QRISPAY_GATEWAY_URL"):
                await (_withdraw_all(gw, args, ctx) if args.all else _withdraw_page(gw, args, ctx))
            return ExitCode.OK
        if args.action == "create":
            with ctx.waiting("create_withdrawal", "QRISPAY_GATEWAY_URL"):
                w = await gw.create_withdrawal(args.amount, args.account_number, args.account_name)
        else:
            with ctx.waiting("withdrawal_status", "QRISPAY_GATEWAY_URL"):
                w = await gw.get_withdrawal(args.withdraw_id)
    if ctx.json:
        ctx.emit(w)
        return ExitCode.OK
    if args.action == "create":
        # The create answer may leave out what was asked: show it, marked as such.
        w = attrs.evolve(
            w,
            account_number=w.account_number or f"{args.account_number} (as asked)",
            account_name=w.account_name or f"{args.account_name} (as asked)",
        )
    ctx.line(key_values(_withdrawal_pairs(w)))
    if args.action == "create" and str(w.status) == "pending":
        ctx.note(
            f"The withdrawal is pending until the gateway's admin decides; "
            f"'qrispay withdraw show {w.withdraw_id}' tells."
        )
    return ExitCode.OK


async def _withdraw_all(gw: GatewayClient, args: argparse.Namespace, ctx: Ctx) -> None:
    items = [w async for w in gw.iter_withdrawals(status=args.status, limit=args.limit)]
    if ctx.json:
        ctx.emit({"items": items, "total": len(items)})
        return
    ctx.line(_withdrawal_table(items, ctx.style) if items else "No withdrawals.")
    if items:
        ctx.line(f"\n{len(items)} withdrawal(s), newest first.")


async def _withdraw_page(gw: GatewayClient, args: argparse.Namespace, ctx: Ctx) -> None:
    page = await gw.list_withdrawals(page=args.page, limit=args.limit, status=args.status)
    if ctx.json:
        ctx.emit(page)
        return
    if page.items:
        ctx.line(_withdrawal_table(page.items, ctx.style))
        ctx.line()
    else:
        ctx.line("No withdrawals on this page.")
    ctx.line(
        f"Page {page.page} of {max(page.total_pages, 1)} "
        f"({page.total} withdrawal(s), {page.limit} a page)."
    )


def register(commands: Any) -> None:
    """Add ``balance``, ``invoice`` and ``withdraw`` to the ``commands`` sub-parsers."""
    command(commands, "balance", "the gateway balance", _balance, asynchronous=True)

    p = command(
        commands, "invoice", "create, show or cancel a deposit invoice", _invoice, asynchronous=True
    )
    group = actions(p)
    action(group, "create", "create an invoice").add_argument(
        "amount", type=amount, metavar="AMOUNT", help=AMOUNT_HELP
    )
    action(group, "show", "an invoice's status").add_argument("invoice_id", metavar="ID")
    action(group, "cancel", "cancel a pending invoice").add_argument("invoice_id", metavar="ID")

    p = command(commands, "withdraw", "DANA withdrawals", _withdraw, asynchronous=True)
    group = actions(p)
    a = action(group, "create", "ask for a withdrawal to a DANA account")
    a.add_argument("amount", type=amount, metavar="AMOUNT", help=AMOUNT_HELP)
    a.add_argument("account_number", help="the DANA phone number, e.g. 081234567890")
    a.add_argument("account_name", help="the account holder's name")
    action(group, "show", "a withdrawal's status").add_argument("withdraw_id", metavar="ID")
    a = action(group, "list", "the withdrawal history, newest first")
    a.add_argument("--status", metavar="{pending,success,rejected}", help="only this status")
    pages = a.add_mutually_exclusive_group()
    pages.add_argument("--page", type=int_at_least(1), default=1, help="default 1")
    pages.add_argument("--all", action="store_true", help="every page")
    a.add_argument("--limit", type=int_at_least(1), default=10, help="per page, default 10")
