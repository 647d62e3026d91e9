"""A fleet process: polls its share of many merchants' feeds, beside other
fleet processes on the same store (on one host with SQLite, on several with
PostgreSQL). Start as many as you like; kill one, and the others take its
merchants within the lease (``--lease-ttl``).

The merchants' credentials are the application's: here a JSON file mapping
each merchant id to ``{"auth": ..., "token": ...}`` (from your own database or
secret store in a real platform), read at start-up and never stored by qrispay::

    python examples/fleet.py --credentials merchants.json --db fleet.db
    python examples/fleet.py --credentials merchants.json --postgres postgresql://...

Every event is printed as one JSON line on stdout (``{"merchant", "id",
"type", ...}``); a real platform would credit its order there, keyed by the
event id. With ``--status FILE``, what the fleet holds is written to FILE
(atomically) about twice a second. ``QRISPAY_FEED_URL`` sets the feed's base
URL and ``QRISPAY_FEED_TTL`` its cache window (default 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx

from qrispay import (
    Fleet,
    FleetEvent,
    InvoicePaid,
    MutationClient,
    PollPolicy,
    PostgresStore,
    SQLiteStore,
    Store,
)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", required=True, type=Path)
    parser.add_argument("--db", default="fleet.db", help="SQLite store (default: fleet.db)")
    parser.add_argument("--postgres", help="a PostgreSQL DSN: the store is there instead")
    parser.add_argument("--schema", default="qrispay", help="the PostgreSQL schema")
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument("--lease-ttl", type=float, default=90.0)
    parser.add_argument("--worker-id", help="this process's name (default: a new one)")
    parser.add_argument("--status", type=Path)
    return parser.parse_args()


def _line(item: FleetEvent) -> str:
    event = item.event
    record: dict[str, Any] = {"merchant": item.merchant, "id": event.id, "type": event.kind}
    if isinstance(event, InvoicePaid):
        record.update(invoice_id=event.invoice.invoice_id, total=event.invoice.total)
    return json.dumps(record)


def _write_status(path: Path, fleet: Fleet) -> None:
    status = fleet.status
    data = {
        "worker_id": fleet.worker_id,
        "pid": os.getpid(),
        "held": sorted(fleet.held),
        "share": None if status is None else status.share,
        "members": None if status is None else dict(status.members),
    }
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data))
    temporary.replace(path)  # atomic: a reader never sees half a file


async def main(args: argparse.Namespace) -> None:
    credentials: dict[str, dict[str, str]] = json.loads(args.credentials.read_text())
    ttl = float(os.environ.get("QRISPAY_FEED_TTL", "30"))
    base_url = os.environ.get("QRISPAY_FEED_URL")
    # One pool for every merchant: thousands of merchants, a few connections.
    async with httpx.AsyncClient() as http:

        def feed_for(merchant: str) -> MutationClient:
            secret = credentials[merchant]
            kw: dict[str, Any] = {"http_client": http}
            if base_url:
                kw["base_url"] = base_url
            return MutationClient(secret["auth"], merchant, secret["token"], **kw)

        store: Store = (
            PostgresStore(args.postgres, schema=args.schema)
            if args.postgres
            else SQLiteStore(args.db)
        )
        fleet = Fleet(
            store,
            lambda: list(credentials),
            feed_for,
            capacity=args.capacity,
            lease_ttl=args.lease_ttl,
            worker_id=args.worker_id,
            # Idle merchants polled every window too: a payment to a merchant with
            # no open invoice (a static QRIS) is still seen within a window.
            policy=PollPolicy(ttl=ttl, idle_interval=ttl + 0.5),
        )
        async with store, fleet, anyio.create_task_group() as tg:
            if args.status is not None:
                tg.start_soon(_report, args.status, fleet)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                tg.start_soon(_print_events, fleet)
                async for _ in signals:
                    break  # a clean stop releases every lease: others take over at once
            tg.cancel_scope.cancel()


async def _report(path: Path, fleet: Fleet) -> None:
    while True:
        _write_status(path, fleet)
        await anyio.sleep(0.5)


async def _print_events(fleet: Fleet) -> None:
    async with fleet.events() as events:
        async for item in events:
            print(_line(item), flush=True)


if __name__ == "__main__":
    try:
        anyio.run(main, _arguments())
    except KeyboardInterrupt:
        sys.exit(130)
