"""``qrispay qris``: read a QRIS payload, or make it dynamic (with a QR image)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from .. import qris
from . import argtypes
from ._exit import CommandError, ExitCode
from .argtypes import AMOUNT_HELP, action, actions, command, int_at_least
from .context import Ctx
from .output import format_rupiah, key_values, table

__all__ = ["register"]


def _value_note(tag: str, value: str) -> str:
    if tag == "01":
        return {"11": " (static)", "12": " (dynamic)"}.get(value, "")
    if tag == "53" and value == "360":
        return " (IDR)"
    return ""


def _payload_arg(text: str) -> str:
    if text == "-":
        text = sys.stdin.read()
    return text.strip()


def _tags(payload: qris.Payload) -> list[dict[str, Any]]:
    tags: list[dict[str, Any]] = []
    for tag, value in payload.tags:
        entry: dict[str, Any] = {"tag": tag, "name": qris.tag_name(tag), "value": value}
        if qris.is_template(tag):
            try:
                entry["subtags"] = [
                    {"tag": sub, "name": qris.subtag_name(tag, sub), "value": subvalue}
                    for sub, subvalue in qris.parse_template(value)
                ]
            except qris.QrisError:
                entry["subtags"] = None  # a private format: shown raw
        tags.append(entry)
    return tags


def _tag_rows(tags: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for entry in tags:
        value = entry["value"]
        shown = "" if entry.get("subtags") else value + _value_note(entry["tag"], value)
        rows.append((entry["tag"], f"{len(value):02d}", entry["name"], shown))
        for sub in entry.get("subtags") or ():
            rows.append(
                ("  " + sub["tag"], f"{len(sub['value']):02d}", "  " + sub["name"], sub["value"])
            )
    return rows


def _qris_show(args: argparse.Namespace, ctx: Ctx) -> int:
    payload = qris.parse(_payload_arg(args.payload))
    try:
        amount: int | None = payload.amount
        amount_text = format_rupiah(amount) if amount is not None else None
    except qris.QrisError:  # a fraction of a rupiah: show it as it is
        amount = None
        amount_text = f"{payload.get('54')} (not whole rupiah)"
    crc = payload.get("63")
    tags = _tags(payload)
    if ctx.json:
        ctx.emit(
            {
                "dynamic": payload.is_dynamic,
                "merchant_name": payload.merchant_name,
                "merchant_city": payload.merchant_city,
                "amount": amount,
                "crc": crc,
                "crc_valid": True,
                "tags": tags,
            }
        )
        return ExitCode.OK
    initiation = payload.get("01")
    where = "no tag 01" if initiation is None else f"tag 01 = {initiation}"
    if payload.is_dynamic:
        kind = f"dynamic ({where}): for one payment, usually with its amount"
    else:
        kind = f"static ({where}): reusable, the payer types the amount"
    place = ", ".join(part for part in (payload.merchant_name, payload.merchant_city) if part)
    ctx.line(
        key_values(
            [
                ("kind", kind),
                ("merchant", place or None),
                ("amount", amount_text or "none"),
                ("CRC", f"{crc} (valid)"),
            ]
        )
    )
    ctx.line()
    ctx.line(table(("tag", "len", "name", "value"), _tag_rows(tags), style=ctx.style))
    return ExitCode.OK


def _qris_convert(args: argparse.Namespace, ctx: Ctx) -> int:
    source = _payload_arg(args.payload)
    before = qris.parse(source)
    dynamic = qris.to_dynamic(source, args.amount)
    image: str | None = None
    kind: str | None = None
    if args.png or args.svg:
        from .. import qr

        kind = "png" if args.png else "svg"
        target = args.png or args.svg
        try:
            qr.save(dynamic, target, kind="png" if args.png else "svg", scale=args.scale)
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
        image = str(target)
    if ctx.json:
        ctx.emit({"payload": dynamic, "amount": args.amount, "image": image, "image_kind": kind})
        return ExitCode.OK
    ctx.line(dynamic)
    if before.get("54") is not None:
        ctx.note(f"The payload's amount {before.get('54')} was replaced.")
    if image:
        ctx.note(f"Wrote the QR code for {format_rupiah(args.amount)} to {image} ({kind}).")
    return ExitCode.OK


def _no_action(args: argparse.Namespace, ctx: Ctx) -> NoReturn:  # pragma: no cover
    raise AssertionError("argparse requires an action")


def register(commands: Any) -> None:
    """Add ``qris`` (``show`` and ``convert``) to the ``commands`` sub-parsers."""
    p = command(
        commands, "qris", "read a QRIS payload, or make it dynamic (with a QR image)", _no_action
    )
    group = actions(p)
    a = action(group, "show", "the payload's tags, merchant, amount and CRC")
    a.add_argument("payload", metavar="PAYLOAD", help="the QRIS string ('-' reads stdin)")
    a.set_defaults(handler=_qris_show)
    a = action(group, "convert", "the dynamic payload for AMOUNT (printed on stdout)")
    a.add_argument("payload", metavar="PAYLOAD", help="the QRIS string ('-' reads stdin)")
    a.add_argument("amount", type=argtypes.amount, metavar="AMOUNT", help=AMOUNT_HELP)
    image = a.add_mutually_exclusive_group()
    image.add_argument("--png", metavar="FILE", help="also write its QR code as PNG")
    image.add_argument("--svg", metavar="FILE", help="also write its QR code as SVG")
    a.add_argument("--scale", type=int_at_least(1), default=8, help="pixels a module (8)")
    a.set_defaults(handler=_qris_convert)
