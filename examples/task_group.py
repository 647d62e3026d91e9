"""The Reconciler in your own anyio task group: one invoice, from creation to paid.

Against an in-process sandbox (no network, no credentials; a simulated
customer pays the invoice once it is shown)::

    python examples/task_group.py
    python examples/task_group.py --trio

Against the real APIs, with the credentials of ``examples/fastapi_app.py``
in the environment (QRISPAY_API_KEY, QRISPAY_GATEWAY_URL, QRISPAY_AUTH,
QRISPAY_MERCHANT, QRISPAY_TOKEN, optional QRISPAY_FEED_URL); it waits for a
real payment, up to the invoice's expiry::

    python examples/task_group.py --live 10000

What the Reconciler knows is kept in a SQLite file (``--db``, default a
temporary file for the sandbox and ``./qrispay.db`` live), and a durable
consumer beside it handles every event: it resumes after the id it last
handled (kept in ``<db>.cursor``), so a verdict made while this script was not
running is still handled, once, when it runs again.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
from collections.abc import Callable
from datetime import datetime

import anyio
import anyio.abc
import anyio.to_thread

from qrispay import (
    DuplicatePayment,
    Event,
    GatewayClient,
    Invoice,
    InvoiceCancelledError,
    InvoiceExpiredError,
    InvoicePaid,
    LatePayment,
    MutationClient,
    PollPolicy,
    Reconciler,
    SQLiteStore,
    UnmatchedCredit,
)
from qrispay.mutations import DEFAULT_FEED_URL

__all__ = ["main", "show"]


def rupiah(amount: int) -> str:
    return f"Rp {amount:,}".replace(",", ".")


def show(invoice: Invoice) -> None:
    """Present the invoice to the payer (here: print it)."""
    print(f"invoice {invoice.invoice_id}: pay exactly {rupiah(invoice.total)}")
    print(f"  QR: {invoice.qris_image or invoice.qris_payload}")
    print(f"  before {invoice.expired_at:%Y-%m-%d %H:%M:%S %Z}")


def handle(event: Event) -> None:
    """Every verdict ends somewhere: here, on the screen. A payment that paid no
    invoice (duplicate, late, unmatched) is money to refund or to look at."""
    if isinstance(event, (DuplicatePayment, LatePayment, UnmatchedCredit)):
        print(f"needs a person: {event.kind} ({event.id})")
    elif not isinstance(event, InvoicePaid):
        print(f"{event.kind} ({event.id})")


def _last_handled(cursor: pathlib.Path) -> str:
    return cursor.read_text() if cursor.exists() else ""


async def consume(
    rec: Reconciler,
    cursor: pathlib.Path,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Handle each event, then remember its id (resuming after it next time)."""
    after = await anyio.to_thread.run_sync(_last_handled, cursor)
    async with rec.events(after=after) as events:
        task_status.started()
        async for event in events:
            handle(event)
            await anyio.to_thread.run_sync(cursor.write_text, event.id)


async def main(
    gateway: GatewayClient,
    feed: MutationClient,
    *,
    amount: int = 10_000,
    policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen, shared safely
    clock: Callable[[], datetime] | None = None,
    present: Callable[[Invoice], object] = show,
    db: str | os.PathLike[str] | None = None,
) -> InvoicePaid | None:
    """Create an invoice, ``present`` it, and wait: the ``InvoicePaid`` event, or
    None if the invoice closed unpaid. The clients are the caller's to close.
    ``db``: the SQLite file (default: a new temporary one)."""
    path = pathlib.Path(db or pathlib.Path(tempfile.mkdtemp()) / "qrispay.db")
    async with SQLiteStore(path) as store, anyio.create_task_group() as tg:
        rec = Reconciler(feed, gateway=gateway, policy=policy, clock=clock, store=store)
        # Subscribed before the loop starts, so the first poll's events reach it.
        await tg.start(consume, rec, path.with_name(path.name + ".cursor"))
        # start() returns after the first feed poll: wrong credentials raise here.
        await tg.start(rec.run)
        invoice = await rec.create_invoice(amount)
        present(invoice)
        # No timeout needed: the Reconciler itself closes the invoice once it is
        # safely past its expiry. The outcomes we expect are handled inside the
        # group, because anything raised in it leaves wrapped in an ExceptionGroup.
        try:
            paid: InvoicePaid | None = await rec.wait_for_payment(invoice.invoice_id)
        except (InvoiceExpiredError, InvoiceCancelledError) as error:
            print(error)
            paid = None
        # rec.run loops until cancelled; without this the group would never exit.
        tg.cancel_scope.cancel()
    if paid is not None:
        via = paid.mutation.brand_name if paid.mutation else f"the {paid.source}"
        print(f"paid: {rupiah(paid.invoice.total)} via {via}")
    return paid


async def _sandbox_demo() -> None:
    from qrispay.sandbox import Sandbox

    # A 1-second feed cache instead of the real 30 s keeps the demo short.
    sandbox = Sandbox(ttl=1.0)

    def present_and_pay(invoice: Invoice) -> None:
        show(invoice)
        sandbox.pay(invoice.total)  # the simulated customer scans and pays

    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        await main(gateway, feed, policy=PollPolicy(ttl=1.0, margin=0.1), present=present_and_pay)


async def _live(amount: int) -> None:
    def env(name: str) -> str:
        value = os.environ.get(name)
        if not value:
            raise SystemExit(f"{name} is not set")
        return value

    feed_url = os.environ.get("QRISPAY_FEED_URL") or DEFAULT_FEED_URL
    async with (
        GatewayClient(env("QRISPAY_API_KEY"), base_url=env("QRISPAY_GATEWAY_URL")) as gateway,
        MutationClient(
            env("QRISPAY_AUTH"),
            env("QRISPAY_MERCHANT"),
            env("QRISPAY_TOKEN"),
            base_url=feed_url,
        ) as feed,
    ):
        await main(gateway, feed, amount=amount, db=os.environ.get("QRISPAY_DB") or "qrispay.db")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trio", action="store_true", help="run under trio, not asyncio")
    parser.add_argument("--live", metavar="AMOUNT", type=int, help="use the real APIs")
    args = parser.parse_args()
    backend = "trio" if args.trio else "asyncio"
    if args.live is not None:
        anyio.run(_live, args.live, backend=backend)
    else:
        anyio.run(_sandbox_demo, backend=backend)
