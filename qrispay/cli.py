"""The ``qrispay`` command.

``qrispay demo`` and ``qrispay sandbox`` need no credentials. The other
commands call the real APIs (or a sandbox) with credentials from the
environment; see ``qrispay --help``. Every expected failure is one line on
stderr and an exit code, never a traceback; the credentials are never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TextIO, cast

import anyio
import attrs

from . import qris
from ._http import Redactor
from ._tables import (
    Style,
    describe_event,
    dumps,
    event_label,
    format_rupiah,
    format_time,
    jsonable,
    key_values,
    table,
    wants_colour,
)
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    EventsOverflowError,
    InvoiceNotCancellableError,
    NotFoundError,
    OutcomeUnknownError,
    QrispayError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from .events import Event
from .gateway import GatewayClient
from .models import Invoice, InvoiceStatus, Withdrawal
from .mutations import DEFAULT_FEED_URL, MutationClient

__all__ = [
    "ENV_VARS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTCOME_UNKNOWN",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

EXIT_OK = 0
#: The API, the network or a QRIS payload said no.
EXIT_ERROR = 1
#: Bad arguments, a missing or invalid environment variable, a missing extra.
EXIT_USAGE = 2
#: A request that creates something may or may not have happened: look it up first.
EXIT_OUTCOME_UNKNOWN = 3
EXIT_INTERRUPTED = 130

#: The environment variables the API commands read, and what each one is.
ENV_VARS: dict[str, str] = {
    "QRISPAY_API_KEY": "the gateway's API key (secret)",
    "QRISPAY_GATEWAY_URL": "the gateway's base URL, e.g. https://gateway.example",
    "QRISPAY_AUTH": "the check-payment feed's auth value (secret)",
    "QRISPAY_MERCHANT": "the feed's merchant code",
    "QRISPAY_TOKEN": "the feed's token (secret)",
    "QRISPAY_FEED_URL": f"the feed's base URL (optional; default {DEFAULT_FEED_URL})",
}
_SECRET_VARS = ("QRISPAY_API_KEY", "QRISPAY_AUTH", "QRISPAY_TOKEN")
_GATEWAY_VARS = ("QRISPAY_API_KEY", "QRISPAY_GATEWAY_URL")
_FEED_VARS = ("QRISPAY_AUTH", "QRISPAY_MERCHANT", "QRISPAY_TOKEN")
_FEED_PATH = "/check-payment"

_AMOUNT_HELP = "whole rupiah in digits, e.g. 25000"

_EPILOG = (
    "environment (for balance, invoice, withdraw, mutations and watch):\n"
    + "\n".join(f"  {name:<20} {what}" for name, what in ENV_VARS.items())
    + "\n\n"
    "  'qrispay sandbox' prints the values that point these at a local simulator.\n\n"
    "output:\n"
    "  tables by default; --json (before or after the command) for scripts: money as\n"
    "  int rupiah, times as ISO 8601 with their offset ('watch --json': one object a line).\n\n"
    "exit codes:\n"
    "  0 done   1 the API, the network or a payload said no   2 bad usage or configuration\n"
    "  3 the outcome of a create or cancel is unknown: look it up before trying again\n"
    "  130 interrupted (watch and sandbox stop with 0 on Ctrl-C)"
)


class CommandError(Exception):
    """An expected failure: one line on stderr and ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(CommandError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


# -- argument types ------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _amount(text: str) -> int:
    value = text.strip()
    if not _DIGITS.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an amount: give whole rupiah in digits, like 25000 "
            "(no dots, commas or 'Rp')"
        )
    amount = int(value)
    if amount < 1:
        raise argparse.ArgumentTypeError("an amount must be at least 1 rupiah")
    return amount


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = text.strip()
        if not _DIGITS.fullmatch(value) or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {minimum}")
        return int(value)

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return value


# -- output ---------------------------------------------------------------------


class _Scrubbed(io.TextIOBase):
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
class _Ctx:
    json: bool
    out: TextIO
    err: TextIO
    style: Style

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """A message for the person, not the script: stderr."""
        self.err.write(text + "\n")
        self.err.flush()

    def emit(self, value: Any, *, compact: bool = False) -> None:
        self.out.write(dumps(value, compact=compact) + "\n")
        self.out.flush()


