"""``qrispay watch``: reconcile the feed and print events as they happen."""

from __future__ import annotations

import argparse
import contextlib
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from ..errors import EventsOverflowError
from ..events import Event
from ..gateway import GatewayClient
from ..models import Invoice, InvoiceStatus
from ..mutations import MutationClient
from ..store import SQLiteStore
from . import context
from ._exit import CommandError, ExitCode
from .argtypes import command, seconds
from .context import Ctx
from .output import describe_event, event_label, format_rupiah, format_time, jsonable, table

if TYPE_CHECKING:
    from ..reconciler import EventSubscription, Reconciler

__all__ = ["register"]


@attrs.define
class _WatchState:
    polls: int = 0
    failures: int = 0
    succeeded: bool = False
    last_error: str | None = None


async def _look_up(gateway: GatewayClient | None, ids: list[str]) -> list[Invoice]:
    invoices = []
    for invoice_id in ids:
        assert gateway is not None
        invoices.append(await gateway.get_invoice(invoice_id))
    return invoices


def _track(rec: Reconciler, invoices: list[Invoice]) -> None:
    for invoice in invoices:
        # Watched as pending whatever the gateway says now, so an invoice paid
        # or expired already still gets its event: its feed row (or, with the
        # gateway, the expiry check) settles it on the first polls. One a
        # resumed watch already knows keeps what it knows.
        if rec.engine.get(invoice.invoice_id) is None:
            rec.track(attrs.evolve(invoice, status=InvoiceStatus.PENDING))


def _announce(
    args: argparse.Namespace,
    ctx: Ctx,
    feed: MutationClient,
    gateway: GatewayClient | None,
    invoices: list[Invoice],
    interval: float,
) -> None:
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
        f"{interval:g} s, {len(invoices)} invoice(s) tracked, {stop}."
    )


def _show(ctx: Ctx, event: Event) -> None:
    now = datetime.now(timezone.utc)
    if ctx.json:
        ctx.emit({"seen_at": now, **jsonable(event)}, compact=True)
    else:
        when = format_time(now)[11:19]
        ctx.line(f"{when}  {event_label(event, ctx.style)}  {describe_event(event)}")
        ctx.out.flush()


async def _print_events(ctx: Ctx, subscription: EventSubscription, drained: anyio.Event) -> None:
    # The subscription ends once the Reconciler's loop has stopped and every
    # event it made has been read.
    try:
        async for event in subscription:
            _show(ctx, event)
    except EventsOverflowError:  # pragma: no cover - needs 1000 events at once
        ctx.note("qrispay: warning: events came faster than they could be printed")
    drained.set()


async def _watch(args: argparse.Namespace, ctx: Ctx, state: _WatchState) -> int:
    from ..polling import PollPolicy
    from ..reconciler import Reconciler

    if args.invoice and not context.gateway_configured():
        context.require(context.GATEWAY_VARS, "needed to look up --invoice")
    policy = PollPolicy(ttl=args.ttl, idle_interval=args.ttl + 0.5)
    async with contextlib.AsyncExitStack() as stack:
        feed = await stack.enter_async_context(context.feed())
        gateway = None
        if context.gateway_configured():
            gateway = await stack.enter_async_context(context.gateway())
        invoices = await _look_up(gateway, args.invoice)
        store = None
        if args.db is not None:
            store = await stack.enter_async_context(SQLiteStore(args.db))
        rec = Reconciler(feed, gateway=gateway, policy=policy, store=store)
        # With --db: what an earlier watch knew, read before the first poll, so
        # the invoices are tracked when it judges the rows of the downtime.
        await rec.load()
        _track(rec, invoices)
        subscription = rec.events()
        _announce(args, ctx, feed, gateway, invoices, policy.interval)

        drained = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_print_events, ctx, subscription, drained)
            try:
                async with rec:  # the first fetch; wrong credentials raise here
                    if args.duration:
                        await anyio.sleep(args.duration)
                    elif not args.once:
                        await anyio.sleep_forever()
                with anyio.move_on_after(5):
                    await drained.wait()
            finally:
                state.polls = rec.stats.polls
                state.failures = rec.stats.failures
                state.succeeded = rec.stats.last_success is not None
                state.last_error = rec.stats.last_error
                tasks.cancel_scope.cancel()
    return _watch_result(ctx, state)


def _watch_result(ctx: Ctx, state: _WatchState) -> int:
    failed = f", {state.failures} failed" if state.failures else ""
    ctx.note(f"Stopped after {state.polls} fetch(es){failed}.")
    if not state.succeeded:
        raise CommandError(f"no fetch of the feed succeeded: {state.last_error or 'none made'}")
    return ExitCode.OK


def _run_watch(args: argparse.Namespace, ctx: Ctx) -> int:
    state = _WatchState()
    try:
        return anyio.run(_watch, args, ctx, state)
    except KeyboardInterrupt:
        ctx.note("")
        return _watch_result(ctx, state)


def register(commands: Any) -> None:
    """Add ``watch`` to the ``commands`` sub-parsers."""
    p = command(commands, "watch", "reconcile the feed and print events as they happen", _run_watch)
    p.add_argument(
        "--invoice",
        action="append",
        default=[],
        metavar="ID",
        help="track this gateway invoice (repeatable; needs the gateway variables)",
    )
    p.add_argument(
        "--ttl",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="the feed's cache lifetime; one fetch every TTL + 0.5 s (default 30)",
    )
    p.add_argument(
        "--db",
        metavar="PATH",
        help=(
            "keep what the watch knows in this SQLite file: a later watch with the "
            "same file carries on where this one stopped (nothing judged twice, no "
            "payment of the downtime missed)"
        ),
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true", help="one fetch, then stop")
    stop.add_argument("--duration", type=seconds, metavar="SECONDS", help="stop after this")
