"""``MemoryStore``: the store contract kept in this process's memory.

Everything lives and dies with the process, as without a store; but within
the process it behaves exactly like a durable store (the same plain data, the
same commit rules), so a second Reconciler on the same ``MemoryStore`` carries
on where the first one stopped, and tests of restarts run without a disk.
"""

from __future__ import annotations

import bisect
import heapq
import json
from datetime import datetime
from typing import Any

import anyio
import attrs

from ..errors import StoreError
from ._base import (
    PAYOUT_STATES,
    Changes,
    MerchantState,
    PayoutEntry,
    Store,
    StoredEvent,
    prepare,
)

__all__ = ["MemoryStore"]


def _seq_of(event: StoredEvent) -> int:
    return event.seq


class _Merchant:
    __slots__ = ("event_ids", "events", "meta", "order", "records", "rejected", "seen")

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.records: dict[str, str] = {}
        self.seen: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        # (date, which memory, key), oldest first: forgetting costs what is forgotten.
        self.order: list[tuple[int, int, str]] = []
        self.events: list[StoredEvent] = []
        self.event_ids: dict[str, int] = {}


class MemoryStore(Store):
    """A store in this process's memory (see the module's docstring)."""

    def __init__(self) -> None:
        self._merchants: dict[str, _Merchant] = {}
        self._seq = 0
        self._lock = anyio.Lock()
        self._payouts: dict[tuple[str, str], PayoutEntry] = {}

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def load(self, merchant: str) -> MerchantState | None:
        state = self._merchants.get(merchant)
        if state is None:
            return None
        last = state.events[-1].seq if state.events else 0
        return MerchantState(
            meta=json.loads(json.dumps(state.meta)),
            records=list(state.records.values()),
            seen=list(state.seen.items()),
            rejected=list(state.rejected.items()),
            last_seq=last,
        )

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        # Everything that can fail is checked before the first change, so a commit
        # is all or nothing here as in a database transaction.
        meta_text, datas = prepare(changes)
        async with self._lock:
            state = self._merchants.get(merchant)
            if state is None:
                state = self._merchants[merchant] = _Merchant()
            # A JSON round trip: the store keeps data, never the caller's objects.
            state.meta = json.loads(meta_text)
            for invoice_id, _total, _state, text in changes.records:
                state.records[invoice_id] = text
            for invoice_id in changes.forgotten:
                state.records.pop(invoice_id, None)
            memories = (state.seen, state.rejected)
            for which, added in enumerate((changes.seen, changes.rejected)):
                for key, at in added:
                    if key not in memories[which]:
                        memories[which][key] = at
                        heapq.heappush(state.order, (at, which, key))
            horizon, order = changes.horizon, state.order
            while horizon is not None and order and order[0][0] < horizon:
                _, which, key = heapq.heappop(order)
                memories[which].pop(key, None)
            stored: list[StoredEvent] = []
            for (event_id, kind, _text), data in zip(changes.events, datas, strict=True):
                if event_id in state.event_ids:
                    continue
                self._seq += 1
                event = StoredEvent(self._seq, event_id, kind, changes.committed_at, data)
                state.events.append(event)
                state.event_ids[event_id] = self._seq
                stored.append(event)
            return stored

    async def events_after(self, merchant: str, seq: int, limit: int) -> list[StoredEvent]:
        state = self._merchants.get(merchant)
        if state is None:
            return []
        start = bisect.bisect_right(state.events, seq, key=_seq_of)
        return state.events[start : start + limit]

    async def event_seq(self, merchant: str, event_id: str) -> int:
        state = self._merchants.get(merchant)
        if state is None or event_id not in state.event_ids:
            raise KeyError(event_id)
        return state.event_ids[event_id]

    # -- payouts --------------------------------------------------------------------

    async def payout_claim(
        self, scope: str, key: str, request: str, now: datetime
    ) -> tuple[PayoutEntry, bool]:
        async with self._lock:
            entry = self._payouts.get((scope, key))
            if entry is not None:
                return entry, False
            entry = PayoutEntry(scope, key, request, "intent", None, None, now, now)
            self._payouts[(scope, key)] = entry
            return entry, True

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
        async with self._lock:
            entry = self._payouts.get((scope, key))
            if entry is None:
                raise KeyError(key)
            if state is None:
                del self._payouts[(scope, key)]
                return
            if state not in PAYOUT_STATES:
                raise ValueError(f"unknown payout state {state!r}")
            if withdraw_id is not None and any(
                other.withdraw_id == withdraw_id and other is not entry
                for other in self._payouts.values()
                if other.scope == scope
            ):
                raise StoreError(f"withdrawal {withdraw_id!r} is already claimed by another key")
            self._payouts[(scope, key)] = attrs.evolve(
                entry, state=state, result=result, withdraw_id=withdraw_id, updated_at=now
            )

    async def payouts_in(self, scope: str, state: str) -> list[PayoutEntry]:
        entries = [e for e in self._payouts.values() if e.scope == scope and e.state == state]
        return sorted(entries, key=lambda entry: entry.created_at)

    async def payout_claimed_ids(self, scope: str) -> set[str]:
        return {
            entry.withdraw_id
            for entry in self._payouts.values()
            if entry.scope == scope and entry.withdraw_id is not None
        }

    def __repr__(self) -> str:
        return f"<MemoryStore merchants={len(self._merchants)}>"