class _LogLine(logging.Formatter):
    """``qrispay: warning: message``, one line, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return f"qrispay: {record.levelname.lower()}: {record.getMessage()}"


@contextlib.contextmanager
def _warnings_to(stream: TextIO) -> Iterator[None]:
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LogLine())
    target = logging.getLogger("qrispay")
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)


# -- configuration ---------------------------------------------------------------


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _require(names: Sequence[str], what: str) -> dict[str, str]:
    missing = [name for name in names if not _env(name)]
    if missing:
        listed = (
            missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        )
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{listed} {verb} not set ({what}; see 'qrispay --help')")
    return {name: _env(name) for name in names}


def _url(name: str, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    return value


def _gateway_configured() -> bool:
    return all(_env(name) for name in _GATEWAY_VARS)


def _gateway() -> GatewayClient:
    values = _require(_GATEWAY_VARS, "needed for the gateway API")
    url = _url("QRISPAY_GATEWAY_URL", values["QRISPAY_GATEWAY_URL"])
    return GatewayClient(values["QRISPAY_API_KEY"], base_url=url)


def _feed() -> MutationClient:
    values = _require(_FEED_VARS, "needed for the check-payment feed")
    url = _url("QRISPAY_FEED_URL", _env("QRISPAY_FEED_URL") or DEFAULT_FEED_URL)
    return MutationClient(
        values["QRISPAY_AUTH"], values["QRISPAY_MERCHANT"], values["QRISPAY_TOKEN"], base_url=url
    )


# -- showing models -----------------------------------------------------------------


def _invoice_pairs(invoice: Invoice) -> list[tuple[str, object]]:
    pairs: list[tuple[str, object]] = [
        ("invoice", invoice.invoice_id),
        ("status", invoice.status),
        ("amount", format_rupiah(invoice.amount)),
        ("code/fee", format_rupiah(invoice.fee)),
        ("total", f"{format_rupiah(invoice.total)}  (the customer pays exactly this)"),
        ("created", format_time(invoice.created_at)),
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
    return table(
        (
            "withdrawal",
            "created",
            "amount",
            "fee",
            "deducted",
            "status",
            "account",
            "name",
            "processed",
        ),
        rows,
        right=(2, 3, 4),
        style=style,
    )


# -- API commands ------------------------------------------------------------------


async def _balance(args: argparse.Namespace, ctx: _Ctx) -> int:
    async with _gateway() as gw:
        balance = await gw.get_balance()
    if ctx.json:
        ctx.emit(balance)
    else:
        ctx.line(key_values([("balance", format_rupiah(balance.balance))]))
    return EXIT_OK


async def _invoice(args: argparse.Namespace, ctx: _Ctx) -> int:
    async with _gateway() as gw:
        if args.action == "create":
            invoice = await gw.create_invoice(args.amount)
        elif args.action == "show":
            invoice = await gw.get_invoice(args.invoice_id)
        else:
            result = await gw.cancel_invoice(args.invoice_id)
            if ctx.json:
                ctx.emit(result)
            else:
                message = f" ({result.message})" if result.message else ""
                ctx.line(f"Invoice {result.invoice_id} cancelled: now {result.status}{message}.")
            return EXIT_OK
    if ctx.json:
        ctx.emit(invoice)
    else:
        ctx.line(key_values(_invoice_pairs(invoice)))
    return EXIT_OK


async def _withdraw(args: argparse.Namespace, ctx: _Ctx) -> int:
    async with _gateway() as gw:
        if args.action == "create":
            w = await gw.create_withdrawal(args.amount, args.account_number, args.account_name)
        elif args.action == "show":
            w = await gw.get_withdrawal(args.withdraw_id)
        elif args.all:
            items = [w async for w in gw.iter_withdrawals(status=args.status, limit=args.limit)]
            if ctx.json:
                ctx.emit({"items": items, "total": len(items)})
            else:
                ctx.line(_withdrawal_table(items, ctx.style) if items else "No withdrawals.")
                if items:
                    ctx.line(f"\n{len(items)} withdrawal(s), newest first.")
            return EXIT_OK
        else:
            page = await gw.list_withdrawals(page=args.page, limit=args.limit, status=args.status)
            if ctx.json:
                ctx.emit(page)
            else:
                if page.items:
                    ctx.line(_withdrawal_table(page.items, ctx.style))
                    ctx.line()
                else:
                    ctx.line("No withdrawals on this page.")
                ctx.line(
                    f"Page {page.page} of {max(page.total_pages, 1)} "
                    f"({page.total} withdrawal(s), {page.limit} a page)."
                )
            return EXIT_OK
    if ctx.json:
        ctx.emit(w)
    else:
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
    return EXIT_OK


async def _mutations(args: argparse.Namespace, ctx: _Ctx) -> int:
    async with _feed() as feed:
        batch = await feed.fetch()
    if ctx.json:
        ctx.emit({"rows": batch.rows, "rejected": batch.rejected})
        return EXIT_OK
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
        ctx.line(
            table(
                ("date", "type", "amount", "balance", "brand", "qris", "issuer_reff", "buyer_reff"),
                rows,
                right=(2, 3),
                style=ctx.style,
            )
        )
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
    return EXIT_OK


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# -- watch -------------------------------------------------------------------------


@attrs.define
class _WatchState:
    polls: int = 0
    failures: int = 0
    succeeded: bool = False
    last_error: str | None = None
    printed: int = 0


async def _watch(args: argparse.Namespace, ctx: _Ctx, state: _WatchState) -> int:
    from .polling import PollPolicy
    from .reconciler import Reconciler

    if args.invoice and not _gateway_configured():
        _require(_GATEWAY_VARS, "needed to look up --invoice")
    policy = PollPolicy(ttl=args.ttl, idle_interval=args.ttl + 0.5)
    async with contextlib.AsyncExitStack() as stack:
        feed = await stack.enter_async_context(_feed())
        gateway = None
        if _gateway_configured():
            gateway = await stack.enter_async_context(_gateway())
        rec = Reconciler(feed, gateway=gateway, policy=policy)
        invoices = []
        for invoice_id in args.invoice:
            assert gateway is not None
            invoice = await gateway.get_invoice(invoice_id)
            # Watched as pending whatever the gateway says now, so an invoice paid
            # or expired already still gets its event: its feed row (or, with the
            # gateway, the expiry check) settles it on the first polls.
            rec.track(attrs.evolve(invoice, status=InvoiceStatus.PENDING))
            invoices.append(invoice)
        subscription = rec.events()

        if not ctx.json and invoices:
            rows = [
                (i.invoice_id, format_rupiah(i.total), str(i.status), format_time(i.expired_at))
                for i in invoices
            ]
            ctx.line(table(("invoice", "total", "status", "expires"), rows, right=(1,)))
            ctx.line()
        gateway_note = "with the gateway" if gateway else "without the gateway"
        stop = (
            "one fetch"
            if args.once
            else f"for {args.duration:g} s"
            if args.duration
            else "until Ctrl-C"
        )
        ctx.note(
            f"Watching the feed of merchant {feed.merchant} {gateway_note}, one fetch every "
            f"{policy.interval:g} s, {len(invoices)} invoice(s) tracked, {stop}."
        )

        drained = anyio.Event()
        published: list[int] = []  # how many events the Reconciler made, once it stopped

        def show(event: Event) -> None:
            now = datetime.now(timezone.utc)
            if ctx.json:
                ctx.emit({"seen_at": now, **jsonable(event)}, compact=True)
            else:
                when = format_time(now)[11:19]
                ctx.line(f"{when}  {event_label(event, ctx.style)}  {describe_event(event)}")
                ctx.out.flush()
            state.printed += 1

        async def printer() -> None:
            try:
                async for event in subscription:
                    show(event)
                    if published and state.printed >= published[0]:
                        drained.set()
            except EventsOverflowError:  # pragma: no cover - needs 1000 events at once
                ctx.note("qrispay: warning: events came faster than they could be printed")
                drained.set()

        def sync_stats() -> None:
            state.polls = rec.stats.polls
            state.failures = rec.stats.failures
            state.succeeded = rec.stats.last_success is not None
            state.last_error = rec.stats.last_error

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(printer)
            try:
                async with rec:  # the first fetch; wrong credentials raise here
                    if args.duration:
                        await anyio.sleep(args.duration)
                    elif not args.once:
                        await anyio.sleep_forever()
                # Every event made is in the subscription's buffer: print them all.
                published.append(sum(rec.stats.events.values()))
                if state.printed >= published[0]:
                    drained.set()
                with anyio.move_on_after(5):
                    await drained.wait()
            finally:
                sync_stats()
                tasks.cancel_scope.cancel()
    return _watch_result(ctx, state)


def _watch_result(ctx: _Ctx, state: _WatchState) -> int:
    failed = f", {state.failures} failed" if state.failures else ""
    ctx.note(f"Stopped after {state.polls} fetch(es){failed}.")
    if not state.succeeded:
        raise CommandError(f"no fetch of the feed succeeded: {state.last_error or 'none made'}")
    return EXIT_OK


def _run_watch(args: argparse.Namespace, ctx: _Ctx) -> int:
    state = _WatchState()
    try:
        return anyio.run(_watch, args, ctx, state)
    except KeyboardInterrupt:
        ctx.note("")
        return _watch_result(ctx, state)


# -- QRIS payloads -----------------------------------------------------------------

_TAG_NAMES = {
    "00": "Payload format indicator",
    "01": "Point of initiation method",
    "52": "Merchant category code",
    "53": "Transaction currency",
    "54": "Transaction amount",
    "55": "Tip or convenience indicator",
    "56": "Convenience fee, fixed",
    "57": "Convenience fee, percentage",
    "58": "Country code",
    "59": "Merchant name",
    "60": "Merchant city",
    "61": "Postal code",
    "62": "Additional data",
    "63": "CRC",
    "64": "Merchant information, other language",
}
_ACCOUNT_SUBTAGS = {
    "00": "Globally unique identifier",
    "01": "Merchant PAN",
    "02": "Merchant ID",
    "03": "Merchant criteria",
}
_ADDITIONAL_SUBTAGS = {
    "01": "Bill number",
    "02": "Mobile number",
    "03": "Store label",
    "04": "Loyalty number",
    "05": "Reference label",
    "06": "Customer label",
    "07": "Terminal label",
    "08": "Purpose of transaction",
    "09": "Consumer data request",
}
_LANGUAGE_SUBTAGS = {
    "00": "Language preference",
    "01": "Merchant name",
    "02": "Merchant city",
}


def _is_template(tag: str) -> bool:
    number = int(tag)
    return 26 <= number <= 51 or number in (62, 64) or 80 <= number <= 99


def _tag_name(tag: str) -> str:
    number = int(tag)
    if tag in _TAG_NAMES:
        return _TAG_NAMES[tag]
    if 2 <= number <= 51:
        return "Merchant account information"
    if 80 <= number <= 99:
        return "Unreserved template"
    return "Reserved"


def _subtag_name(parent: str, tag: str) -> str:
    number = int(parent)
    if 26 <= number <= 51:
        return _ACCOUNT_SUBTAGS.get(tag, "Payment network specific")
    if parent == "62":
        return _ADDITIONAL_SUBTAGS.get(tag, "Payment system specific")
    if parent == "64":
        return _LANGUAGE_SUBTAGS.get(tag, "Reserved")
    return "Globally unique identifier" if tag == "00" else "Context specific"


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


def _qris_show(args: argparse.Namespace, ctx: _Ctx) -> int:
    payload = qris.parse(_payload_arg(args.payload))
    try:
        amount: int | None = payload.amount
        amount_text = format_rupiah(amount) if amount is not None else None
    except qris.QrisError:  # a fraction of a rupiah: show it as it is
        amount = None
        amount_text = f"{payload.get('54')} (not whole rupiah)"
    crc = payload.get("63")
    tags: list[dict[str, Any]] = []
    for tag, value in payload.tags:
        entry: dict[str, Any] = {"tag": tag, "name": _tag_name(tag), "value": value}
        if _is_template(tag):
            try:
                entry["subtags"] = [
                    {"tag": sub, "name": _subtag_name(tag, sub), "value": subvalue}
                    for sub, subvalue in qris.parse_template(value)
                ]
            except qris.QrisError:
                entry["subtags"] = None  # a private format: shown raw
        tags.append(entry)
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
        return EXIT_OK
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
    rows: list[tuple[str, str, str, str]] = []
    for entry in tags:
        value = entry["value"]
        shown = "" if entry.get("subtags") else value + _value_note(entry["tag"], value)
        rows.append((entry["tag"], f"{len(value):02d}", entry["name"], shown))
        for sub in entry.get("subtags") or ():
            rows.append(
                ("  " + sub["tag"], f"{len(sub['value']):02d}", "  " + sub["name"], sub["value"])
            )
    ctx.line(table(("tag", "len", "name", "value"), rows, style=ctx.style))
    return EXIT_OK


def _qris_convert(args: argparse.Namespace, ctx: _Ctx) -> int:
    source = _payload_arg(args.payload)
    before = qris.parse(source)
    dynamic = qris.to_dynamic(source, args.amount)
    image: str | None = None
    kind: str | None = None
    if args.png or args.svg:
        from . import qr

        kind = "png" if args.png else "svg"
        target = args.png or args.svg
        try:
            qr.save(dynamic, target, kind="png" if args.png else "svg", scale=args.scale)
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
        image = str(target)
    if ctx.json:
        ctx.emit({"payload": dynamic, "amount": args.amount, "image": image, "image_kind": kind})
        return EXIT_OK
    ctx.line(dynamic)
    if before.get("54") is not None:
        ctx.note(f"The payload's amount {before.get('54')} was replaced.")
    if image:
        ctx.note(f"Wrote the QR code for {format_rupiah(args.amount)} to {image} ({kind}).")
    return EXIT_OK


# -- the sandbox ---------------------------------------------------------------------

_SANDBOX_HELP = """\
Commands (type one and Enter):
  pay TOTAL [BRAND]      a customer pays TOTAL (an invoice with that total turns paid)
  invoices               the pending invoices
  withdrawals            the withdrawals
  approve ID [NOTE]      the gateway's admin approves a withdrawal
  reject ID [NOTE]       ... or rejects it (the amount is refunded)
  help                   this list;  quit  stops the sandbox (so does Ctrl-C)"""


def _interactive(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _wait_for_interrupt() -> None:  # pragma: no cover - replaced in tests
    while True:
        time.sleep(3600)


def _sandbox_command(sandbox: Any, line: str, ctx: _Ctx) -> bool:
    """Run one line typed into ``qrispay sandbox``; False to stop."""
    words = line.split()
    if not words:
        return True
    command, rest = words[0].lower(), words[1:]
    try:
        if command in ("quit", "exit"):
            return False
        if command == "help":
            ctx.line(_SANDBOX_HELP)
        elif command == "pay" and 1 <= len(rest) <= 2:
            total = _amount(rest[0])
            brand = rest[1].upper() if len(rest) > 1 else "GOPAY"
            invoice_id = sandbox.pending_totals().get(total)
            row = sandbox.pay(total, brand=brand)
            paid = (
                f"invoice {invoice_id} is now paid"
                if invoice_id
                else "no pending invoice has that total"
            )
            ctx.line(f"credit {format_rupiah(total)} by {brand}, ref {row.issuer_reff}: {paid}")
        elif command == "invoices" and not rest:
            pending = sandbox.pending_totals()
            rows = [
                (invoice_id, format_rupiah(total)) for total, invoice_id in sorted(pending.items())
            ]
            ctx.line(table(("invoice", "total"), rows, right=(1,)) if rows else "none pending")
        elif command == "withdrawals" and not rest:
            items = [sandbox.withdrawal(wid) for wid in sandbox.withdrawal_ids()]
            listed = [
                (w["withdraw_id"], format_rupiah(w["amount"]), w["status"], w["account_number"])
                for w in items
            ]
            ctx.line(
                table(("withdrawal", "amount", "status", "account"), listed, right=(1,))
                if listed
                else "none"
            )
        elif command in ("approve", "reject") and rest:
            note = " ".join(rest[1:]) or None
            act = sandbox.approve_withdrawal if command == "approve" else sandbox.reject_withdrawal
            result = act(rest[0], note=note)
            ctx.line(f"withdrawal {result['withdraw_id']} is now {result['status']}")
        else:
            ctx.line(f"not understood: {line.strip()!r} (type 'help')")
    except KeyError as exc:
        ctx.line(f"no such withdrawal: {exc.args[0]}")
    except (ValueError, argparse.ArgumentTypeError) as exc:
        ctx.line(f"refused: {exc}")
    ctx.out.flush()
    return True


def _run_sandbox(args: argparse.Namespace, ctx: _Ctx) -> int:
    try:
        from .sandbox import Sandbox
    except ImportError as exc:
        raise ConfigError(str(exc)) from None

    sandbox = Sandbox(
        ttl=args.ttl,
        seed=args.seed,
        invoice_ttl=timedelta(seconds=args.invoice_ttl),
        gateway_balance=args.balance,
    )
    env = {
        "QRISPAY_GATEWAY_URL": "",
        "QRISPAY_API_KEY": sandbox.api_key,
        "QRISPAY_FEED_URL": "",
        "QRISPAY_AUTH": sandbox.auth,
        "QRISPAY_MERCHANT": sandbox.merchant,
        "QRISPAY_TOKEN": sandbox.token,
    }
    try:
        with sandbox.serve(host=args.host, port=args.port) as url:
            env["QRISPAY_GATEWAY_URL"] = env["QRISPAY_FEED_URL"] = url
            if ctx.json:
                ctx.emit(
                    {
                        "base_url": url,
                        "gateway_url": url,
                        "feed_url": url + _FEED_PATH,
                        "env": env,
                        "ttl": args.ttl,
                        "invoice_ttl": args.invoice_ttl,
                        "gateway_balance": args.balance,
                    },
                    compact=True,
                )
            else:
                ctx.line(
                    ctx.style("qrispay sandbox", "bold")
                    + f": both APIs, simulated, on {url} (loopback only)."
                )
                ctx.line(
                    key_values(
                        [
                            ("gateway", f"{url}/api/v1/... (balance, invoice, withdraw)"),
                            ("feed", f"{url}{_FEED_PATH}"),
                            (
                                "settings",
                                f"feed cache {args.ttl:g} s, invoices expire after "
                                f"{args.invoice_ttl:g} s, gateway balance "
                                f"{format_rupiah(args.balance)}",
                            ),
                        ],
                        indent="  ",
                    )
                )
                ctx.line("\nIt accepts only these (fake) credentials. To use it, in another shell:")
                for name, value in env.items():
                    ctx.line(f"  export {name}='{value}'")
                ctx.line(
                    "then, e.g.:  qrispay invoice create 25000;  qrispay watch --ttl "
                    f"{args.ttl:g} --invoice ID\n"
                )
                if _interactive(sys.stdin):
                    ctx.line(_SANDBOX_HELP + "\n")
                ctx.line("Ctrl-C stops it.")
            ctx.out.flush()
            try:
                for line in sys.stdin:
                    if not _sandbox_command(sandbox, line, ctx):
                        return EXIT_OK
            except (OSError, ValueError):  # no usable stdin: just serve
                pass
            _wait_for_interrupt()
    except KeyboardInterrupt:
        ctx.note("qrispay sandbox: stopped.")
        return EXIT_OK
    except OSError as exc:
        raise CommandError(
            f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return EXIT_OK  # pragma: no cover - only a replaced _wait_for_interrupt returns


# -- the demo ------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace, ctx: _Ctx) -> int:
    try:
        from .demo import run_demo
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    out = io.StringIO() if ctx.json else ctx.out
    try:
        result = anyio.run(lambda: run_demo(out=out, speed=args.speed))
    except KeyboardInterrupt:
        ctx.note("\nqrispay demo: stopped.")
        return EXIT_INTERRUPTED
    if ctx.json:
        ctx.emit(
            {
                "ok": result.ok,
                "complete": result.complete,
                "counts": result.counts,
                "outcomes": result.outcomes,
                "expected": result.expected,
                "payments": result.payments,
                "polls": result.polls,
                "failures": result.failures,
                "elapsed": round(result.elapsed, 3),
            }
        )
    return EXIT_OK if result.ok else EXIT_ERROR


# -- the parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of tables",
    )
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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(
        name: str, help: str, handler: Callable[..., Any], *, asynchronous: bool = False
    ) -> argparse.ArgumentParser:
        p = commands.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler, asynchronous=asynchronous)
        return p

    def actions(p: argparse.ArgumentParser) -> Any:
        return p.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)

    def action(group: Any, name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=help, description=help
        )
        return p

    p = command("demo", "a complete reconciliation against a simulator, in ~10 s", _run_demo)
    p.add_argument(
        "--speed", type=_seconds, default=1.0, metavar="FACTOR", help="run FACTOR times faster"
    )

    p = command("sandbox", "serve the simulator of both APIs on loopback", _run_sandbox)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="default 8765; 0 picks a free one")
    p.add_argument(
        "--ttl", type=_seconds, default=30.0, metavar="SECONDS", help="feed cache (default 30)"
    )
    p.add_argument(
        "--invoice-ttl",
        type=_seconds,
        default=900.0,
        metavar="SECONDS",
        help="invoice lifetime (default 900)",
    )
    p.add_argument(
        "--balance",
        type=_int_at_least(0),
        default=1_000_000,
        metavar="RUPIAH",
        help="starting gateway balance (default 1000000)",
    )
    p.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="ids and references derive from it (default 0)",
    )

    command("balance", "the gateway balance", _balance, asynchronous=True)

    p = command("invoice", "create, show or cancel a deposit invoice", _invoice, asynchronous=True)
    group = actions(p)
    action(group, "create", "create an invoice").add_argument(
        "amount", type=_amount, metavar="AMOUNT", help=_AMOUNT_HELP
    )
    action(group, "show", "an invoice's status").add_argument("invoice_id", metavar="ID")
    action(group, "cancel", "cancel a pending invoice").add_argument("invoice_id", metavar="ID")

    p = command("withdraw", "DANA withdrawals", _withdraw, asynchronous=True)
    group = actions(p)
    a = action(group, "create", "ask for a withdrawal to a DANA account")
    a.add_argument("amount", type=_amount, metavar="AMOUNT", help=_AMOUNT_HELP)
    a.add_argument("account_number", help="the DANA phone number, e.g. 081234567890")
    a.add_argument("account_name", help="the account holder's name")
    action(group, "show", "a withdrawal's status").add_argument("withdraw_id", metavar="ID")
    a = action(group, "list", "the withdrawal history, newest first")
    a.add_argument("--status", metavar="{pending,success,rejected}", help="only this status")
    pages = a.add_mutually_exclusive_group()
    pages.add_argument("--page", type=_int_at_least(1), default=1, help="default 1")
    pages.add_argument("--all", action="store_true", help="every page")
    a.add_argument("--limit", type=_int_at_least(1), default=10, help="per page, default 10")

    command("mutations", "one fetch of the check-payment feed", _mutations, asynchronous=True)

    p = command("watch", "reconcile the feed and print events as they happen", _run_watch)
    p.add_argument(
        "--invoice",
        action="append",
        default=[],
        metavar="ID",
        help="track this gateway invoice (repeatable; needs the gateway variables)",
    )
    p.add_argument(
        "--ttl",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="the feed's cache lifetime; one fetch every TTL + 0.5 s (default 30)",
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true", help="one fetch, then stop")
    stop.add_argument("--duration", type=_seconds, metavar="SECONDS", help="stop after this")

    p = command("qris", "read a QRIS payload, or make it dynamic (with a QR image)", _no_action)
    group = actions(p)
    a = action(group, "show", "the payload's tags, merchant, amount and CRC")
    a.add_argument("payload", metavar="PAYLOAD", help="the QRIS string ('-' reads stdin)")
    a.set_defaults(handler=_qris_show)
    a = action(group, "convert", "the dynamic payload for AMOUNT (printed on stdout)")
    a.add_argument("payload", metavar="PAYLOAD", help="the QRIS string ('-' reads stdin)")
    a.add_argument("amount", type=_amount, metavar="AMOUNT", help=_AMOUNT_HELP)
    image = a.add_mutually_exclusive_group()
    image.add_argument("--png", metavar="FILE", help="also write its QR code as PNG")
    image.add_argument("--svg", metavar="FILE", help="also write its QR code as SVG")
    a.add_argument("--scale", type=_int_at_least(1), default=8, help="pixels a module (8)")
    a.set_defaults(handler=_qris_convert)
    return parser


def _no_action(args: argparse.Namespace, ctx: _Ctx) -> NoReturn:  # pragma: no cover
    raise AssertionError("argparse requires an action")


# -- errors -----------------------------------------------------------------------------

_LOOKUP = {
    "create_invoice": "an invoice may have been made; check the gateway before creating another",
    "cancel_invoice": "check it with 'qrispay invoice show ID'",
    "create_withdrawal": "look for it with 'qrispay withdraw list --status pending' "
    "before asking again",
}


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
    if isinstance(error, OutcomeUnknownError):
        hint = _LOOKUP.get(error.operation, "look the outcome up before trying again")
        return f"outcome unknown: {error}; {hint}", EXIT_OUTCOME_UNKNOWN
    if isinstance(error, qris.QrisError):
        detail = re.sub(r"^payload:? ", "", str(error))
        return f"invalid QRIS payload: {detail}", EXIT_ERROR
    if isinstance(error, AuthenticationError):
        names = (
            "QRISPAY_AUTH, QRISPAY_MERCHANT and QRISPAY_TOKEN"
            if error.path == _FEED_PATH
            else "QRISPAY_API_KEY"
        )
        return f"authentication failed: {error}; check {names}", EXIT_ERROR
    if isinstance(error, RateLimitError):
        wait = f"; try again in {error.retry_after:g} s" if error.retry_after else ""
        return f"rate limited: {error}{wait}", EXIT_ERROR
    prefixes: list[tuple[type[BaseException], str]] = [
        (InvoiceNotCancellableError, "cannot cancel"),
        (NotFoundError, "not found"),
        (BadRequestError, "refused"),
        (ServerError, "server error"),
        (APIStatusError, "refused"),
        (APITimeoutError, "timed out"),
        (APIConnectionError, "cannot connect"),
        (ResponseDecodeError, "unreadable answer"),
    ]
    for cls, prefix in prefixes:
        if isinstance(error, cls):
            return f"{prefix}: {error}", EXIT_ERROR
    if isinstance(error, QrispayError):
        return str(error), EXIT_ERROR
    if isinstance(error, ImportError):
        return str(error), EXIT_USAGE
    if isinstance(error, ValueError):  # client-side validation: nothing was sent
        return f"invalid argument: {error}", EXIT_USAGE
    return None


def _report(error: BaseException, err: TextIO) -> int:
    leaves = _leaves(error)
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        err.write("qrispay: interrupted\n")
        return EXIT_INTERRUPTED
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
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    if args.command != "sandbox":  # the sandbox prints its own fake credentials on purpose
        redactor = Redactor(_env(name) for name in _SECRET_VARS)
        out = cast(TextIO, _Scrubbed(sys.stdout, redactor))
        err = cast(TextIO, _Scrubbed(sys.stderr, redactor))
    ctx = _Ctx(json=args.json, out=out, err=err, style=Style(wants_colour(sys.stdout)))
    try:
        return _run(args, ctx, out, err)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _run(args: argparse.Namespace, ctx: _Ctx, out: TextIO, err: TextIO) -> int:
    with _warnings_to(err):
        try:
            if args.asynchronous:
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


if __name__ == "__main__":
    raise SystemExit(main())
