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
    curl localhost:8000/health                                 # rec.stats, 200 or 503
    curl 'localhost:8000/events?after=<last id handled>&wait=5'  # the durable events
    curl -X POST localhost:8000/sandbox/pay/<invoice_id>       # sandbox only

What the service knows lives in a SQLite file (``QRISPAY_DB``, default
``./qrispay.db``): stop it, let customers pay, start it again, and every
payment of the downtime gets its verdict, once. A durable consumer handles
every event: a paid invoice is delivered, and every payment that needs a
refund or a look (duplicate, late, unmatched, ambiguous, a balance gap,
unreadable rows) is logged and listed at ``GET /attention``. What it handled
is kept in the shop's own database (``<db stem>-shop.db``), keyed by event id.

Several worker processes may share the database (``uvicorn --workers 4``, or
several uvicorn processes): one of them polls the feed, every one of them
creates invoices and answers for every invoice, and each event takes effect
once. With ``QRISPAY_POSTGRES`` (a DSN; ``pip install 'qrispay[postgres]'``)
the state is in PostgreSQL instead, for workers on several hosts (give them
a shared shop database too). ``QRISPAY_FEED_TTL`` sets the feed's cache
window in seconds (default 30).
"""

from __future__ import annotations

import logging
import os
import pathlib
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing, suppress
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from qrispay import (
    AmbiguousCredit,
    BadRequestError,
    BalanceGap,
    DuplicatePayment,
    Event,
    EventsOverflowError,
    EventSubscription,
    GatewayClient,
    Invoice,
    InvoicePaid,
    InvoiceStatus,
    LatePayment,
    MutationClient,
    OutcomeUnknownError,
    PollPolicy,
    PostgresStore,
    QrispayError,
    RateLimitError,
    Reconciler,
    RejectedRows,
    ReplaySubscription,
    SQLiteStore,
    Store,
    TotalConflictError,
    UnmatchedCredit,
)
from qrispay.mutations import DEFAULT_FEED_URL

__all__ = [
    "Verdicts",
    "app",
    "consume",
    "create_app",
    "create_sandbox_app",
    "db_from_env",
    "feed_from_env",
    "gateway_from_env",
    "policy_from_env",
    "store_for",
]

logger = logging.getLogger("qrispay.examples.fastapi_app")

GatewayFactory = Callable[[], GatewayClient]
FeedFactory = Callable[[], MutationClient]

#: Failed polls in a row after which ``/health`` answers 503 ("degraded"), so
#: that a load balancer or a monitor notices the feed or the store is down.
#: One failure is routine (a timeout, a 5xx); three mean minutes without news.
DEGRADED_AFTER = 3


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


def policy_from_env() -> PollPolicy:
    """The poll policy for the feed's cache window ``QRISPAY_FEED_TTL`` (seconds,
    default 30: the real feed's)."""
    ttl = float(os.environ.get("QRISPAY_FEED_TTL") or 30.0)
    return PollPolicy(ttl=ttl, margin=min(0.5, ttl / 4))


def store_for(path: pathlib.Path) -> Store:
    """``PostgresStore(QRISPAY_POSTGRES)`` when that is set (several hosts; the
    ``postgres`` extra; in schema ``QRISPAY_POSTGRES_SCHEMA``, default "qrispay"),
    else ``SQLiteStore(path)`` (several workers on one host)."""
    dsn = os.environ.get("QRISPAY_POSTGRES")
    if not dsn:
        return SQLiteStore(path)
    return PostgresStore(dsn, schema=os.environ.get("QRISPAY_POSTGRES_SCHEMA") or "qrispay")


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


