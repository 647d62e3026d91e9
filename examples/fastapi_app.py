"""A FastAPI service that takes QRIS payments with qrispay.

Against the real APIs (credentials from the environment, read at start-up)::

    export QRISPAY_API_KEY=... QRISPAY_GATEWAY_URL=https://gateway.example
    export QRISPAY_AUTH=... QRISPAY_MERCHANT=... QRISPAY_TOKEN=...
    # optional: QRISPAY_FEED_URL (default: the public check-payment host)
    uvicorn examples.fastapi_app:app

Against an in-process sandbox, no credentials, with a route that plays the payer::

    uvicorn --factory examples.fastapi_app:create_sandbox_app

Then::

    curl -X POST localhost:8000/invoices -H 'content-type: application/json' \\
         -d '{"amount": 10000}'
    curl localhost:8000/invoices/<invoice_id>                 # pending, paid or expired
    curl 'localhost:8000/invoices/<invoice_id>/wait?timeout=30'
    curl -X POST localhost:8000/sandbox/pay/<invoice_id>       # sandbox only

Run ONE worker process. Each worker would run its own Reconciler: every one
polls the feed (spending the feed's quota) and knows only the invoices it
created, so a status request landing on another worker would answer 404.
Invoices live in memory: a restart forgets them. A real service stores
``rec.engine.snapshot()`` and passes ``ReconciliationEngine.restore(...)``
back in as ``Reconciler(engine=...)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from qrispay import (
    BadRequestError,
    GatewayClient,
    Invoice,
    InvoiceCancelledError,
    InvoiceExpiredError,
    InvoiceStatus,
    MutationClient,
    OutcomeUnknownError,
    PollPolicy,
    QrispayError,
    RateLimitError,
    Reconciler,
    TotalConflictError,
)
from qrispay.mutations import DEFAULT_FEED_URL

__all__ = ["app", "create_app", "create_sandbox_app", "feed_from_env", "gateway_from_env"]

logger = logging.getLogger("qrispay.examples.fastapi_app")

GatewayFactory = Callable[[], GatewayClient]
FeedFactory = Callable[[], MutationClient]

#: The longest a client may hold a ``/wait`` request open. Bounded because a
#: stopping Reconciler does not wake its waiters: shutdown waits for them.
MAX_WAIT = 60.0


# -- configuration -------------------------------------------------------------


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        # Names the variable, never a value: this text ends up in start-up logs.
        raise RuntimeError(f"{name} is not set; see the docstring of examples/fastapi_app.py")
    return value


def gateway_from_env() -> GatewayClient:
    """A ``GatewayClient`` from ``QRISPAY_API_KEY`` and ``QRISPAY_GATEWAY_URL``."""
    return GatewayClient(_env("QRISPAY_API_KEY"), base_url=_env("QRISPAY_GATEWAY_URL"))


def feed_from_env() -> MutationClient:
    """A ``MutationClient`` from ``QRISPAY_AUTH``, ``QRISPAY_MERCHANT``, ``QRISPAY_TOKEN``
    and the optional ``QRISPAY_FEED_URL``."""
    auth, merchant, token = (_env(f"QRISPAY_{n}") for n in ("AUTH", "MERCHANT", "TOKEN"))
    feed_url = os.environ.get("QRISPAY_FEED_URL") or DEFAULT_FEED_URL
    return MutationClient(auth, merchant, token, base_url=feed_url)


# -- the HTTP interface -----------------------------------------------------------


class CreateInvoice(BaseModel):
    # strict: "10000", 10000.0 and true are refused, never coerced (money is int rupiah).
    amount: int = Field(strict=True, gt=0, description="Rupiah, before the unique code.")


class InvoiceOut(BaseModel):
    invoice_id: str
    status: InvoiceStatus
    amount: int
    fee: int
    total: int = Field(description="What the customer must pay, to the rupiah.")
    expired_at: datetime
    qris_image: str | None = None
    qris_payload: str | None = None

    @classmethod
    def of(cls, invoice: Invoice, status: InvoiceStatus) -> InvoiceOut:
        return cls(
            invoice_id=invoice.invoice_id,
            status=status,
            amount=invoice.amount,
            fee=invoice.fee,
            total=invoice.total,
            expired_at=invoice.expired_at,
            qris_image=invoice.qris_image or None,
            qris_payload=invoice.qris_payload,
        )


def get_reconciler(request: Request) -> Reconciler:
    reconciler: Reconciler = request.app.state.reconciler
    return reconciler


ReconcilerDep = Annotated[Reconciler, Depends(get_reconciler)]
InvoiceId = Annotated[str, Path(min_length=1, max_length=128)]

router = APIRouter()


def _gateway_failure(error: QrispayError) -> HTTPException:
    """The HTTP answer for an SDK error. SDK messages are scrubbed of secrets,
    but only text meant for the caller is passed on; the rest goes to the log."""
    if isinstance(error, TotalConflictError):
        return HTTPException(409, "the gateway kept handing out totals already in use; try again")
    if isinstance(error, OutcomeUnknownError):
        return HTTPException(
            502,
            "the payment gateway may or may not have created this invoice: its answer was "
            "lost. Do not retry blindly; a retry can create a second invoice.",
        )
    if isinstance(error, RateLimitError):
        headers = None
        if error.retry_after is not None:
            headers = {"Retry-After": str(max(1, round(error.retry_after)))}
        return HTTPException(503, "the payment gateway is rate limiting us", headers=headers)
    if isinstance(error, BadRequestError):
        # The gateway's own reason (say, a minimum amount) is what the caller needs.
        return HTTPException(502, f"the payment gateway refused the request: {error.message}")
    return HTTPException(502, "the payment gateway failed; try again later")


@router.post("/invoices", status_code=201, response_model=InvoiceOut)
async def create_invoice(body: CreateInvoice, rec: ReconcilerDep) -> InvoiceOut:
    try:
        invoice = await rec.create_invoice(body.amount)
    except ValueError as error:
        # The model already refuses most bad amounts; this is the SDK's own check.
        raise HTTPException(422, str(error)) from error
    except QrispayError as error:
        logger.warning("creating an invoice of %d failed: %r", body.amount, error)
        raise _gateway_failure(error) from error
    return InvoiceOut.of(invoice, InvoiceStatus.PENDING)


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut)
async def get_invoice(invoice_id: InvoiceId, rec: ReconcilerDep) -> InvoiceOut:
    # The engine's view, not a gateway call: it is what the Reconciler has
    # confirmed, and reading it costs no request against anyone's quota.
    invoice = rec.engine.get(invoice_id)
    status = rec.engine.state_of(invoice_id)
    if invoice is None or status is None:
        raise HTTPException(404, "no such invoice")
    return InvoiceOut.of(invoice, status)


@router.get(
    "/invoices/{invoice_id}/wait",
    response_model=InvoiceOut,
    responses={408: {"description": "still pending"}, 410: {"description": "closed unpaid"}},
)
async def wait_for_invoice(
    invoice_id: InvoiceId,
    rec: ReconcilerDep,
    timeout: Annotated[float, Query(gt=0, le=MAX_WAIT)] = 30.0,
) -> InvoiceOut:
    try:
        paid = await rec.wait_for_payment(invoice_id, timeout=timeout)
    except KeyError:
        raise HTTPException(404, "no such invoice") from None
    except (InvoiceExpiredError, InvoiceCancelledError) as error:
        raise HTTPException(410, str(error)) from None
    except TimeoutError:
        raise HTTPException(408, "still pending; ask again") from None
    return InvoiceOut.of(paid.invoice, InvoiceStatus.PAID)


# -- the application --------------------------------------------------------------


def create_app(
    *,
    gateway_factory: GatewayFactory = gateway_from_env,
    feed_factory: FeedFactory = feed_from_env,
    policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen, shared safely
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The service. The factories are called at start-up, inside the event loop
    (an SDK client makes its HTTP client there), never at import."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The Reconciler's task group lives exactly as long as the app: it is
        # entered and left in the lifespan task, as anyio requires. Start-up
        # waits for the first feed poll, so wrong credentials fail the start
        # instead of being retried in the background for ever.
        async with (
            gateway_factory() as gateway,
            feed_factory() as feed,
            Reconciler(feed, gateway=gateway, policy=policy, clock=clock) as reconciler,
        ):
            app.state.gateway = gateway
            app.state.feed = feed
            app.state.reconciler = reconciler
            yield

    app = FastAPI(title="qrispay example", lifespan=lifespan)
    app.include_router(router)
    return app


def create_sandbox_app(*, ttl: float = 2.0) -> FastAPI:
    """The same service against an in-process sandbox, plus
    ``POST /sandbox/pay/{invoice_id}``, which pays an invoice as a customer would.
    ``ttl`` is the sandbox feed's cache lifetime (the real feed's is 30 s)."""
    from qrispay.sandbox import Sandbox

    sandbox = Sandbox(ttl=ttl)
    app = create_app(
        gateway_factory=sandbox.gateway_client,
        feed_factory=sandbox.mutation_client,
        policy=PollPolicy(ttl=ttl, margin=min(0.5, ttl / 4)),
    )
    app.state.sandbox = sandbox

    @app.post("/sandbox/pay/{invoice_id}", status_code=204)
    async def pay(invoice_id: InvoiceId, rec: ReconcilerDep) -> None:
        invoice = rec.engine.get(invoice_id)
        if invoice is None:
            raise HTTPException(404, "no such invoice")
        sandbox.pay(invoice.total)

    return app


app = create_app()
