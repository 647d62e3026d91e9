"""The webhook delivery worker: the store's outbox, POSTed and retried.

Every endpoint has a task of its own, so a slow or dead receiver delays no
other one, and none delays the Reconciler's polls (they do not share a task).
A task moves the endpoint's cursor over newly stored events (each becomes a
delivery row in the same transaction), takes the oldest pending delivery,
signs and POSTs it, and records the attempt. Deliveries to one endpoint go in
event order: a later event waits until the one before it is delivered or
given up on. A failed attempt is retried after an exponential backoff with
jitter; after ``give_up_after`` (3 days) the delivery is marked failed and the
next one goes. A delivery is taken with a hold on it (the attempt's timeout and
a margin), so a crash mid-attempt only delays it until the hold lapses: it is
then sent again, under the same ``webhook-id``. Delivery is at least once;
receivers deduplicate on ``webhook-id``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

import anyio
import attrs
from anyio.abc import TaskStatus

from .._http import Poster, Transport
from ..errors import StoreError
from ..store._base import Store, WebhookDelivery
from ._payload import endpoint_name, event_body, url_secrets
from ._signing import WebhookSigner

__all__ = ["RetryPolicy", "WebhookDispatcher"]

logger = logging.getLogger("qrispay.webhooks")


@attrs.frozen
class RetryPolicy:
    """When a delivery is tried again: ``first`` seconds after the first failure,
    then ``factor`` times longer each time up to ``cap``, each wait drawn between
    half and all of that (jitter, so receivers that come back are not hit by
    every sender at once); given up on ``give_up_after`` seconds after it was
    enqueued. ``timeout``: the longest one attempt may take."""

    first: float = 5.0
    factor: float = 2.0
    cap: float = 3600.0
    give_up_after: float = 3 * 24 * 3600.0
    timeout: float = 10.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        """The wait after the ``attempts``-th failed attempt."""
        ceiling = min(self.cap, self.first * self.factor ** max(0, attempts - 1))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@attrs.define
class EndpointStats:
    """What one endpoint's task did since it started."""

    name: str
    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0


class WebhookDispatcher:
    """Delivers ``merchant``'s stored events to every URL in ``urls``, signed by
    ``signer`` (see the module's docstring). ``clock`` (aware datetimes; its
    differences are slept with ``anyio.sleep``) and ``rng`` make it run in
    virtual time in tests; ``transport`` is an httpx transport for tests.
    ``poll_interval``: how often the store is read for new events when nothing
    woke the worker (events stored by another process); ``recheck``: how often,
    while a retry waits, for a replay asked by another process."""

    def __init__(
        self,
        store: Store,
        merchant: str,
        urls: Sequence[str],
        signer: WebhookSigner,
        *,
        policy: RetryPolicy = RetryPolicy(),
        clock: Callable[[], datetime] | None = None,
        rng: random.Random | None = None,
        poll_interval: float = 1.0,
        recheck: float = 30.0,
        transport: Transport | None = None,
    ) -> None:
        self._store = store
        self._merchant = merchant
        self._urls = list(dict.fromkeys(urls))
        self._names = [endpoint_name(url) for url in self._urls]
        self._signer = signer
        self.policy = policy
        self._clock = clock or _utc_now
        self._rng = rng or random.Random()
        self._poll_interval = poll_interval
        self._recheck = recheck
        secrets = [secret for url in self._urls for secret in url_secrets(url)]
        self._poster = Poster(timeout=policy.timeout, secrets=secrets, transport=transport)
        self._wakes = {name: anyio.Event() for name in self._names}
        self.stats = {name: EndpointStats(name) for name in self._names}

    def __repr__(self) -> str:
        return f"<WebhookDispatcher merchant={self._merchant!r} endpoints={len(self._urls)}>"

    @property
    def endpoints(self) -> list[str]:
        """The endpoints' names as stored (no credentials)."""
        return list(self._names)

    def wake(self) -> None:
        """New events may be stored: look now rather than at the next poll."""
        for name, event in list(self._wakes.items()):
            event.set()
            self._wakes[name] = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled."""
        try:
            async with anyio.create_task_group() as tasks:
                for url, name in zip(self._urls, self._names, strict=True):
                    tasks.start_soon(self._endpoint, url, name)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._poster.aclose()

    # -- one endpoint ---------------------------------------------------------------

    async def _endpoint(self, url: str, name: str) -> None:
        while True:
            # Taken before the store is read, so a wake during the read is not lost.
            woken = self._wakes[name]
            now = self._clock()
            hold = now + timedelta(seconds=self.policy.timeout + 30.0)
            try:
                await self._store.webhook_enqueue(self._merchant, name, now=now)
                head = await self._store.webhook_next(
                    self._merchant, name, now=now, hold_until=hold
                )
            except StoreError as exc:
                logger.warning("webhooks: the store failed (%s); trying again", exc)
                await anyio.sleep(self._poll_interval)
                continue
            if head is None:
                with anyio.move_on_after(self._poll_interval):
                    await woken.wait()
            elif head.next_attempt_at > now:
                # Not woken by new events: the head blocks them anyway.
                left = (head.next_attempt_at - now).total_seconds()
                await anyio.sleep(min(left, self._recheck))
            else:
                try:
                    await self._attempt(url, name, head)
                except StoreError as exc:
                    # The event could not be read: left held, tried again once the
                    # hold lapses; the endpoint's task (and the service) lives on.
                    logger.warning("webhooks: the store failed (%s); trying again", exc)
                    await anyio.sleep(self._poll_interval)

    async def _attempt(self, url: str, name: str, delivery: WebhookDelivery) -> None:
        found = await self._store.events_after(self._merchant, delivery.seq - 1, 1)
        now = self._clock()
        if not found or found[0].id != delivery.event_id:
            await self._record(name, delivery, "failed", None, "the event is no longer stored", now)
            return
        body = event_body(found[0])
        headers = self._signer.headers(delivery.event_id, int(now.timestamp()), body)
        status, error = await self._poster.post(url, body, headers)
        now = self._clock()
        stats = self.stats[name]
        if status is not None and 200 <= status < 300:
            stats.delivered += 1
            logger.info("webhooks: %s delivered to %s (%d)", delivery.event_id, name, status)
            await self._record(name, delivery, "delivered", status, None, now)
            return
        stats.failed_attempts += 1
        error = error or f"HTTP {status}"
        wait = self.policy.delay(delivery.attempts + 1, self._rng)
        retry_at = now + timedelta(seconds=wait)
        if (retry_at - delivery.created_at).total_seconds() > self.policy.give_up_after:
            stats.given_up += 1
            logger.warning(
                "webhooks: %s to %s failed after %d attempts (%s); given up",
                delivery.event_id,
                name,
                delivery.attempts + 1,
                error,
            )
            await self._record(name, delivery, "failed", status, error, now)
            return
        logger.info("webhooks: %s to %s: %s; again in %.0f s", delivery.event_id, name, error, wait)
        await self._record(name, delivery, "pending", status, error, now, retry_at)

    async def _record(
        self,
        name: str,
        delivery: WebhookDelivery,
        state: str,
        status: int | None,
        error: str | None,
        now: datetime,
        retry_at: datetime | None = None,
    ) -> None:
        try:
            await self._store.webhook_attempted(
                self._merchant,
                name,
                delivery.event_id,
                state=state,
                status=status,
                error=error,
                next_attempt_at=retry_at or now,
                now=now,
            )
        except StoreError as exc:
            # Left held: sent again once the hold lapses, under the same id.
            logger.warning("webhooks: the attempt could not be recorded (%s)", exc)
