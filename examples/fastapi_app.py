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

What the service knows lives in a SQLite file (``QRISPAY_DB``, default
``./qrispay.db``): stop it, let customers pay, start it again, and every
payment of the downtime gets its verdict, once. A durable consumer handles
every event: a paid invoice is delivered, and every payment that needs a
refund or a look (duplicate, late, unmatched, ambiguous, a balance gap,
unreadable rows) is logged and listed at ``GET /attention``. It remembers the
id of the last event it handled in ``<db>.cursor`` and resumes after it.

Run ONE worker process per database: several Reconcilers on one store do not
yet share the feed between them (each would poll and judge alone).
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from qrispay import (
    AmbiguousCredit,
    BadRequestError,
    BalanceGap,
    DuplicatePayment,
    Event,
    EventSubscription,
    GatewayClient,
    Invoice,
    InvoiceCancelledError,
    InvoiceExpiredError,
    InvoicePaid,
    InvoiceStatus,
    LatePayment,
    MutationClient,
    OutcomeUnknownError,
    PollPolicy,
    QrispayError,
    RateLimitError,
    Reconciler,
    RejectedRows,
    ReplaySubscription,
    SQLiteStore,
    TotalConflictError,
    UnmatchedCredit,
)
from qrispay.mutations import DEFAULT_FEED_URL

__all__ = [
    "Cursor",
    "Verdicts",
    "app",
    "consume",
    "create_app",
    "create_sandbox_app",
    "db_from_env",
    "feed_from_env",
    "gateway_from_env",
]

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


def db_from_env() -> pathlib.Path:
    """``QRISPAY_DB``, or ``./qrispay.db``."""
    return pathlib.Path(os.environ.get("QRISPAY_DB") or "qrispay.db")


# -- the durable consumer -----------------------------------------------------------

#: Payments a person must look at: money arrived that paid no invoice, or the
#: feed itself looks wrong. Each usually means a refund or a phone call.
NEEDS_A_PERSON = (
    DuplicatePayment,
    LatePayment,
    UnmatchedCredit,
    AmbiguousCredit,
    BalanceGap,
    RejectedRows,
)


class Cursor:
    """The id of the last event handled, kept in a file, replaced atomically so
    that a crash leaves the old id or the new one, never half of one."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def read(self) -> str:
        """The last id handled, or "" for none yet (``events(after="")`` then
        gives every stored event)."""
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def write(self, event_id: str) -> None:
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(event_id)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


class Verdicts:
    """What the service does with each event. Delivery is at least once (an
    event handled just before a crash comes again), so each action is keyed by
    the event's id and done once. A real service writes them, and the cursor,
    to its own database in one transaction."""

    def __init__(self) -> None:
        self.delivered: dict[str, str] = {}  # event id -> invoice id
        self.attention: dict[str, dict[str, Any]] = {}  # event id -> what happened

    def handle(self, event: Event) -> None:
        if isinstance(event, InvoicePaid):
            if event.id not in self.delivered:
                self.delivered[event.id] = event.invoice.invoice_id
                logger.info("deliver the order of invoice %s", event.invoice.invoice_id)
        elif isinstance(event, NEEDS_A_PERSON):
            if event.id not in self.attention:
                self.attention[event.id] = {"id": event.id, "type": event.kind}
                logger.warning("needs a person: %s (%s)", event.kind, event.id)
        else:
            logger.info("%s (%s)", event.kind, event.id)


async def consume(
    subscription: EventSubscription | ReplaySubscription, verdicts: Verdicts, cursor: Cursor
) -> None:
    """Handle each event, then remember its id: a crash between the two only
    hands the same event over again, which ``Verdicts`` ignores."""
    async with subscription as events:
        async for event in events:
            verdicts.handle(event)
            await anyio.to_thread.run_sync(cursor.write, event.id)


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


@router.get("/attention")
async def attention(request: Request) -> list[dict[str, Any]]:
    """The payments a person must look at (refunds, wrong amounts), oldest first."""
    verdicts: Verdicts = request.app.state.verdicts
    return list(verdicts.attention.values())


# -- the application --------------------------------------------------------------


def create_app(
    *,
    gateway_factory: GatewayFactory = gateway_from_env,
    feed_factory: FeedFactory = feed_from_env,
    policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen, shared safely
    clock: Callable[[], datetime] | None = None,
    db: pathlib.Path | str | None = None,
) -> FastAPI:
    """The service. The factories are called at start-up, inside the event loop
    (an SDK client makes its HTTP client there), never at import. ``db``: the
    SQLite file (default ``QRISPAY_DB`` or ``./qrispay.db``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        path = pathlib.Path(db) if db is not None else db_from_env()
        cursor = Cursor(path.with_name(path.name + ".cursor"))
        app.state.verdicts = verdicts = Verdicts()
        # The Reconciler's task group lives exactly as long as the app: it is
        # entered and left in the lifespan task, as anyio requires. Start-up
        # reads the store and waits for the first feed poll, so wrong
        # credentials fail the start instead of being retried for ever.
        async with (
            gateway_factory() as gateway,
            feed_factory() as feed,
            SQLiteStore(path) as store,
        ):
            reconciler = Reconciler(feed, gateway=gateway, policy=policy, clock=clock, store=store)
            # Subscribed before the loop starts: the first poll's events (the
            # downtime's payments) wait in it for the consumer.
            subscription = reconciler.events(after=cursor.read())
            try:
                async with reconciler, anyio.create_task_group() as tasks:
                    tasks.start_soon(consume, subscription, verdicts, cursor)
                    app.state.gateway = gateway
                    app.state.feed = feed
                    app.state.reconciler = reconciler
                    yield
                    # Stopping: what the consumer has not handled yet is stored,
                    # and is handed to it again after the next start.
                    tasks.cancel_scope.cancel()
            finally:
                await subscription.aclose()

    app = FastAPI(title="qrispay example", lifespan=lifespan)
    app.include_router(router)
    return app


def create_sandbox_app(*, ttl: float = 2.0) -> FastAPI:
    """The same service against an in-process sandbox, plus
    ``POST /sandbox/pay/{invoice_id}``, which pays an invoice as a customer would.
    ``ttl`` is the sandbox feed's cache lifetime (the real feed's is 30 s). The
    sandbox starts empty each time, so its database is a fresh temporary file."""
    from qrispay.sandbox import Sandbox

    sandbox = Sandbox(ttl=ttl, seed=None)
    app = create_app(
        gateway_factory=sandbox.gateway_client,
        feed_factory=sandbox.mutation_client,
        policy=PollPolicy(ttl=ttl, margin=min(0.5, ttl / 4)),
        db=pathlib.Path(tempfile.mkdtemp(prefix="qrispay-sandbox-")) / "qrispay.db",
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
