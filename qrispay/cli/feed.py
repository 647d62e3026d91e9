"""``qrispay mutations``: one fetch of the check-payment feed."""

from __future__ import annotations

import argparse
from typing import Any

from . import context
from ._exit import ExitCode
from .argtypes import command
from .context import Ctx
from .output import dumps, format_rupiah, format_time, table

__all__ = ["register"]

_HEADERS = ("date", "type", "amount", "balance", "brand", "qris", "issuer_reff", "buyer_reff")


async def _mutations(args: argparse.Namespace, ctx: Ctx) -> int:
    async with context.feed() as feed:
        with ctx.waiting("check_payment", "QRISPAY_FEED_URL"):
            batch = await feed.fetch()
    if ctx.json:
        ctx.emit({"rows": batch.rows, "rejected": batch.rejected})
        return ExitCode.OK
    if batch.rows:
        rows = [
            (
                format_time(row.date),
                str(row.type),
                format_rupiah(row.amount),
                format_rupiah(row.balance),
                row.brand_name,
                row.qris,
                row.issuer_reff,
                row.buyer_reff,
            )
            for row in batch
        ]
        ctx.line(table(_HEADERS, rows, right=(2, 3), style=ctx.style))
        ctx.line(f"\n{len(batch)} row(s), newest first.")
    else:
        ctx.line("The feed has no rows.")
    if batch.rejected:
        ctx.line(f"\n{len(batch.rejected)} row(s) could not be read:")
        rejected = [(bad.reason, _clip(dumps(bad.raw, compact=True), 70)) for bad in batch.rejected]
        ctx.line(table(("why", "row as sent"), rejected, style=ctx.style))
    ctx.note(
        "The feed caches each answer for 30 s: fetching again sooner returns the same rows "
        "and spends quota."
    )
    return ExitCode.OK


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def register(commands: Any) -> None:
    """Add ``mutations`` to the ``commands`` sub-parsers."""
    command(
        commands, "mutations", "one fetch of the check-payment feed", _mutations, asynchronous=True
    )
