"""An engine rebuilt from a store is the engine that was committed.

Over random scenarios (the ones of the engine's own properties), an engine's
changes are committed to a store after random operations; an engine rebuilt
from the store then has the same state (snapshots equal, times compared as
instants) and, given the same operations from then on, produces the same
events. If any change escaped the journal, a restart would lose it: this is
where it shows.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from qrispay import _durable
from qrispay._codec import dump_event
from qrispay.engine import ReconciliationEngine
from qrispay.events import Event
from qrispay.models import Invoice, Mutation
from qrispay.store import MemoryStore

from .test_engine_properties import T0, Op, apply, scenarios

MERCHANT = "OK1"


def _instant(value: Any) -> Any:
    """Times as UTC instants, anywhere in a snapshot, so zones do not differ."""
    if isinstance(value, dict):
        return {key: _instant(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_instant(item) for item in value]
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and "T" in value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            return parsed.astimezone(timezone.utc).isoformat()
    return value


def _state(engine: ReconciliationEngine) -> Any:
    snapshot = _instant(engine.snapshot())
    snapshot["invoices"].sort(key=lambda item: item["invoice"]["invoice_id"])
    return snapshot


def _events(result: list[Event] | str) -> Any:
    if isinstance(result, str):
        return result
    return [(event.id, _instant(dump_event(event))) for event in result]


async def _commit(store: MemoryStore, engine: ReconciliationEngine, now: datetime) -> None:
    changes = _durable.changes(engine, _durable.take(engine), [], committed_at=now, poller={})
    # Through JSON, as a database would hold it.
    json.dumps(changes.meta)
    await store.commit(MERCHANT, changes)


async def _rebuilt(store: MemoryStore) -> ReconciliationEngine:
    state = await store.load(MERCHANT)
    assert state is not None
    return _durable.engine_from(state)


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_an_engine_rebuilt_from_the_store_is_the_committed_engine(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]], data: st.DataObject
) -> None:
    invoice_list, rows, ops = scenario
    split = data.draw(st.integers(0, len(ops)), label="restart after")
    # After every operation, as the Reconciler commits after every poll; or at
    # random points, so that one commit carries several operations' changes.
    every = data.draw(st.booleans(), label="commit after every operation")
    commits = (
        [True] * split
        if every
        else data.draw(st.lists(st.booleans(), min_size=split, max_size=split), label="commits")
    )

    async def run() -> None:
        store = MemoryStore()
        engine = ReconciliationEngine(started_at=T0)
        everything = _durable.everything(engine)
        _durable.attach(engine)
        await store.commit(
            MERCHANT, _durable.changes(engine, everything, [], committed_at=T0, poller={})
        )
        now = T0
        for op, commit in zip(ops[:split], commits, strict=True):
            now += timedelta(minutes=op[1])
            apply(engine, op, now, invoice_list, rows)
            if commit:
                await _commit(store, engine, now)
        await _commit(store, engine, now)

        rebuilt = await _rebuilt(store)
        assert _state(rebuilt) == _state(engine)
        _durable.attach(rebuilt)
        for op in ops[split:]:
            now += timedelta(minutes=op[1])
            live = apply(engine, op, now, invoice_list, rows)
            again = apply(rebuilt, op, now, invoice_list, rows)
            assert _events(again) == _events(live)
        # The rebuilt engine's own changes round-trip too.
        await _commit(store, rebuilt, now)
        assert _state(await _rebuilt(store)) == _state(rebuilt)

    anyio.run(run)
