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
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

import anyio
import attrs

from ..errors import InvoiceStateConflictError, LeaseLostError, StoreError
from ._base import (
    PAYOUT_STATES,
    Changes,
    Lease,
    MerchantState,
    PayoutEntry,
    SeededMeanwhile,
    Store,
    StoredEvent,
    from_micros,
    micros,
    prepare,
    written,
)
from ._memory_serve import MemoryServeTables

__all__ = ["MemoryStore"]


def _seq_of(event: StoredEvent) -> int:
    return event.seq


class _Merchant:
    __slots__ = (
        "event_ids",
        "events",
        "lease",
        "meta",
        "order",
        "recent",
        "records",
        "rejected",
        "seen",
        "version",
    )

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        # invoice id -> (total, state, json, holds_until), in first-stored order.
        self.records: dict[str, tuple[int, str, str, int]] = {}
        # invoice id -> the version of its last write, oldest write first.
        self.recent: OrderedDict[str, int] = OrderedDict()
        self.version = 0
        self.lease: Lease | None = None
        self.seen: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        # (date, which memory, key), oldest first: forgetting costs what is forgotten.
        self.order: list[tuple[int, int, str]] = []
        self.events: list[StoredEvent] = []
        self.event_ids: dict[str, int] = {}


class MemoryStore(MemoryServeTables, Store):
    """A store in this process's memory (see the module's docstring)."""

    def __init__(self) -> None:
        self._merchants: dict[str, _Merchant] = {}
        self._seq = 0
        self._lock = anyio.Lock()
        self._serve_tables()
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
            records=[text for _, _, text, _ in state.records.values()],
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
            renewed: Lease | None = None
            if changes.fence is not None:
                lease = None if state is None else state.lease
                if lease is None or (lease.holder, lease.epoch) != changes.fence:
                    raise LeaseLostError(
                        f"the poll lease of merchant {merchant!r} is no longer this worker's"
                    )
                renewed = lease
                if changes.lease_until is not None:
                    until = from_micros(changes.lease_until)
                    renewed = attrs.evolve(lease, expires_at=max(until, lease.expires_at))
            texts = written(changes)
            for invoice_id in changes.if_open:
                row = None if state is None else state.records.get(invoice_id)
                if row is not None and row[1] != "open" and row[1:] != texts[invoice_id]:
                    raise InvoiceStateConflictError(
                        f"invoice {invoice_id!r} was closed by another worker first"
                    )
            if changes.first and state is not None and state.meta:
                raise SeededMeanwhile(f"merchant {merchant!r} was stored meanwhile")
            if state is None:
                state = self._merchants[merchant] = _Merchant()
            if renewed is not None:
                state.lease = renewed
            # A JSON round trip: the store keeps data, never the caller's objects.
            if meta_text is not None:
                state.meta = json.loads(meta_text)
            if changes.records or changes.forgotten:
                state.version += 1
            for invoice_id, total, status, text, holds in changes.records:
                state.records[invoice_id] = (total, status, text, holds)
                state.recent[invoice_id] = state.version
                state.recent.move_to_end(invoice_id)
            for invoice_id in changes.forgotten:
                state.records.pop(invoice_id, None)
                state.recent.pop(invoice_id, None)
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

    # -- several workers ------------------------------------------------------------

    async def claim_lease(
        self, merchant: str, holder: str, epoch: int | None, *, now: datetime, ttl: float
    ) -> Lease | None:
        async with self._lock:
            state = self._merchants.get(merchant)
            if state is None:
                state = self._merchants[merchant] = _Merchant()
            lease = state.lease
            until = now + timedelta(seconds=ttl)
            if lease is not None and lease.holder == holder and lease.epoch == epoch:
                state.lease = Lease(holder, lease.epoch, until)
            elif lease is None or lease.expires_at < now or lease.holder == holder:
                state.lease = Lease(holder, 1 if lease is None else lease.epoch + 1, until)
            else:
                return None
            return state.lease

    async def release_lease(self, merchant: str, holder: str, epoch: int) -> None:
        async with self._lock:
            state = self._merchants.get(merchant)
            lease = None if state is None else state.lease
            if (
                state is not None
                and lease is not None
                and (lease.holder, lease.epoch)
                == (
                    holder,
                    epoch,
                )
            ):
                state.lease = Lease(holder, epoch, from_micros(0))

    async def leases(self) -> dict[str, Lease]:
        async with self._lock:
            return {
                merchant: state.lease
                for merchant, state in self._merchants.items()
                if state.lease is not None
            }

    async def claim_invoices(
        self, merchant: str, claims: list[tuple[str, int, str, str, int]], *, now: datetime
    ) -> dict[str, str]:
        for invoice_id, total, _status, _text, _holds in claims:
            if total <= 0:
                raise ValueError(f"invoice {invoice_id!r} has total {total}; a total is positive")
        at = micros(now)
        async with self._lock:
            state = self._merchants.get(merchant)
            if state is None:
                state = self._merchants[merchant] = _Merchant()
            refused: dict[str, str] = {}
            # By total: what holds each one now, among stored and just claimed.
            holders: dict[int, str] = {}
            for other_id, (total, _status, _text, holds) in state.records.items():
                if holds >= at:
                    holders.setdefault(total, other_id)
            accepted = []
            for claim in claims:
                invoice_id, total = claim[0], claim[1]
                if invoice_id in state.records:
                    refused[invoice_id] = invoice_id
                elif total in holders:
                    refused[invoice_id] = holders[total]
                else:
                    holders[total] = invoice_id
                    accepted.append(claim)
            if accepted:
                state.version += 1
            for invoice_id, total, status, text, holds in accepted:
                state.records[invoice_id] = (total, status, text, holds)
                state.recent[invoice_id] = state.version
            return refused

    async def records_since(self, merchant: str, version: int) -> tuple[list[str], int]:
        state = self._merchants.get(merchant)
        if state is None:
            return [], 0
        newer: list[str] = []
        for invoice_id in reversed(state.recent):
            if state.recent[invoice_id] <= version:
                break
            newer.append(state.records[invoice_id][2])
        newer.reverse()
        return newer, state.version

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
