"""The one small interface every store implements, and the values it moves.

A store keeps, per merchant, what the engine knows and every event it
produced, and applies each poll's changes in one transaction
(docs/design.md, "Stores"). The values crossing the interface are already
plain (JSON text, integers, UTC microseconds), so a store never imports the
engine and every store writes exactly the same data.
"""

from __future__ import annotations

import abc
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from .._codec import load_event
from ..errors import StoreError
from ..events import Event

__all__ = [
    "PAYOUT_STATES",
    "WEBHOOK_STATES",
    "Changes",
    "IdempotencyEntry",
    "MerchantState",
    "PayoutEntry",
    "Store",
    "StoredEvent",
    "WebhookDelivery",
    "from_micros",
    "micros",
    "prepare",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (UTC)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The UTC datetime of ``micros()``."""
    return _EPOCH + timedelta(microseconds=value)


@attrs.frozen
class StoredEvent:
    """An event as committed: its place in the merchant's commit order (``seq``),
    its id, kind, when it was committed, and its fields as JSON data."""

    seq: int
    id: str
    kind: str
    created_at: datetime
    data: dict[str, Any] = attrs.field(repr=False)

    def event(self) -> Event:
        """The event itself."""
        return load_event(self.kind, self.data)


@attrs.frozen
class MerchantState:
    """Everything a store holds for one merchant, as ``load()`` reads it.

    ``meta`` is the engine's small state and the poller's times (JSON data),
    ``records`` one JSON text per tracked invoice, ``seen`` and ``rejected``
    the remembered row keys with their dates (UTC microseconds; in no
    particular order, as each store indexes them its own way), ``last_seq``
    the ``seq`` of the last committed event (0 for none).
    """

    meta: dict[str, Any]
    records: list[str]
    seen: list[tuple[str, int]]
    rejected: list[tuple[str, int]]
    last_seq: int


#: ``holds_until`` of an invoice that holds its total until further notice (open).
HOLDS_FOREVER = 2**62


@attrs.frozen
class Lease:
    """The right to poll one merchant's feed and commit what the polls find:
    held by ``holder`` until ``expires_at`` (by the Reconciler's clock) unless
    renewed. ``epoch`` grows at every change of holder; a commit fenced with an
    older epoch is refused."""

    holder: str
    epoch: int
    expires_at: datetime


@attrs.frozen
class Changes:
    """What one commit writes for one merchant.

    ``meta`` replaces the stored one (it is small; None: left as it is). ``records``
    are upserted by invoice id as ``(invoice_id, total, state, json,
    holds_until)``, where ``holds_until`` (UTC microseconds, ``HOLDS_FOREVER``
    while open) is when the invoice stops holding its total; ``forgotten`` deleted;
    ``seen`` and ``rejected`` keys are added, and every remembered key dated
    before ``horizon`` (UTC microseconds) is dropped. ``events`` are
    ``(id, kind, json)`` in publishing order; an id the merchant already has is
    skipped, so a fact committed once is never stored or published twice.

    ``fence`` ``(holder, epoch)``: the commit is refused with ``LeaseLostError``,
    nothing written, unless that is the merchant's lease now; ``lease_until``
    (UTC microseconds, with ``fence``) then renews that lease to at least that
    time in the same transaction, so a poll costs one transaction. ``if_open``: ids of
    ``records`` written only if the stored invoice is still open (or already
    exactly as written: a retry after a lost answer), else the commit is
    refused with ``InvoiceStateConflictError`` (a close decided by a
    worker that does not poll must not undo one the poller committed).
    ``first``: the merchant's first state, written only if the store holds no
    meta for it yet, else refused with ``SeededMeanwhile`` (two workers
    starting at once on a new store: the later one must not overwrite what the
    first one's polls committed).
    """

    meta: dict[str, Any] | None
    records: list[tuple[str, int, str, str, int]] = attrs.field(factory=list)
    forgotten: list[str] = attrs.field(factory=list)
    seen: list[tuple[str, int]] = attrs.field(factory=list)
    rejected: list[tuple[str, int]] = attrs.field(factory=list)
    horizon: int | None = None
    events: list[tuple[str, str, str]] = attrs.field(factory=list)
    committed_at: datetime = attrs.field(factory=lambda: datetime.now(timezone.utc))
    fence: tuple[str, int] | None = None
    lease_until: int | None = None
    if_open: frozenset[str] = frozenset()
    first: bool = False


class SeededMeanwhile(StoreError):
    """A ``first`` commit found that another worker stored the merchant's first
    state meanwhile: nothing was written; read the store instead."""


def written(changes: Changes) -> dict[str, tuple[str, str, int] | None]:
    """``(state, json, holds_until)`` each ``if_open`` id is to be written as (the
    last write wins; None for one not written)."""
    rows = {row[0]: (row[2], row[3], row[4]) for row in changes.records}
    return {invoice_id: rows.get(invoice_id) for invoice_id in changes.if_open}


def prepare(changes: Changes) -> tuple[str | None, list[Any]]:
    """The checks every store makes before it writes anything, so that every store
    refuses the same ``Changes`` the same way with nothing changed: the meta as
    JSON text, and each event's data, parsed (``ValueError`` for bad JSON or an
    invoice total that is not positive; ``TypeError`` for meta that is not JSON)."""
    for invoice_id, total, _state, _text, _holds in changes.records:
        if total <= 0:
            raise ValueError(f"invoice {invoice_id!r} has total {total}; a total is positive")
    meta = None if changes.meta is None else json.dumps(changes.meta)
    return meta, [json.loads(text) for _, _, text in changes.events]


@attrs.frozen
class PayoutEntry:
    """One withdrawal intent, keyed by the caller's idempotency key within a scope
    (the gateway account). ``state`` is ``"intent"`` (committed, the request may be
    under way), ``"done"`` (``result`` is the withdrawal as JSON text) or
    ``"unknown"`` (sent, no answer said what happened). ``withdraw_id`` is the
    gateway's id once known; one withdrawal is claimed by one intent at most."""

    scope: str
    key: str
    request: str
    state: str
    result: str | None
    withdraw_id: str | None
    created_at: datetime
    updated_at: datetime


PAYOUT_STATES = ("intent", "done", "unknown")


@attrs.frozen
class IdempotencyEntry:
    """One idempotency key of the HTTP service, within a scope (what it creates,
    and for whom). ``digest`` names the request it was first used with (never the
    request itself); ``state`` is ``"pending"`` (a request holds it) or ``"done"``
    (``status`` and ``body``, JSON text, are its answer, replayed for ever)."""

    scope: str
    key: str
    digest: str
    state: str
    status: int | None
    body: str | None = attrs.field(repr=False)
    created_at: datetime
    updated_at: datetime


@attrs.frozen
class WebhookDelivery:
    """One event to be POSTed to one webhook endpoint (its name, never its
    secret): ``"pending"`` until a 2xx (``"delivered"``) or until retries give up
    (``"failed"``). ``last_status`` and ``last_error`` describe the last attempt."""

    merchant: str
    endpoint: str
    event_id: str
    seq: int
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


WEBHOOK_STATES = ("pending", "delivered", "failed")


class Store(abc.ABC):
    """Where a Reconciler keeps what it knows. ``async with store:`` opens and
    closes it; a store is also opened on first use and closed by ``aclose()``.
    One store holds any number of merchants, each keyed by
    ``MutationClient.merchant``."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def open(self) -> None:
        """Open (and create or migrate) the store; opening an open store does nothing."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the store's connections; closing a closed store does nothing."""

    @abc.abstractmethod
    async def load(self, merchant: str) -> MerchantState | None:
        """What the store holds for ``merchant``, or None if it holds nothing."""

    @abc.abstractmethod
    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        """Apply ``changes`` in one transaction: all of them or none. Returns the
        events newly stored, in commit order (those whose id was already stored
        are left out)."""

    @abc.abstractmethod
    async def events_after(self, merchant: str, seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events of ``merchant`` committed after ``seq``, oldest first."""

    @abc.abstractmethod
    async def event_seq(self, merchant: str, event_id: str) -> int:
        """The ``seq`` of a stored event; ``KeyError(event_id)`` if it is not stored."""

    # -- payouts: see qrispay.payouts ---------------------------------------------

    @abc.abstractmethod
    async def payout_claim(
        self, scope: str, key: str, request: str, now: datetime
    ) -> tuple[PayoutEntry, bool]:
        """In one atomic step: the entry of ``(scope, key)`` if there is one, with
        False; else a new ``"intent"`` entry holding ``request`` (JSON text), with
        True. Committed before it returns."""

    @abc.abstractmethod
    async def payout_settle(
        self,
        scope: str,
        key: str,
        *,
        state: str | None,
        result: str | None,
        withdraw_id: str | None,
        now: datetime,
    ) -> None:
        """Record what became of an intent: ``state`` ``"done"`` or ``"unknown"``
        (``result``, ``withdraw_id`` with it), or None to delete the entry (a
        definite refusal frees the key). ``KeyError`` if there is no entry;
        ``StoreError`` if ``withdraw_id`` is already claimed by another entry."""

    @abc.abstractmethod
    async def payouts_in(self, scope: str, state: str) -> list[PayoutEntry]:
        """The entries of ``scope`` in ``state``, oldest first."""

    @abc.abstractmethod
    async def payout_claimed_ids(self, scope: str) -> set[str]:
        """Every ``withdraw_id`` some entry of ``scope`` holds."""

    # -- several workers: see docs/design.md, "Several workers" -------------------

    @abc.abstractmethod
    async def claim_lease(
        self, merchant: str, holder: str, epoch: int | None, *, now: datetime, ttl: float
    ) -> Lease | None:
        """In one atomic step: renew the lease if ``holder`` holds it at ``epoch``;
        else take it (a new epoch) if it is free or lapsed (``expires_at < now``) or
        held under this holder's name by an earlier incarnation (``epoch`` None or
        another). None while another holder's lease is live."""

    @abc.abstractmethod
    async def release_lease(self, merchant: str, holder: str, epoch: int) -> None:
        """Let the lease lapse now, if ``holder`` still holds it at ``epoch``."""

    @abc.abstractmethod
    async def leases(self) -> dict[str, Lease]:
        """Every lease the store holds, live or lapsed, keyed by merchant (what a
        ``Fleet`` reads to share merchants out): one read, however many."""

    @abc.abstractmethod
    async def claim_invoices(
        self, merchant: str, claims: list[tuple[str, int, str, str, int]], *, now: datetime
    ) -> dict[str, str]:
        """Insert new invoices (records as in ``Changes``) in one transaction, each
        only if its id is not stored and no stored invoice holds its total at
        ``now``. Returns the refused ones: invoice id -> the id holding the total
        (its own id when the invoice is stored already)."""

    @abc.abstractmethod
    async def records_since(self, merchant: str, version: int) -> tuple[list[str], int]:
        """The records written after ``version`` (oldest write first) and the
        version now; ``version`` 0 gives them all."""

    # -- the HTTP service: see qrispay.serve and qrispay.webhooks -------------------

    @abc.abstractmethod
    async def idempotency_claim(
        self, scope: str, key: str, digest: str, *, now: datetime, stale_before: datetime
    ) -> tuple[IdempotencyEntry, str]:
        """In one atomic step, the entry of ``(scope, key)`` and what this call
        made of it: ``"new"`` (none was stored: a ``"pending"`` one holding
        ``digest`` is, now), ``"stale"`` (a ``"pending"`` entry with this digest
        last claimed before ``stale_before`` is claimed again, at ``now``: its
        first claimant is taken to have died) or ``"held"`` (the stored entry,
        unchanged: done, still in progress, or of another digest). Committed
        before it returns."""

    @abc.abstractmethod
    async def idempotency_settle(
        self, scope: str, key: str, *, status: int | None, body: str | None, now: datetime
    ) -> None:
        """Record the answer of a claimed key (``status`` and ``body``, JSON text):
        it is ``"done"`` and answers so for ever; or, with ``status`` None, delete
        the entry (nothing was done: the key is free). ``KeyError`` if there is none."""

    @abc.abstractmethod
    async def webhook_enqueue(self, merchant: str, endpoint: str, *, now: datetime) -> int:
        """In one transaction: a ``"pending"`` delivery to ``endpoint``, due at
        ``now``, for each event of ``merchant`` stored after the endpoint's
        cursor, and the cursor moved past them (an endpoint seen for the first
        time starts before the first event). Returns how many were added."""

    @abc.abstractmethod
    async def webhook_next(
        self, merchant: str, endpoint: str, *, now: datetime, hold_until: datetime
    ) -> WebhookDelivery | None:
        """The oldest (by event ``seq``) ``"pending"`` delivery to ``endpoint``, as
        stored, or None. When it is due (``next_attempt_at <= now``) it is taken in
        the same atomic step: its ``next_attempt_at`` moves to ``hold_until``, so
        another worker does not send it meanwhile."""

    @abc.abstractmethod
    async def webhook_attempted(
        self,
        merchant: str,
        endpoint: str,
        event_id: str,
        *,
        state: str,
        status: int | None,
        error: str | None,
        next_attempt_at: datetime,
        now: datetime,
    ) -> None:
        """Record one attempt of a delivery: ``attempts`` grows by one and it takes
        ``state`` (``WEBHOOK_STATES``), ``last_status``, ``last_error`` and
        ``next_attempt_at``. ``KeyError`` if there is no such delivery."""

    @abc.abstractmethod
    async def webhook_deliveries(
        self, merchant: str, *, state: str | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        """Up to ``limit`` deliveries of ``merchant`` (in ``state``, or all), by
        event ``seq`` then endpoint."""

    @abc.abstractmethod
    async def webhook_replay(self, merchant: str, event_id: str, *, now: datetime) -> int:
        """Make every delivery of the event ``"pending"`` again, due at ``now``,
        with no attempts; the number of deliveries. ``KeyError`` if the event is
        not stored."""