class Verdicts:
    """What the service does with each event, in the shop's own database (a
    SQLite file beside the store; a real shop uses its orders database).

    Delivery is at least once, and with several workers every worker sees
    every event: the effect (deliver, or put on the attention list) and the
    id of the event are written in one transaction, keyed by the event's id,
    so each event takes effect once, whichever worker handles it first, and a
    crash between handling and remembering cannot do it twice."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._lock = anyio.Lock()
        with closing(self._connect()) as conn:
            conn.executescript(
                """CREATE TABLE IF NOT EXISTS handled (
                    event_id TEXT PRIMARY KEY, type TEXT NOT NULL, invoice_id TEXT,
                    needs_person INTEGER NOT NULL, handled_at TEXT NOT NULL
                        DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')));"""
            )

    def _connect(self) -> sqlite3.Connection:
        # Several worker processes share the file: wait for each other's writes.
        return sqlite3.connect(self.path, timeout=30)

    def last(self) -> str:
        """The id of the last event handled, or "" for none yet (``events(after="")``
        then gives every stored event). Any worker's last is a safe place to
        resume: each worker handles every event in commit order."""
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT event_id FROM handled ORDER BY rowid DESC LIMIT 1")
            found = row.fetchone()
        return "" if found is None else str(found[0])

    def _handle(self, event: Event) -> bool:
        invoice_id = event.invoice.invoice_id if isinstance(event, InvoicePaid) else None
        needs_person = isinstance(event, NEEDS_A_PERSON)
        with closing(self._connect()) as conn, conn:
            done = conn.execute(
                "INSERT OR IGNORE INTO handled (event_id, type, invoice_id, needs_person)"
                " VALUES (?, ?, ?, ?)",
                (event.id, event.kind, invoice_id, int(needs_person)),
            )
            # Here a real shop marks the order paid, in this same transaction.
            return done.rowcount == 1

    async def handle(self, event: Event) -> None:
        async with self._lock:
            first = await anyio.to_thread.run_sync(self._handle, event)
        if not first:
            return  # handled before, here or in another worker
        if isinstance(event, InvoicePaid):
            logger.info("deliver the order of invoice %s", event.invoice.invoice_id)
        elif isinstance(event, NEEDS_A_PERSON):
            logger.warning("needs a person: %s (%s)", event.kind, event.id)
        else:
            logger.info("%s (%s)", event.kind, event.id)

    @property
    def delivered(self) -> dict[str, str]:
        """Event id -> invoice id of every paid invoice delivered, oldest first."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT event_id, invoice_id FROM handled WHERE invoice_id IS NOT NULL"
                " ORDER BY rowid"
            ).fetchall()
        return {str(event_id): str(invoice_id) for event_id, invoice_id in rows}

    @property
    def attention(self) -> list[dict[str, Any]]:
        """The payments a person must look at, oldest first."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT event_id, type FROM handled WHERE needs_person = 1 ORDER BY rowid"
            ).fetchall()
        return [{"id": event_id, "type": kind} for event_id, kind in rows]


async def consume(subscription: EventSubscription | ReplaySubscription, verdicts: Verdicts) -> None:
    """Handle each event; the handling remembers it (``Verdicts``)."""
    async with subscription as events:
        async for event in events:
            await verdicts.handle(event)


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


#: The events of an invoice closing, by the status they mean. A close is stored
#: with its event in one transaction, so a stored event is a committed fact.
_CLOSES = (
    (InvoiceStatus.PAID, "paid:"),
    (InvoiceStatus.EXPIRED, "expired:"),
    (InvoiceStatus.EXPIRED, "cancelled:"),
)


async def committed_status(rec: Reconciler, invoice_id: str) -> InvoiceStatus:
    """The invoice's status as the store holds it. The engine changes an
    invoice's state when a poll judges a row, a moment before that poll is
    committed; a crash in that moment would make a frontend see paid, then
    pending, then paid again. A worker that does not poll also lags the store by
    up to a second. So the closing events are looked up (one indexed read each)."""
    assert rec.store is not None
    for status, prefix in _CLOSES:
        try:
            await rec.store.event_seq(rec.feed.merchant, prefix + invoice_id)
        except KeyError:
            continue
        return status
    return InvoiceStatus.PENDING


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut)
async def get_invoice(invoice_id: InvoiceId, rec: ReconcilerDep) -> InvoiceOut:
    # What is committed, not a gateway call: it costs no request against anyone's quota.
    if rec.engine.get(invoice_id) is None:
        # Another worker may have made it within the last second.
        await rec.refresh()
    invoice = rec.engine.get(invoice_id)
    if invoice is None:
        raise HTTPException(404, "no such invoice")
    return InvoiceOut.of(invoice, await committed_status(rec, invoice_id))


#: Longest ``wait`` of ``GET /events``: short, so that no request holds a
#: shutdown or a rolling restart for long.
MAX_EVENTS_WAIT = 10.0
WIB = timezone(timedelta(hours=7))


def event_out(seq_event: Any) -> dict[str, Any]:
    """A stored event for a backend in any language: ids, money as int rupiah,
    times in +07:00. No QR payload, no reference, never a credential."""
    event: Event = seq_event.event()
    invoice = getattr(event, "invoice", None)
    row = getattr(event, "mutation", None)
    if isinstance(event, BalanceGap):
        amount: int | None = event.missing
        row = event.after
    elif row is not None:
        amount = row.amount
    else:
        amount = None if invoice is None else invoice.total
    return {
        "id": event.id,
        "type": event.kind,
        "invoice_id": None if invoice is None else invoice.invoice_id,
        "amount": amount,
        "row_date": None if row is None else row.date.astimezone(WIB).isoformat(),
        "committed_at": seq_event.created_at.astimezone(WIB).isoformat(),
        "needs_person": isinstance(event, NEEDS_A_PERSON),
    }


