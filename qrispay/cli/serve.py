"""``qrispay serve`` (the HTTP service) and ``qrispay webhooks`` (its outbox)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
from datetime import datetime, timezone
from typing import Any

from ..store._base import Store
from . import context
from ._exit import CommandError, ConfigError, ExitCode
from .argtypes import action, actions, command, int_at_least, port, seconds
from .context import Ctx
from .output import format_time, table

__all__ = ["register"]

_TOKEN = "QRISPAY_SERVE_TOKEN"
_SECRET = "QRISPAY_WEBHOOK_SECRET"


def _store(args: argparse.Namespace) -> Store:
    from ..store import PostgresStore, SQLiteStore

    if args.postgres:
        return PostgresStore(args.postgres, schema=args.schema or "qrispay")
    if args.schema is not None:
        # Said rather than ignored: the SQLite file would not be where it is meant to.
        raise ConfigError("--schema names a PostgreSQL schema: give it with --postgres")
    return SQLiteStore(args.db)


def _token() -> str:
    token = context.env(_TOKEN)
    if not token:
        raise ConfigError(f"{_TOKEN} is not set (every request but /healthz must send it)")
    if len(token) < 16:
        raise ConfigError(f"{_TOKEN} must be at least 16 characters (use a random one)")
    return token


def _signer(args: argparse.Namespace) -> Any:
    from ..webhooks import WebhookSigner, endpoint_name

    secrets = context.env(_SECRET).split()
    if not args.webhook:
        return None
    if not secrets:
        raise ConfigError(f"--webhook needs {_SECRET} (whsec_ and base64; several for a rotation)")
    try:
        for url in args.webhook:
            endpoint_name(url)
        return WebhookSigner(secrets)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_serve(args: argparse.Namespace, ctx: Ctx) -> int:
    import asyncio

    try:
        from ..serve._server import bind
    except ImportError:
        raise ConfigError(
            "qrispay serve needs the serve extra: pip install 'qrispay[serve]'"
        ) from None
    token = _token()
    signer = _signer(args)
    context.require(context.GATEWAY_VARS, "needed by qrispay serve for invoices")
    if not _loopback(args.host):
        ctx.note(f"qrispay serve: listening on {args.host}, beyond this machine: put TLS in front")
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise CommandError(
            f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    try:
        asyncio.run(_serve(args, ctx, sock, token, signer))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    ctx.note("qrispay serve: stopped.")
    return ExitCode.OK


async def _serve(args: argparse.Namespace, ctx: Ctx, sock: Any, token: str, signer: Any) -> None:
    from ..payouts import Payouts
    from ..polling import PollPolicy
    from ..reconciler import Reconciler
    from ..serve import Service
    from ..serve._server import serve
    from ..webhooks import WebhookDispatcher

    host, bound = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    async with contextlib.AsyncExitStack() as stack:
        feed = await stack.enter_async_context(context.feed())
        gateway = await stack.enter_async_context(context.gateway())
        store = await stack.enter_async_context(_store(args))
        policy = PollPolicy(ttl=args.ttl, idle_interval=max(args.ttl + 0.5, 60.0))
        rec = Reconciler(feed, gateway=gateway, policy=policy, store=store)
        webhooks = None
        if signer is not None:
            webhooks = WebhookDispatcher(store, feed.merchant, args.webhook, signer)
        secrets = [context.env(name) for name in context.SECRET_VARS]
        svc = Service(
            rec,
            token=token,
            payouts=Payouts(gateway, store=store),
            webhooks=webhooks,
            secrets=[part for value in secrets for part in value.split()],
        )

        def ready() -> None:
            if ctx.json:
                ctx.emit(
                    {"url": url, "merchant": feed.merchant, "store": repr(store)}, compact=True
                )
            else:
                ctx.line(f"qrispay serve: {url} (merchant {feed.merchant}, {store!r})")
                hooks = len(args.webhook)
                ctx.line(f"  {hooks} webhook endpoint(s); Ctrl-C or SIGTERM stops it.")
            ctx.out.flush()

        await serve(svc, sock, ready)


# -- qrispay webhooks -----------------------------------------------------------------------


async def _webhooks(args: argparse.Namespace, ctx: Ctx) -> int:
    merchant = args.merchant or context.env("QRISPAY_MERCHANT")
    if not merchant:
        raise ConfigError("QRISPAY_MERCHANT is not set (or give --merchant)")
    async with _store(args) as store:
        if args.action == "replay":
            try:
                count = await store.webhook_replay(
                    merchant, args.event_id, now=datetime.now(timezone.utc)
                )
            except KeyError:
                raise CommandError(f"no stored event has id {args.event_id!r}") from None
            if ctx.json:
                ctx.emit({"event_id": args.event_id, "deliveries": count})
            else:
                ctx.line(f"{count} delivery(ies) of {args.event_id} pending again")
            return ExitCode.OK
        state = "failed" if args.failed else None
        found = await store.webhook_deliveries(merchant, state=state, limit=args.limit)
    if ctx.json:
        ctx.emit([_delivery(d) for d in found])
        return ExitCode.OK
    rows = [
        (
            d.event_id,
            d.state,
            str(d.attempts),
            d.last_error or str(d.last_status or ""),
            format_time(d.next_attempt_at),
            d.endpoint,
        )
        for d in found
    ]
    head = ("event", "state", "attempts", "last", "next attempt", "endpoint")
    ctx.line(table(head, rows, right=(2,)) if rows else "no deliveries")
    return ExitCode.OK


def _delivery(d: Any) -> dict[str, Any]:
    return {
        "event_id": d.event_id,
        "endpoint": d.endpoint,
        "state": d.state,
        "attempts": d.attempts,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def _store_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--db", metavar="PATH", default="qrispay.db", help="the SQLite store (default ./qrispay.db)"
    )
    where.add_argument(
        "--postgres", metavar="DSN", help="a PostgreSQL store instead (qrispay[postgres])"
    )
    p.add_argument(
        "--schema",
        metavar="NAME",
        help="with --postgres: the schema holding the store (default qrispay), "
        "so several shops can share one database",
    )


def register(commands: Any) -> None:
    """Add ``serve`` and ``webhooks`` to the ``commands`` sub-parsers."""
    p = command(
        commands, "serve", "the HTTP service: REST, server-sent events, signed webhooks", _run_serve
    )
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=port, default=8080, help="default 8080; 0 picks a free one")
    _store_options(p)
    p.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help=f"POST every event here, signed with {_SECRET} (repeatable)",
    )
    p.add_argument(
        "--ttl",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="the feed's cache window (default 30)",
    )

    p = command(
        commands, "webhooks", "the service's webhook deliveries", _webhooks, asynchronous=True
    )
    group = actions(p)
    a = action(group, "list", "deliveries, oldest event first")
    a.add_argument("--failed", action="store_true", help="only those given up on")
    a.add_argument("--limit", type=int_at_least(1), default=100, help="default 100")
    a = action(group, "replay", "send an event's deliveries again")
    a.add_argument("event_id", metavar="EVENT_ID")
    for sub in group.choices.values():
        _store_options(sub)
        sub.add_argument("--merchant", help="default: QRISPAY_MERCHANT")
