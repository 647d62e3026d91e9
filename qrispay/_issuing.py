"""Making the invoices a Reconciler tracks: at the gateway, or locally from a static QRIS.

Every open invoice must have a total no other open invoice has, or a payment
could not tell them apart. The gateway may hand out a total that is taken
here; it is then replaced, and the taken one cancelled afterwards.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio

from . import qris
from .engine import ReconciliationEngine
from .errors import OutcomeUnknownError, TotalConflictError
from .gateway import GatewayClient
from .models import Invoice, InvoiceStatus

__all__ = ["CANCEL_BUDGET", "MAX_CREATIONS", "cancel_quietly", "create_at_gateway", "create_local"]

logger = logging.getLogger("qrispay.reconciler")

#: How many invoices one ``create_invoice`` may create at the gateway.
MAX_CREATIONS = 3
#: Seconds allowed for cancelling invoices created with a taken total.
CANCEL_BUDGET = 30.0


async def create_at_gateway(
    gateway: GatewayClient,
    current_engine: Callable[[], ReconciliationEngine],
    amount: int,
    *,
    clock: Callable[[], datetime],
    on_tracked: Callable[[], None],
    made: list[Invoice] | None = None,
    merchant: str | None = None,
) -> Invoice:
    """A gateway invoice, tracked by the engine ``current_engine()`` gives once
    the gateway has answered (``on_tracked`` is called then).

    Asked after the answer, not before the request: a worker on a store replaces
    its engine when it reloads (a lease taken over or lost), and an invoice
    tracked in the replaced one would be stored by no one.

    A taken total is replaced by a new invoice before the taken one is
    cancelled; after ``MAX_CREATIONS`` creations, ``TotalConflictError``.
    ``made``: the caller's list of the invoices created so far for one
    ``create_invoice`` call (each one created here is added), so that the
    cap holds across the caller's own retries too.
    """
    made = [] if made is None else made
    taken: list[Invoice] = []
    last_conflict: TotalConflictError | None = None
    try:
        while len(made) < MAX_CREATIONS:
            invoice = await gateway.create_invoice(amount)
            made.append(invoice)
            engine = current_engine()
            _refuse_a_tracked_id(engine, invoice, amount)
            try:
                engine.track(invoice, now=clock())
            except TotalConflictError as conflict:
                logger.info(
                    "gateway gave invoice %s the taken total %d; creating another",
                    invoice.invoice_id,
                    invoice.total,
                    extra={
                        "merchant": merchant,
                        "invoice_id": invoice.invoice_id,
                        "total": invoice.total,
                        "holder": conflict.invoice_id,
                        "attempt": len(made),
                        "attempts": MAX_CREATIONS,
                    },
                )
                taken.append(invoice)
                last_conflict = conflict
                continue
            on_tracked()
            return invoice
        if last_conflict is None:
            raise ValueError("create_at_gateway: no creation left in the budget")
        raise TotalConflictError(
            last_conflict.total,
            last_conflict.invoice_id,
            f"the gateway handed out taken totals {MAX_CREATIONS} times for amount {amount}",
        )
    finally:
        # Only now, so the gateway could not hand the same total back meanwhile;
        # shielded, so a caller's timeout does not leave them pending there.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_BUDGET):
            for invoice in taken:
                await cancel_quietly(gateway, invoice)


def _refuse_a_tracked_id(engine: ReconciliationEngine, invoice: Invoice, amount: int) -> None:
    if engine.state_of(invoice.invoice_id) is not None:
        # track() would ignore it, and its payer would go unseen.
        raise OutcomeUnknownError(
            f"create_invoice: the gateway answered with invoice id "
            f"{invoice.invoice_id!r}, which is already tracked; a new invoice "
            "may or may not exist at the gateway",
            operation="create_invoice",
            params={"amount": amount},
        )


async def cancel_quietly(gateway: GatewayClient, invoice: Invoice) -> None:
    try:
        await gateway.cancel_invoice(invoice.invoice_id)
    except Exception as error:
        logger.warning(
            "could not cancel untracked invoice %s (total %d): %s",
            invoice.invoice_id,
            invoice.total,
            error,
        )


def create_local(
    engine: ReconciliationEngine,
    static_qris: str,
    amount: int,
    *,
    now: datetime,
    ttl: timedelta,
) -> Invoice:
    """An invoice made here, tracked by ``engine``: a unique total, carried by a
    dynamic QRIS payload made from ``static_qris``, open for ``ttl``."""
    total = engine.unique_total(amount, now=now)
    invoice = Invoice(
        invoice_id=uuid.uuid4().hex,
        amount=amount,
        fee=total - amount,
        total=total,
        status=InvoiceStatus.PENDING,
        qris_image="",
        expired_at=now + ttl,
        created_at=now,
        qris_payload=qris.to_dynamic(static_qris, total),
    )
    engine.track(invoice, now=now)
    return invoice