@router.get("/events")
async def events_feed(
    rec: ReconcilerDep,
    after: Annotated[str, Query(max_length=256)] = "",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    wait: Annotated[float, Query(ge=0, le=MAX_EVENTS_WAIT)] = 0.0,
) -> dict[str, Any]:
    """The stored events committed after the event ``after`` (none: from the
    first), oldest first, for a consumer that remembers the last id it handled
    and resumes after it: nothing missed, nothing repeated, in every worker
    (they all read the one store). With ``wait`` (seconds, at most 10) and
    nothing new, it waits that long at most for the next event, and returns
    at once when the service stops."""
    assert rec.store is not None
    merchant = rec.feed.merchant
    try:
        seq = 0 if after == "" else await rec.store.event_seq(merchant, after)
    except KeyError:
        raise HTTPException(404, "no stored event has this id; resume from a returned id") from None
    # Subscribed before reading, so an event committed in between wakes the wait.
    async with rec.events(buffer=1) as live:
        found = await rec.store.events_after(merchant, seq, limit + 1)
        if not found and wait > 0:
            with anyio.move_on_after(wait):
                # Ends early when the service stops (or on a second wake): read again.
                with suppress(StopAsyncIteration, EventsOverflowError):
                    await live.__anext__()
            found = await rec.store.events_after(merchant, seq, limit + 1)
    data = [event_out(stored) for stored in found[:limit]]
    return {
        "events": data,
        "has_more": len(found) > limit,
        # Where to resume: the last id returned, or the one asked for.
        "next_after": data[-1]["id"] if data else after,
    }


@router.get("/health")
async def health(rec: ReconcilerDep, response: Response) -> dict[str, Any]:
    """The Reconciler's counters for a monitor: 200 while polls succeed, 503
    after ``DEGRADED_AFTER`` failures in a row. No long-poll route exists on
    purpose: a client asks ``GET /invoices/{id}`` every few seconds, which
    costs no gateway or feed request and never holds a shutdown."""
    stats = rec.stats
    degraded = stats.consecutive_failures >= DEGRADED_AFTER
    if degraded:
        response.status_code = 503
    return {
        "status": "degraded" if degraded else "ok",
        # One worker per merchant polls; the others follow what it stores.
        "polling": rec.is_polling,
        "polls": stats.polls,
        "failures": stats.failures,
        "consecutive_failures": stats.consecutive_failures,
        "last_success": None if stats.last_success is None else stats.last_success.isoformat(),
        # The SDK's own message, scrubbed of credentials by the SDK.
        "last_error": stats.last_error,
        "commit_failures": stats.commit_failures,
        "events": dict(stats.events),
    }


@router.get("/attention")
async def attention(request: Request) -> list[dict[str, Any]]:
    """The payments a person must look at (refunds, wrong amounts), oldest first."""
    verdicts: Verdicts = request.app.state.verdicts
    return await anyio.to_thread.run_sync(lambda: verdicts.attention)


# -- the application --------------------------------------------------------------


def create_app(
    *,
    gateway_factory: GatewayFactory = gateway_from_env,
    feed_factory: FeedFactory = feed_from_env,
    policy: PollPolicy | None = None,
    clock: Callable[[], datetime] | None = None,
    db: pathlib.Path | str | None = None,
) -> FastAPI:
    """The service. The factories are called at start-up, inside the event loop
    (an SDK client makes its HTTP client there), never at import. ``db``: the
    SQLite file (default ``QRISPAY_DB`` or ``./qrispay.db``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        path = pathlib.Path(db) if db is not None else db_from_env()
        app.state.verdicts = verdicts = Verdicts(path.with_name(path.stem + "-shop.db"))
        # The Reconciler's task group lives exactly as long as the app: it is
        # entered and left in the lifespan task, as anyio requires. Start-up
        # reads the store and waits for the first feed poll, so wrong
        # credentials fail the start instead of being retried for ever.
        async with (
            gateway_factory() as gateway,
            feed_factory() as feed,
            store_for(path) as store,
        ):
            reconciler = Reconciler(
                feed,
                gateway=gateway,
                policy=policy or policy_from_env(),
                clock=clock,
                store=store,
            )
            # Subscribed before the loop starts: the first poll's events (the
            # downtime's payments) wait in it for the consumer.
            subscription = reconciler.events(after=verdicts.last())
            try:
                async with reconciler, anyio.create_task_group() as tasks:
                    tasks.start_soon(consume, subscription, verdicts)
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
        await rec.refresh()
        invoice = rec.engine.get(invoice_id)
        if invoice is None:
            raise HTTPException(404, "no such invoice")
        sandbox.pay(invoice.total)

    return app


app = create_app()
