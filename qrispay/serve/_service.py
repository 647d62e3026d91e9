"""``Service``: one merchant's Reconciler, its store, payouts and webhooks,
behind the HTTP app. It runs them (``run``), checks the bearer token, and
tells event streams when the store holds new events."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone

import anyio
from anyio.abc import TaskStatus

from .._redact import Redactor
from ..errors import EventsOverflowError
from ..payouts import Payouts
from ..reconciler import Reconciler
from ..store._base import Store
from ..webhooks import WebhookDispatcher
from ._idempotency import STALE_AFTER, Keys
from ._input import MAX_BODY

__all__ = ["Service"]

logger = logging.getLogger("qrispay.serve")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Service:
    """The HTTP service of ``rec`` (which must have a store). ``token``: what
    every request but ``/healthz`` sends as ``Authorization: Bearer``.
    ``secrets``: other values no answer may show (the clients' credentials,
    the webhook secrets). ``app`` is the ASGI app; ``run`` starts what it needs."""

    def __init__(
        self,
        rec: Reconciler,
        *,
        token: str,
        payouts: Payouts | None = None,
        webhooks: WebhookDispatcher | None = None,
        clock: Callable[[], datetime] | None = None,
        stale_after: timedelta = STALE_AFTER,
        secrets: Iterable[str] = (),
        max_body: int = MAX_BODY,
    ) -> None:
        if rec.store is None:
            raise ValueError(
                "the service keeps its keys and outbox in the store: Reconciler(store=...)"
            )
        if len(token) < 16:
            raise ValueError("the service token must be at least 16 characters")
        self.rec = rec
        self.store: Store = rec.store
        self.merchant = rec.feed.merchant
        self.payouts = payouts
        self.webhooks = webhooks
        self.clock = clock or _utc_now
        self.keys = Keys(self.store, self.clock, stale_after)
        self.max_body = max_body
        self.redactor = Redactor([token, *secrets])
        self._token = _digest(token)
        self.running = False
        #: Set when the server is told to stop: open event streams end.
        self.stopping = False
        self.events_seen: dict[str, int] = {}
        self._changed = anyio.Event()
        from ._app import build_app

        self.app = build_app(self)

    def __repr__(self) -> str:
        return f"<Service merchant={self.merchant!r} running={self.running}>"

    def token_ok(self, header: str) -> bool:
        """Whether an ``Authorization`` header carries the token (constant time:
        digests of equal length are compared)."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        return hmac.compare_digest(_digest(given.strip()), self._token)

    def changed(self) -> anyio.Event:
        """Set once new events may be in the store (take it before reading)."""
        return self._changed

    def _notify(self, *, webhooks: bool = True) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        if webhooks and self.webhooks is not None:
            self.webhooks.wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the Reconciler (started after its first poll), the webhook
        worker and the event follower until cancelled."""
        async with anyio.create_task_group() as tasks:
            await tasks.start(self.rec.run)
            if self.webhooks is not None:
                await tasks.start(self.webhooks.run)
            tasks.start_soon(self._follow)
            tasks.start_soon(self._tick)
            self.running = True
            try:
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self.running = False
                self._notify()

    async def _follow(self) -> None:
        # Live events of this process: woken at once. Those of other instances
        # on a shared store arrive through the Reconciler too (it reads them).
        while True:
            try:
                async with self.rec.events() as subscription:
                    async for event in subscription:
                        self.events_seen[event.kind] = self.events_seen.get(event.kind, 0) + 1
                        self._notify()
            except EventsOverflowError:
                logger.warning("serve: events came faster than they were counted")
                continue
            await anyio.sleep(1)

    async def _tick(self) -> None:
        # Readers also look every second, whatever woke them or not.
        while True:
            await anyio.sleep(1)
            self._notify(webhooks=False)  # the webhook worker reads on its own schedule
