"""Rule 9: the engine's invariants, property-tested over random feeds and invoice lives.

A scenario is a small world (a few invoices sharing a few totals, a pool of
distinct feed rows around them) and a sequence of operations with the clock
moving forward. Small pools on purpose: collisions are what the rules are for.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from qrispay.engine import ReconciliationEngine
from qrispay.errors import TotalConflictError
from qrispay.events import (
    AmbiguousCredit,
    DuplicatePayment,
    Event,
    InvoicePaid,
    LatePayment,
    UnmatchedCredit,
)
from qrispay.models import JAKARTA, Invoice, InvoiceStatus, Mutation, MutationType

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=JAKARTA)
SKEW = timedelta(minutes=2)
TOTALS = (10_001, 10_002, 10_003)
VERDICTS = (InvoicePaid, AmbiguousCredit, LatePayment, DuplicatePayment, UnmatchedCredit)
FAST = settings(max_examples=150, deadline=None)

Op = tuple[Any, ...]


def minutes(value: int) -> datetime:
    return T0 + timedelta(minutes=value)


@st.composite
def invoices(draw: st.DrawFn) -> list[Invoice]:
    made = []
    for number in range(draw(st.integers(1, 5))):
        created = draw(st.none() | st.integers(-40, 40))
        start = 0 if created is None else created
        made.append(
            Invoice(
                invoice_id=f"inv-{number}",
                amount=10_000,
                fee=0,
                total=draw(st.sampled_from(TOTALS)),
                status=draw(
                    st.sampled_from([InvoiceStatus.PENDING] * 4 + [InvoiceStatus.PAID, "expired"])
                ),
                qris_image="",
                expired_at=minutes(start + draw(st.integers(1, 30))),
                created_at=None if created is None else minutes(created),
            )
        )
    return made


@st.composite
def feed_rows(draw: st.DrawFn) -> list[Mutation]:
    made = []
    for number in range(draw(st.integers(1, 14))):
        kind = draw(
            st.sampled_from(
                [MutationType.CREDIT] * 5 + [MutationType.DEBIT] * 2 + [MutationType.UNKNOWN]
            )
        )
        made.append(
            Mutation(
                date=minutes(draw(st.integers(-20, 90))),
                amount=draw(st.sampled_from((*TOTALS, 777))),
                type=kind,
                qris="dynamic",
                brand_name="GOPAY",
                issuer_reff=f"ref-{number}",
                buyer_reff="",
                balance=draw(st.none() | st.integers(0, 40_000)),
            )
        )
    return made


def operations(n_invoices: int, n_rows: int) -> st.SearchStrategy[list[Op]]:
    pick_invoice = st.integers(0, n_invoices - 1)
    pick_rows = st.lists(st.integers(0, n_rows - 1), max_size=8)
    step = st.integers(0, 12)
    op = st.one_of(
        st.tuples(st.just("track"), step, pick_invoice),
        st.tuples(st.just("ingest"), step, pick_rows),
        st.tuples(st.just("ingest"), step, pick_rows),
        st.tuples(st.just("expire"), step, st.none() | st.lists(pick_invoice, max_size=3)),
        st.tuples(st.just("mark_paid"), step, pick_invoice),
        st.tuples(st.just("cancel"), step, pick_invoice),
    )
    return st.lists(op, max_size=25)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Invoice], list[Mutation], list[Op]]:
    invoice_list = draw(invoices())
    rows = draw(feed_rows())
    # Track most invoices first, as a Reconciler does, then live.
    ops: list[Op] = [("track", 0, i) for i in range(len(invoice_list)) if draw(st.booleans())]
    ops += draw(operations(len(invoice_list), len(rows)))
    return invoice_list, rows, ops


def apply(
    engine: ReconciliationEngine,
    op: Op,
    now: datetime,
    invoice_list: Sequence[Invoice],
    rows: Sequence[Mutation],
) -> list[Event] | str:
    """One operation; an expected refusal is returned as its name, so runs compare."""
    name, _, arg = op
    try:
        if name == "track":
            engine.track(invoice_list[arg], now=now)
            return []
        if name == "ingest":
            return engine.ingest([rows[i] for i in arg], now=now)
        if name == "expire":
            ids = None if arg is None else [invoice_list[i].invoice_id for i in arg]
            return engine.expire(now=now, invoice_ids=ids)
        if name == "mark_paid":
            return engine.mark_paid(invoice_list[arg].invoice_id, now=now)
        return engine.cancel(invoice_list[arg].invoice_id, now=now)
    except (KeyError, TotalConflictError) as exc:
        return type(exc).__name__


class Run:
    """Runs a scenario and keeps what the properties need to look at."""

    def __init__(self, invoice_list: list[Invoice], rows: list[Mutation]) -> None:
        self.engine = ReconciliationEngine(started_at=T0)
        self.invoices = invoice_list
        self.rows = rows
        self.now = T0
        self.events: list[Event] = []
        self.fed: list[Mutation] = []
        self.gateway_paid: list[Invoice] = []
        self.windows: dict[str, tuple[datetime, datetime]] = {}

    def step(self, op: Op) -> list[Event] | str:
        self.now += timedelta(minutes=op[1])
        name, _, arg = op
        newly_tracked = name == "track" and self.engine.get(self.invoices[arg].invoice_id) is None
        result = apply(self.engine, op, self.now, self.invoices, self.rows)
        if isinstance(result, str):
            return result
        if newly_tracked:
            tracked = self.invoices[arg]
            created = tracked.created_at or self.now
            self.windows[tracked.invoice_id] = (created - SKEW, tracked.expired_at + SKEW)
            if tracked.status == InvoiceStatus.PAID:
                self.gateway_paid.append(tracked)
                self._reported(tracked.invoice_id)
        if name == "ingest":
            self.fed += [self.rows[i] for i in arg]
        for event in result:
            if isinstance(event, InvoicePaid) and event.source == "gateway":
                self.gateway_paid.append(event.invoice)
                self._reported(event.invoice.invoice_id)
        self.events += result
        return result

    def _reported(self, invoice_id: str) -> None:
        # A report pairs with its payment up to the report itself (rule 8).
        start, end = self.windows[invoice_id]
        self.windows[invoice_id] = (start, max(end, self.now))


@FAST
@given(scenarios())
def test_rule9_one_row_settles_at_most_one_invoice_and_an_invoice_is_paid_once(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]],
) -> None:
    invoice_list, rows, ops = scenario
    run = Run(invoice_list, rows)
    for op in ops:
        run.step(op)
    paid = [e for e in run.events if isinstance(e, InvoicePaid)]
    paid_ids = Counter(e.invoice.invoice_id for e in paid)
    assert all(count == 1 for count in paid_ids.values()), paid_ids
    settled_by = Counter(e.mutation.key for e in paid if e.mutation is not None)
    assert all(count == 1 for count in settled_by.values()), settled_by
    for event in paid:
        if event.mutation is not None:
            start, end = run.windows[event.invoice.invoice_id]
            assert event.mutation.amount == event.invoice.total
            assert start <= event.mutation.date <= end
        assert event.invoice.status is InvoiceStatus.PAID


@FAST
@given(scenarios())
def test_rule9_every_live_credit_gets_exactly_one_verdict(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]],
) -> None:
    invoice_list, rows, ops = scenario
    run = Run(invoice_list, rows)
    for op in ops:
        run.step(op)
    # A credit dated after the window of an invoice still open waits for it to
    # close: close them all, so every verdict is in.
    run.events += run.engine.expire(now=run.now + timedelta(days=365))
    verdicts = Counter(
        e.mutation.key for e in run.events if isinstance(e, VERDICTS) and e.mutation is not None
    )
    history_before = T0 - SKEW
    unpaired: Counter[int] = Counter()
    for row in {r.key: r for r in run.fed}.values():
        count = verdicts[row.key]
        if row.type != MutationType.CREDIT:
            assert count == 0
        elif row.date < history_before:
            assert count <= 1  # history is silent unless it pays (or is ambiguous)
        elif count == 0:
            unpaired[row.amount] += 1
            assert any(
                paid.total == row.amount
                and run.windows[paid.invoice_id][0] <= row.date <= run.windows[paid.invoice_id][1]
                for paid in run.gateway_paid
            ), f"credit {row} got no verdict and pairs with no gateway report"
        else:
            assert count == 1, row
    # Each gateway report absorbs at most one credit.
    gateway_totals = Counter(paid.total for paid in run.gateway_paid)
    assert all(unpaired[total] <= gateway_totals[total] for total in unpaired)
    for event in run.events:
        if isinstance(event, (LatePayment, UnmatchedCredit, DuplicatePayment)):
            assert event.mutation.date >= history_before


@FAST
@given(scenarios(), st.data())
def test_rule9_feeding_seen_rows_again_changes_nothing(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]], data: st.DataObject
) -> None:
    invoice_list, rows, ops = scenario
    run = Run(invoice_list, rows)
    for op in ops:
        run.step(op)
    # Time passing alone moves the retention horizon; take that out of the comparison.
    run.engine.ingest([], now=run.now)
    before = run.engine.snapshot()
    again = data.draw(st.lists(st.sampled_from(run.fed), max_size=30) if run.fed else st.just([]))
    again = data.draw(st.permutations(again + run.fed))
    while again:
        size = data.draw(st.integers(1, len(again)))
        chunk, again = again[:size], again[size:]
        assert run.engine.ingest(chunk, now=run.now) == []
    assert run.engine.snapshot() == before
    # A later `now` forgets nothing that matters: still no events.
    later = run.now + timedelta(days=3)
    assert run.engine.ingest(run.fed, now=later) == []


@FAST
@given(scenarios(), st.data())
def test_rule9_snapshot_then_restore_behaves_identically(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]], data: st.DataObject
) -> None:
    invoice_list, rows, ops = scenario
    cut = data.draw(st.integers(0, len(ops)))
    original = Run(invoice_list, rows)
    for op in ops[:cut]:
        original.step(op)
    text = json.dumps(original.engine.snapshot())
    restored = ReconciliationEngine.restore(json.loads(text))
    now = original.now
    for op in ops[cut:]:
        now += timedelta(minutes=op[1])
        expected = original.step(op)
        assert apply(restored, op, now, invoice_list, rows) == expected
        assert restored.open_invoices() == original.engine.open_invoices()
    assert restored.snapshot() == json.loads(json.dumps(original.engine.snapshot()))
    for item in invoice_list:
        assert restored.state_of(item.invoice_id) == original.engine.state_of(item.invoice_id)
        assert restored.get(item.invoice_id) == original.engine.get(item.invoice_id)
    assert restored.has_work(now=now) == original.engine.has_work(now=now)


@FAST
@given(scenarios(), st.lists(st.integers(-30, 120), min_size=1, max_size=4))
def test_due_for_expiry_is_the_open_invoices_past_their_window_oldest_first(
    scenario: tuple[list[Invoice], list[Mutation], list[Op]], cutoffs: list[int]
) -> None:
    invoice_list, rows, ops = scenario
    run = Run(invoice_list, rows)
    for op in ops:
        run.step(op)
        for cutoff in (minutes(value) for value in cutoffs):
            past = [i for i in run.engine.open_invoices() if i.expired_at < cutoff]
            expected = [
                i.invoice_id for i in sorted(past, key=lambda i: (i.expired_at, i.invoice_id))
            ]
            before = run.engine.snapshot()
            assert run.engine.due_for_expiry(cutoff) == expected
            assert run.engine.snapshot() == before  # closes nothing
