"""``MemoryStore``'s tables of the HTTP service: idempotency keys and the
webhook outbox (``Store``'s "the HTTP service" methods), kept in memory with
exactly the rules of the durable stores."""

from __future__ import annotations

from datetime import datetime

import attrs

from ._base import WEBHOOK_STATES, IdempotencyEntry, Store, WebhookDelivery

__all__ = ["MemoryServeTables"]

# Events read per step while enqueueing: a step never holds everything at once.
_BATCH = 1000


class MemoryServeTables(Store):
    """The service's tables of a ``MemoryStore`` (a mixin: the store makes them)."""

    def _serve_tables(self) -> None:
        self._keys: dict[tuple[str, str], IdempotencyEntry] = {}
        self._cursors: dict[tuple[str, str], int] = {}
        # (merchant, endpoint, event id) -> delivery, in enqueueing order.
        self._deliveries: dict[tuple[str, str, str], WebhookDelivery] = {}

    async def idempotency_claim(
        self, scope: str, key: str, digest: str, *, now: datetime, stale_before: datetime
    ) -> tuple[IdempotencyEntry, str]:
        entry = self._keys.get((scope, key))
        if entry is None:
            entry = IdempotencyEntry(scope, key, digest, "pending", None, None, now, now)
            self._keys[(scope, key)] = entry
            return entry, "new"
        if entry.state == "pending" and entry.digest == digest and entry.updated_at < stale_before:
            entry = attrs.evolve(entry, updated_at=now)
            self._keys[(scope, key)] = entry
            return entry, "stale"
        return entry, "held"

    async def idempotency_settle(
        self, scope: str, key: str, *, status: int | None, body: str | None, now: datetime
    ) -> None:
        entry = self._keys.get((scope, key))
        if entry is None:
            raise KeyError(key)
        if status is None:
            del self._keys[(scope, key)]
            return
        self._keys[(scope, key)] = attrs.evolve(
            entry, state="done", status=status, body=body, updated_at=now
        )

    async def webhook_enqueue(self, merchant: str, endpoint: str, *, now: datetime) -> int:
        cursor = self._cursors.get((merchant, endpoint), 0)
        added = 0
        while True:
            # No await between reading and writing that could let another task in:
            # events_after of a MemoryStore does not suspend.
            batch = await self.events_after(merchant, cursor, _BATCH)
            for event in batch:
                place = (merchant, endpoint, event.id)
                if place not in self._deliveries:
                    self._deliveries[place] = WebhookDelivery(
                        merchant,
                        endpoint,
                        event.id,
                        event.seq,
                        "pending",
                        0,
                        now,
                        None,
                        None,
                        now,
                        now,
                    )
                    added += 1
                cursor = event.seq
            self._cursors[(merchant, endpoint)] = cursor
            if len(batch) < _BATCH:
                return added

    async def webhook_next(
        self, merchant: str, endpoint: str, *, now: datetime, hold_until: datetime
    ) -> WebhookDelivery | None:
        pending = [
            d
            for d in self._deliveries.values()
            if d.merchant == merchant and d.endpoint == endpoint and d.state == "pending"
        ]
        if not pending:
            return None
        head = min(pending, key=lambda delivery: delivery.seq)
        if head.next_attempt_at <= now:
            self._deliveries[(merchant, endpoint, head.event_id)] = attrs.evolve(
                head, next_attempt_at=hold_until
            )
        return head

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
        if state not in WEBHOOK_STATES:
            raise ValueError(f"unknown delivery state {state!r}")
        place = (merchant, endpoint, event_id)
        delivery = self._deliveries.get(place)
        if delivery is None:
            raise KeyError(event_id)
        self._deliveries[place] = attrs.evolve(
            delivery,
            state=state,
            attempts=delivery.attempts + 1,
            last_status=status,
            last_error=error,
            next_attempt_at=next_attempt_at,
            updated_at=now,
        )

    async def webhook_deliveries(
        self, merchant: str, *, state: str | None = None, limit: int = 100
    ) -> list[WebhookDelivery]:
        found = [
            d
            for d in self._deliveries.values()
            if d.merchant == merchant and (state is None or d.state == state)
        ]
        found.sort(key=lambda delivery: (delivery.seq, delivery.endpoint))
        return found[: max(0, limit)]

    async def webhook_replay(self, merchant: str, event_id: str, *, now: datetime) -> int:
        await self.event_seq(merchant, event_id)  # KeyError for an unknown event
        count = 0
        for place, delivery in list(self._deliveries.items()):
            if delivery.merchant == merchant and delivery.event_id == event_id:
                self._deliveries[place] = attrs.evolve(
                    delivery, state="pending", attempts=0, next_attempt_at=now, updated_at=now
                )
                count += 1
        return count
