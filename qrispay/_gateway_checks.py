"""Asking the gateway: once at start-up, and about invoices past their expiry."""

from __future__ import annotations

import enum
import logging

from .engine import ReconciliationEngine
from .errors import AuthenticationError, BadRequestError, NotFoundError
from .gateway import GatewayClient
from .models import InvoiceStatus

__all__ = ["FATAL_AT_START", "GatewayAnswer", "ask_gateway", "check_at_start"]

logger = logging.getLogger("qrispay.reconciler")

# Answers that mean the configuration is wrong, not that the service is down: at
# start-up they are raised instead of retried forever.
FATAL_AT_START = (AuthenticationError, BadRequestError, NotFoundError)


class GatewayAnswer(enum.Enum):
    """What asking the gateway about an invoice past its expiry decided."""

    PAID = "paid"  # paid there: mark it paid here
    UNPAID = "unpaid"  # not paid there: expire it
    UNKNOWN = "unknown"  # no answer, or nothing to act on: ask again after the next fetch


async def check_at_start(gateway: GatewayClient | None) -> Exception | None:
    """One cheap authenticated call, so that a wrong gateway key or URL fails
    at start-up, not at the first customer. Other failures only warn."""
    if gateway is None:
        return None
    try:
        await gateway.get_balance()
    except FATAL_AT_START as error:
        return error
    except Exception as error:
        logger.warning("could not check the gateway at start-up: %s", error)
    return None


async def ask_gateway(
    gateway: GatewayClient, engine: ReconciliationEngine, invoice_id: str
) -> GatewayAnswer:
    """What the gateway says of an invoice the feed shows unpaid past its
    expiry. It only asks (and logs); the caller acts on the answer."""
    try:
        invoice = await gateway.get_invoice(invoice_id)
    except NotFoundError:
        # Unknown there, so never paid there; the feed already says unpaid.
        logger.warning("the gateway does not know invoice %s; expiring it", invoice_id)
        return GatewayAnswer.UNPAID
    except Exception as error:
        # Unknown is not "unpaid": ask again after the next fetch.
        logger.warning("could not confirm invoice %s with the gateway: %s", invoice_id, error)
        return GatewayAnswer.UNKNOWN
    if engine.state_of(invoice_id) is not InvoiceStatus.PENDING:
        return GatewayAnswer.UNKNOWN  # settled while we asked: nothing left to decide
    if invoice.status is InvoiceStatus.PAID:
        return GatewayAnswer.PAID
    if invoice.status not in (InvoiceStatus.PENDING, InvoiceStatus.EXPIRED):
        logger.warning(
            "gateway reports invoice %s as %r; not declaring it expired",
            invoice_id,
            invoice.status,
        )
        return GatewayAnswer.UNKNOWN
    return GatewayAnswer.UNPAID
