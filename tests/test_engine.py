"""The reconciliation engine, rule by rule (docs/design.md, "Matching rules").

Pure and synchronous: every call takes ``now``, so the tests are plain functions.
"""

from __future__ import annotations

import itertools
import json
import tracemalloc
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from qrispay.engine import ReconciliationEngine
from qrispay.errors import AllocationError, TotalConflictError
from qrispay.events import (
    AmbiguousCredit,
    BalanceGap,
    DuplicatePayment,
    Event,
    InvoiceCancelled,
    InvoiceExpired,
    InvoicePaid,
    LatePayment,
    RejectedRows,
    UnknownRow,
    UnmatchedCredit,
)
from qrispay.models import (
    JAKARTA,
    Invoice,
    InvoiceStatus,
    Mutation,
    MutationBatch,
    MutationType,
    RejectedRow,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=JAKARTA)
SKEW = timedelta(minutes=2)
GRACE = timedelta(hours=1)
US = timedelta(microseconds=1)
CREDIT, DEBIT, UNKNOWN = MutationType.CREDIT, MutationType.DEBIT, MutationType.UNKNOWN

_refs = itertools.count(1)


def at(minutes: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes)


def make_engine(**kwargs: Any) -> ReconciliationEngine:
    kwargs.setdefault("started_at", at(-60))
    return ReconciliationEngine(**kwargs)


def invoice(
    invoice_id: str = "inv-1",
    total: int = 10_001,
    *,
    created: datetime | None = T0,
    expires: datetime | None = None,
    status: InvoiceStatus | str = InvoiceStatus.PENDING,
) -> Invoice:
    return Invoice(
        invoice_id=invoice_id,
        amount=10_000,
        fee=total - 10_000,
        total=total,
        status=status,
        qris_image="https://example.invalid/qr.png",
        expired_at=expires if expires is not None else at(15),
        created_at=created,
    )


def row(
    amount: int,
    when: datetime,
    *,
    kind: MutationType = CREDIT,
    balance: int | None = None,
    ref: str | None = None,
) -> Mutation:
    return Mutation(
        date=when,
        amount=amount,
        type=kind,
        qris="dynamic",
        brand_name="GOPAY",
        issuer_reff=f"R{next(_refs)}" if ref is None else ref,
        buyer_reff="buyer",
        balance=balance,
    )


def kinds(events: list[Event]) -> list[str]:
    return [type(event).__name__ for event in events]


def tracked(*invoices: Invoice, now: datetime = T0, **kwargs: Any) -> ReconciliationEngine:
    engine = make_engine(**kwargs)
    for item in invoices:
        engine.track(item, now=now)
    return engine


def roundtrip(engine: ReconciliationEngine) -> ReconciliationEngine:
    return ReconciliationEngine.restore(json.loads(json.dumps(engine.snapshot())))


# -- rule 1: deduplication ---------------------------------------------------------------


def test_rule1_duplicate_rows_are_ignored() -> None:
    engine = tracked(invoice())
    paying = row(10_001, at(3))
    assert kinds(engine.ingest([paying], now=at(4))) == ["InvoicePaid"]
    before = engine.snapshot()
    # The same row again (the feed repeats itself for a while): no second verdict.
    assert engine.ingest([paying], now=at(4)) == []
    assert engine.ingest([attrs.evolve(paying, balance=5), paying], now=at(4)) == []
    assert engine.snapshot() == before


def test_rule1_duplicates_inside_one_call_first_occurrence_wins() -> None:
    engine = tracked(invoice())
    first = row(10_001, at(3), ref="same")
    again = row(10_001, at(3), ref="same")
    events = engine.ingest([first, again, first], now=at(4))
    assert kinds(events) == ["InvoicePaid"]


def test_rule1_composite_key_when_issuer_reff_is_empty() -> None:
    engine = make_engine()
    a = row(5_000, at(1), ref="")
    same = row(5_000, at(1), ref="")
    other_buyer = attrs.evolve(row(5_000, at(1), ref=""), buyer_reff="someone else")
    events = engine.ingest([a, same, other_buyer], now=at(2))
    assert events == [UnmatchedCredit(other_buyer), UnmatchedCredit(a)]
    assert engine.ingest([same], now=at(2)) == []


def test_rule1_rows_older_than_retention_are_ignored() -> None:
    retention = timedelta(days=1)
    engine = make_engine(started_at=at(-3 * 24 * 60), retention=retention)
    now = at(0)
    too_old = row(7_000, now - retention - US)
    oldest_kept = row(7_000, now - retention)
    events = engine.ingest([too_old, oldest_kept], now=now)
    assert events == [UnmatchedCredit(oldest_kept)]
    seen = [key for key, _ in engine.snapshot()["seen"]]
    assert seen == [oldest_kept.key]  # the ignored row is not even remembered


def test_rule1_keys_are_forgotten_oldest_first_after_retention() -> None:
    retention = timedelta(days=1)
    engine = make_engine(started_at=at(-60), retention=retention)
    older, newer = row(1_000, at(0)), row(2_000, at(30))
    engine.ingest([newer, older], now=at(31))
    engine.ingest([], now=at(0) + retention + US)
    assert [key for key, _ in engine.snapshot()["seen"]] == [newer.key]
    # Forgotten, but never judged again: it is now older than the retention window.
    assert engine.ingest([older, newer], now=at(0) + retention + US) == []
    # Even when a later call passes an earlier `now` (the horizon only moves forward).
    assert engine.ingest([older], now=at(60)) == []


# -- processing order ----------------------------------------------------------------------


def test_processing_order_the_earlier_of_two_equal_payments_pays() -> None:
    engine = tracked(invoice())
    early, later = row(10_001, at(3)), row(10_001, at(4))
    events = engine.ingest([later, early], now=at(5))  # the feed lists newest first
    assert events == [
        InvoicePaid(engine.get("inv-1"), early, "mutation"),  # type: ignore[arg-type]
        DuplicatePayment(engine.get("inv-1"), later),  # type: ignore[arg-type]
    ]


def test_processing_order_equal_dates_take_the_reverse_of_feed_order() -> None:
    engine = tracked(invoice())
    newest, oldest = row(10_001, at(3)), row(10_001, at(3))
    events = engine.ingest([newest, oldest], now=at(5))
    assert [type(e) for e in events] == [InvoicePaid, DuplicatePayment]
    assert events[0].mutation == oldest  # type: ignore[union-attr]
    assert events[1].mutation == newest  # type: ignore[union-attr]


# -- rule 2: baseline ----------------------------------------------------------------------


def test_rule2_history_rows_are_remembered_and_silent() -> None:
    engine = make_engine(started_at=T0)
    history = T0 - SKEW - US
    rows = [
        row(4_000, history - timedelta(minutes=3), balance=100_000),
        row(9_999, history - timedelta(minutes=2), balance=1),  # a gap, and unmatched
        row(50, history - timedelta(minutes=1), kind=UNKNOWN, balance=7),
        row(10_001, history, kind=DEBIT, balance=0),
    ]
    assert engine.ingest(rows, now=T0) == []
    assert len(engine.snapshot()["seen"]) == 4
    # History still moves the chain: the next live row chains from the last history row.
    assert kinds(engine.ingest([row(500, at(1), balance=500)], now=at(2))) == ["UnmatchedCredit"]


def test_rule2_history_credit_still_pays_open_invoice() -> None:
    engine = make_engine(started_at=T0)
    engine.track(invoice(created=at(-30), expires=at(10)), now=T0)
    paid_while_down = row(10_001, at(-20))
    events = engine.ingest([paid_while_down], now=T0)
    assert kinds(events) == ["InvoicePaid"]
    assert events[0].mutation == paid_while_down  # type: ignore[union-attr]
    assert engine.state_of("inv-1") is InvoiceStatus.PAID


def test_rule2_history_ends_at_started_at_minus_skew() -> None:
    engine = make_engine(started_at=T0)
    edge = row(3_000, T0 - SKEW)
    assert engine.ingest([row(3_000, T0 - SKEW - US), edge], now=T0) == [UnmatchedCredit(edge)]


def test_rule2_history_gap_is_not_reported_but_live_gap_is() -> None:
    engine = make_engine(started_at=T0)
    engine.ingest([row(100, at(-10), balance=1_000)], now=T0)
    engine.ingest([row(100, at(-9), balance=5_000)], now=T0)  # history: silent
    live = row(100, at(1), kind=DEBIT, balance=1)
    events = engine.ingest([live], now=at(2))
    assert kinds(events) == ["BalanceGap"]


def test_rule2_restore_keeps_started_at() -> None:
    engine = make_engine(started_at=T0)
    restored = roundtrip(engine)
    assert restored.started_at == T0
    assert restored.ingest([row(3_000, T0 - SKEW - US)], now=at(600)) == []


# -- rule 3: credits only ------------------------------------------------------------------


def test_rule3_debits_are_never_matched() -> None:
    engine = tracked(invoice())
    assert engine.ingest([row(10_001, at(2), kind=DEBIT)], now=at(3)) == []
    assert engine.state_of("inv-1") is InvoiceStatus.PENDING


def test_rule3_unknown_type_is_reported_and_never_matched() -> None:
    engine = tracked(invoice())
    odd = row(10_001, at(2), kind=UNKNOWN)
    assert engine.ingest([odd], now=at(3)) == [UnknownRow(odd)]
    assert engine.state_of("inv-1") is InvoiceStatus.PENDING


# -- rule 4: paying an open invoice --------------------------------------------------------


def test_rule4_credit_inside_window_pays_open_invoice() -> None:
    original = invoice()
    engine = tracked(original)
    paying, other = row(10_001, at(5)), row(10_002, at(5))
    events = engine.ingest([other, paying], now=at(6))
    paid = attrs.evolve(original, status=InvoiceStatus.PAID)
    assert events == [InvoicePaid(paid, paying, "mutation"), UnmatchedCredit(other)]
    assert engine.state_of("inv-1") is InvoiceStatus.PAID
    assert engine.get("inv-1") == paid
    assert engine.open_invoices() == []


@pytest.mark.parametrize(
    ("when", "pays"),
    [
        (T0 - SKEW, True),
        (T0 - SKEW - US, False),
        (at(15) + SKEW, True),
        (at(15) + SKEW + US, False),
    ],
)
def test_rule4_window_boundaries_are_inclusive(when: datetime, pays: bool) -> None:
    engine = tracked(invoice())
    events = engine.ingest([row(10_001, when)], now=at(30))
    if pays:
        assert kinds(events) == ["InvoicePaid"]
    elif when < T0:
        assert kinds(events) == ["UnmatchedCredit"]
    else:
        # After the window, while the invoice is still open: late, once it closes.
        assert events == []
        assert kinds(engine.expire(now=at(30))) == ["InvoiceExpired", "LatePayment"]


def test_rule5_a_credit_after_the_window_of_an_open_invoice_waits_for_it_to_close() -> None:
    late = row(10_001, at(15) + SKEW + timedelta(seconds=30))
    for close, expected in [
        (lambda e: e.expire(now=at(20)), ["InvoiceExpired", "LatePayment"]),
        (lambda e: e.cancel("inv-1", now=at(20)), ["InvoiceCancelled", "LatePayment"]),
    ]:
        engine = tracked(invoice())
        assert engine.ingest([late], now=at(20)) == []
        assert engine.state_of("inv-1") is InvoiceStatus.PENDING
        # Survives a snapshot while it waits.
        engine = ReconciliationEngine.restore(json.loads(json.dumps(engine.snapshot())))
        events = close(engine)
        assert kinds(events) == expected
        assert events[1].mutation == late
        assert engine.ingest([late], now=at(21)) == []


def test_rule5_a_credit_past_the_late_grace_of_an_open_invoice_is_unmatched_at_once() -> None:
    engine = tracked(invoice())
    very_late = row(10_001, at(15) + GRACE + timedelta(minutes=1))
    assert kinds(engine.ingest([very_late], now=at(90))) == ["UnmatchedCredit"]
    assert kinds(engine.expire(now=at(90))) == ["InvoiceExpired"]


@pytest.mark.parametrize("row_first", [True, False])
def test_rule8_a_report_pairs_with_its_payment_dated_after_the_window(row_first: bool) -> None:
    # The gateway took a payment a little after the window and reported it: one
    # payment, so no DuplicatePayment inviting a refund of the only money.
    engine = tracked(invoice())
    payment = row(10_001, at(15) + SKEW + timedelta(seconds=30))
    if row_first:
        assert engine.ingest([payment], now=at(18)) == []
        assert kinds(engine.mark_paid("inv-1", now=at(18))) == ["InvoicePaid"]
    else:
        assert kinds(engine.mark_paid("inv-1", now=at(18))) == ["InvoicePaid"]
        assert engine.ingest([payment], now=at(19)) == []
    second = row(10_001, at(19))
    assert kinds(engine.ingest([second], now=at(20))) == ["DuplicatePayment"]


def test_rule6_an_owed_report_keeps_its_total_until_no_new_window_can_reach_it() -> None:
    # A long-lived invoice reported paid early: its pairing range runs to its
    # expiry, so its total must not go to a new invoice before then, or the new
    # customer's second payment would be swallowed by the old report.
    engine = make_engine(late_grace=timedelta(minutes=5))
    engine.track(invoice(expires=at(24 * 60)), now=T0)
    engine.mark_paid("inv-1", now=at(2))
    assert engine.unique_total(10_000, now=at(10)) == 10_002
    with pytest.raises(TotalConflictError):
        engine.track(invoice("inv-2", expires=at(30), created=at(10)), now=at(10))
    later = at(24 * 60) + 2 * SKEW + US
    assert engine.unique_total(10_000, now=later) == 10_001


def test_rule4_window_starts_at_tracking_time_when_created_at_is_unknown() -> None:
    engine = make_engine()
    engine.track(invoice(created=None), now=at(5))
    assert kinds(engine.ingest([row(10_001, at(3) - US)], now=at(6))) == ["UnmatchedCredit"]
    assert kinds(engine.ingest([row(10_001, at(3))], now=at(6))) == ["InvoicePaid"]


def test_rule4_other_zones_compare_by_instant() -> None:
    engine = tracked(invoice())
    utc_row = row(10_001, at(5).astimezone(timezone.utc))
    assert kinds(engine.ingest([utc_row], now=at(6).astimezone(timezone.utc))) == ["InvoicePaid"]


# -- rule 5: late, duplicate, unmatched ----------------------------------------------------


def test_rule5_credit_after_expiry_is_late_payment() -> None:
    engine = tracked(invoice())
    [expired] = engine.expire(now=at(16))
    late = row(10_001, at(30))
    assert engine.ingest([late], now=at(31)) == [LatePayment(expired.invoice, late)]  # type: ignore[union-attr]


def test_rule5_credit_after_cancel_is_late_payment() -> None:
    engine = tracked(invoice())
    [cancelled] = engine.cancel("inv-1", now=at(3))
    late = row(10_001, at(4))
    assert engine.ingest([late], now=at(5)) == [LatePayment(cancelled.invoice, late)]  # type: ignore[union-attr]


def test_rule5_second_credit_is_duplicate_payment() -> None:
    engine = tracked(invoice())
    engine.ingest([row(10_001, at(3))], now=at(4))
    second = row(10_001, at(20))
    assert engine.ingest([second], now=at(21)) == [DuplicatePayment(engine.get("inv-1"), second)]  # type: ignore[arg-type]


@pytest.mark.parametrize(("offset", "verdict"), [(0, "LatePayment"), (1, "UnmatchedCredit")])
def test_rule5_late_grace_boundary(offset: int, verdict: str) -> None:
    engine = tracked(invoice())
    engine.expire(now=at(16))  # closes at expired_at, 10:15
    when = at(15) + GRACE + offset * US
    assert kinds(engine.ingest([row(10_001, when)], now=when)) == [verdict]


def test_rule5_late_range_starts_at_created_at_minus_skew() -> None:
    engine = tracked(invoice())
    engine.cancel("inv-1", now=at(1))
    events = engine.ingest([row(10_001, T0 - SKEW - US), row(10_001, T0 - SKEW)], now=at(2))
    assert kinds(events) == ["UnmatchedCredit", "LatePayment"]


def test_rule5_most_recently_closed_invoice_wins() -> None:
    engine = tracked(invoice("a"))
    engine.expire(now=at(16))  # a closes at 10:15; its total is held until 11:17
    b = invoice("b", created=at(30), expires=at(80))
    engine.track(b, now=at(78))
    engine.expire(now=at(81))  # b closes at 11:20
    credit = row(10_001, at(40))  # fits a (10:15 + 1h) and b (from 10:28)
    [event] = engine.ingest([credit], now=at(82))
    assert isinstance(event, LatePayment)
    assert event.invoice.invoice_id == "b"


def test_rule5_out_of_window_credit_of_open_invoice_is_unmatched() -> None:
    engine = tracked(invoice(created=at(60), expires=at(75)))
    early = row(10_001, at(10))
    assert engine.ingest([early], now=at(61)) == [UnmatchedCredit(early)]
    assert engine.state_of("inv-1") is InvoiceStatus.PENDING


# -- rule 6: unique totals -----------------------------------------------------------------


def test_rule6_tracking_a_taken_total_raises() -> None:
    engine = tracked(invoice("a"))
    with pytest.raises(TotalConflictError) as info:
        engine.track(invoice("b"), now=at(1))
    assert (info.value.total, info.value.invoice_id) == (10_001, "a")
    assert engine.get("b") is None


@pytest.mark.parametrize(("offset", "free"), [(0, False), (1, True)])
def test_rule6_closed_total_reserved_until_late_grace_plus_skew(offset: int, free: bool) -> None:
    engine = tracked(invoice("a"))
    engine.cancel("a", now=at(5))
    now = at(5) + GRACE + SKEW + offset * US
    assert (engine.unique_total(10_000, now=now) == 10_001) is free
    if free:
        engine.track(invoice("b", created=now, expires=now + timedelta(minutes=15)), now=now)
        assert engine.state_of("b") is InvoiceStatus.PENDING
    else:
        with pytest.raises(TotalConflictError) as info:
            engine.track(invoice("b", created=now), now=now)
        assert info.value.invoice_id == "a"


def test_rule6_tracking_the_same_id_again_changes_nothing() -> None:
    engine = tracked(invoice("a"))
    before = engine.snapshot()
    engine.track(invoice("a", total=55_555), now=at(1))  # no error, even though it differs
    engine.track(invoice("a"), now=at(1))
    assert engine.snapshot() == before


def test_rule6_unique_total_gives_the_smallest_free_code_and_reserves_nothing() -> None:
    engine = tracked(invoice("a", 10_001), invoice("b", 10_003))
    engine.cancel("b", now=at(1))  # 10_003 stays reserved
    assert engine.unique_total(10_000, now=at(2)) == 10_002
    assert engine.unique_total(10_000, now=at(2)) == 10_002  # nothing was reserved
    engine.track(invoice("c", 10_002), now=at(2))
    assert engine.unique_total(10_000, now=at(2)) == 10_004
    with pytest.raises(AllocationError):
        engine.unique_total(10_000, now=at(2), max_code=3)


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "10000", None])
def test_rule6_unique_total_validates_amount(amount: Any) -> None:
    with pytest.raises(ValueError, match="amount"):
        make_engine().unique_total(amount, now=T0)


def test_rule6_ambiguous_credit_only_from_inconsistent_state() -> None:
    engine = tracked(invoice("a", 10_001), invoice("b", 10_002))
    snapshot = json.loads(json.dumps(engine.snapshot()))
    snapshot["invoices"][1]["invoice"]["total"] = 10_001  # edited by hand
    broken = ReconciliationEngine.restore(snapshot)
    credit = row(10_001, at(3))
    [event] = broken.ingest([credit], now=at(4))
    assert isinstance(event, AmbiguousCredit)
    assert event.mutation == credit
    assert [i.invoice_id for i in event.candidates] == ["a", "b"]
    assert broken.state_of("a") is broken.state_of("b") is InvoiceStatus.PENDING


# -- rule 7: balance chain -----------------------------------------------------------------


def test_rule7_a_chaining_feed_reports_nothing() -> None:
    engine = make_engine()
    rows = [
        row(500, at(3), balance=1_300),
        row(200, at(2), kind=DEBIT, balance=800),
        row(1_000, at(1), balance=1_000),
    ]
    assert engine.ingest(rows, now=at(4)) == [UnmatchedCredit(rows[2]), UnmatchedCredit(rows[0])]


def test_rule7_missing_debit_gives_negative_gap() -> None:
    engine = make_engine()
    first = row(100, at(1), kind=DEBIT, balance=10_000)
    after = row(500, at(3), balance=10_000)  # a debit of 500 at 10:02 fell off the feed
    events = engine.ingest([after, first], now=at(4))
    assert events[0] == BalanceGap(first, after, -500)


def test_rule7_missing_credit_gives_positive_gap() -> None:
    engine = make_engine()
    first = row(100, at(1), kind=DEBIT, balance=10_000)
    after = row(100, at(3), kind=DEBIT, balance=12_900)
    assert engine.ingest([first, after], now=at(4)) == [BalanceGap(first, after, 3_000)]


def test_rule7_chain_carries_across_calls() -> None:
    engine = make_engine()
    assert engine.ingest([row(100, at(1), kind=DEBIT, balance=10_000)], now=at(2)) == []
    middle = row(100, at(3), kind=DEBIT, balance=9_900)
    assert engine.ingest([middle], now=at(4)) == []
    after = row(100, at(5), kind=DEBIT, balance=9_000)
    assert engine.ingest([after], now=at(6)) == [BalanceGap(middle, after, -800)]
    # And across a snapshot too.
    restored = roundtrip(engine)
    last = row(1_000, at(7), balance=10_000)
    assert kinds(restored.ingest([last], now=at(8))) == ["UnmatchedCredit"]


def test_rule7_unknown_row_restarts_the_chain() -> None:
    engine = make_engine()
    engine.ingest([row(100, at(1), kind=DEBIT, balance=10_000)], now=at(2))
    odd = row(7, at(2), kind=UNKNOWN, balance=50_000)
    assert engine.ingest([odd], now=at(3)) == [UnknownRow(odd)]  # no gap checked on it
    assert engine.ingest([row(100, at(3), kind=DEBIT, balance=49_900)], now=at(4)) == []


def test_rule7_rows_without_balance_are_skipped() -> None:
    engine = make_engine()
    engine.ingest([row(100, at(1), kind=DEBIT, balance=10_000)], now=at(2))
    engine.ingest([row(100, at(2), kind=DEBIT, balance=None)], now=at(3))
    assert engine.ingest([row(100, at(3), kind=DEBIT, balance=9_900)], now=at(4)) == []


def test_rule7_a_row_dated_before_the_chain_is_not_chained_and_gap_never_retracted() -> None:
    engine = make_engine()
    first = row(100, at(1), kind=DEBIT, balance=10_000)
    after = row(100, at(5), kind=DEBIT, balance=9_400)
    assert kinds(engine.ingest([after, first], now=at(6))) == ["BalanceGap"]
    # The missing rows show up late: not chained (no new gap), and nothing retracted.
    stragglers = [row(200, at(3), kind=DEBIT, balance=9_700), row(300, at(2), kind=DEBIT)]
    assert engine.ingest(stragglers, now=at(7)) == []
    assert engine.ingest([row(100, at(6), kind=DEBIT, balance=9_300)], now=at(8)) == []


def test_rule7_equal_dates_chain_in_reverse_feed_order() -> None:
    engine = make_engine()
    older = row(100, at(1), kind=DEBIT, balance=900)
    newer = row(100, at(1), kind=DEBIT, balance=800)
    assert engine.ingest([newer, older], now=at(2)) == []


# -- rule 8: expiry and the gateway --------------------------------------------------------


def test_rule8_expire_closes_invoices_past_expired_at() -> None:
    original = invoice()
    engine = tracked(original)
    assert engine.expire(now=at(15)) == []  # not past yet: now == expired_at
    events = engine.expire(now=at(15) + US)
    assert events == [InvoiceExpired(attrs.evolve(original, status=InvoiceStatus.EXPIRED))]
    assert engine.state_of("inv-1") is InvoiceStatus.EXPIRED
    assert engine.expire(now=at(99)) == []


def test_rule8_expire_in_expiry_order_and_only_given_ids() -> None:
    engine = tracked(
        invoice("late", 10_001, expires=at(20)),
        invoice("early", 10_002, expires=at(10)),
        invoice("kept", 10_003, expires=at(5)),
    )
    events = engine.expire(now=at(30), invoice_ids=["late", "early", "unknown", "late"])
    assert [e.invoice.invoice_id for e in events] == ["early", "late"]  # type: ignore[union-attr]
    assert engine.state_of("kept") is InvoiceStatus.PENDING
    assert engine.expire(now=at(30), invoice_ids=["early"]) == []
    assert [e.invoice.invoice_id for e in engine.expire(now=at(30))] == ["kept"]  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        engine.expire(now=at(30), invoice_ids="kept")


def test_rule8_mark_paid_pairs_first_credit_silently_then_duplicate() -> None:
    original = invoice()
    engine = tracked(original)
    events = engine.mark_paid("inv-1", now=at(6))
    paid = attrs.evolve(original, status=InvoiceStatus.PAID)
    assert events == [InvoicePaid(paid, None, "gateway")]
    assert engine.state_of("inv-1") is InvoiceStatus.PAID
    assert engine.ingest([row(10_001, at(5))], now=at(7)) == []  # the same payment
    second = row(10_001, at(8))
    assert engine.ingest([second], now=at(9)) == [DuplicatePayment(paid, second)]


def test_rule8_pairing_waits_however_late_the_row_arrives() -> None:
    engine = tracked(invoice(expires=at(60 * 24)))
    engine.mark_paid("inv-1", now=at(5), source="webhook")
    assert engine.ingest([row(10_001, at(4))], now=at(60 * 20)) == []


def test_rule8_mark_paid_source_and_cancel_events() -> None:
    original = invoice()
    engine = tracked(original, invoice("b", 10_002))
    [paid] = engine.mark_paid("inv-1", now=at(1), source="webhook")
    assert paid == InvoicePaid(attrs.evolve(original, status=InvoiceStatus.PAID), None, "webhook")
    [cancelled] = engine.cancel("b", now=at(1))
    assert isinstance(cancelled, InvoiceCancelled)
    assert cancelled.invoice.status is InvoiceStatus.EXPIRED
    assert engine.state_of("b") is InvoiceStatus.EXPIRED


def test_rule8_mark_paid_and_cancel_on_closed_invoice_change_nothing() -> None:
    engine = tracked(invoice("a", 10_001), invoice("b", 10_002))
    engine.ingest([row(10_001, at(1))], now=at(2))
    engine.cancel("b", now=at(2))
    before = engine.snapshot()
    for invoice_id in ("a", "b"):
        assert engine.mark_paid(invoice_id, now=at(3)) == []
        assert engine.cancel(invoice_id, now=at(3)) == []
    assert engine.snapshot() == before
    assert engine.state_of("a") is InvoiceStatus.PAID
    assert engine.state_of("b") is InvoiceStatus.EXPIRED


def test_rule8_unknown_id_raises_key_error() -> None:
    engine = make_engine()
    with pytest.raises(KeyError):
        engine.mark_paid("nope", now=T0)
    with pytest.raises(KeyError):
        engine.cancel("nope", now=T0)
    assert engine.state_of("nope") is None
    assert engine.get("nope") is None


def test_track_of_a_paid_invoice_closes_it_like_mark_paid_without_event() -> None:
    engine = tracked(invoice(status=InvoiceStatus.PAID))
    assert engine.state_of("inv-1") is InvoiceStatus.PAID
    assert engine.open_invoices() == []
    assert engine.ingest([row(10_001, at(3))], now=at(4)) == []  # its payment, paired
    assert kinds(engine.ingest([row(10_001, at(4))], now=at(5))) == ["DuplicatePayment"]


def test_track_of_an_expired_invoice_closes_it_at_the_earlier_of_expiry_and_now() -> None:
    engine = tracked(invoice("a", 10_001, status="EXPIRED"), now=at(5))  # closed at 10:05
    assert engine.state_of("a") is InvoiceStatus.EXPIRED
    assert engine.unique_total(10_000, now=at(5) + GRACE + SKEW + US) == 10_001
    late = at(5) + GRACE
    assert kinds(engine.ingest([row(10_001, late), row(10_001, late + US)], now=late)) == [
        "LatePayment",
        "UnmatchedCredit",
    ]


def test_track_of_an_unknown_status_keeps_the_invoice_open() -> None:
    engine = tracked(invoice(status="on_hold"))
    assert engine.state_of("inv-1") is InvoiceStatus.PENDING
    assert kinds(engine.ingest([row(10_001, at(2))], now=at(3))) == ["InvoicePaid"]


# -- time zones ----------------------------------------------------------------------------

NAIVE = datetime(2024, 5, 1, 10, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda e: ReconciliationEngine(started_at=NAIVE),
        lambda e: e.track(invoice(), now=NAIVE),
        lambda e: e.track(invoice(expires=NAIVE), now=T0),
        lambda e: e.track(invoice(created=NAIVE), now=T0),
        lambda e: e.ingest([], now=NAIVE),
        lambda e: e.ingest([row(1, NAIVE)], now=T0),
        lambda e: e.expire(now=NAIVE),
        lambda e: e.mark_paid("x", now=NAIVE),
        lambda e: e.cancel("x", now=NAIVE),
        lambda e: e.unique_total(10_000, now=NAIVE),
        lambda e: e.has_work(now=NAIVE),
    ],
)
def test_naive_datetimes_are_refused(call: Any) -> None:
    engine = make_engine()
    before = engine.snapshot()
    with pytest.raises(ValueError, match="naive"):
        call(engine)
    assert engine.snapshot() == before


# -- additions for the I/O loop ------------------------------------------------------------


def test_has_work_while_open_or_within_late_grace() -> None:
    engine = make_engine()
    assert not engine.has_work(now=T0)
    engine.track(invoice(), now=T0)
    assert engine.has_work(now=at(600))
    engine.cancel("inv-1", now=at(5))
    assert engine.has_work(now=at(5) + GRACE)
    assert not engine.has_work(now=at(5) + GRACE + US)


def test_settings_are_readable() -> None:
    engine = ReconciliationEngine(
        started_at=T0, skew=timedelta(seconds=30), late_grace=GRACE, retention=timedelta(days=2)
    )
    assert (engine.started_at, engine.skew, engine.late_grace, engine.retention) == (
        T0,
        timedelta(seconds=30),
        GRACE,
        timedelta(days=2),
    )
    with pytest.raises(ValueError, match="negative"):
        ReconciliationEngine(started_at=T0, skew=-US)
    with pytest.raises(ValueError, match="retention"):
        ReconciliationEngine(started_at=T0, retention=timedelta(0))


def test_rejected_rows_are_reported_once() -> None:
    engine = make_engine()
    bad = RejectedRow(raw={"date": 5, "amount": "x"}, reason="date: not a string")
    good = row(1_000, at(1))
    batch = MutationBatch(rows=(good,), rejected=(bad,))
    assert engine.ingest(batch, now=at(2)) == [RejectedRows((bad,)), UnmatchedCredit(good)]
    assert engine.ingest(batch, now=at(3)) == []


def test_rejected_rows_can_be_passed_explicitly() -> None:
    engine = make_engine()
    bad = RejectedRow(raw={"amount": "x"}, reason="amount: not a number")
    other = RejectedRow(raw={"amount": "y"}, reason="amount: not a number")
    good = row(1_000, at(1))
    assert engine.ingest([good], now=at(2), rejected=[bad]) == [
        RejectedRows((bad,)),
        UnmatchedCredit(good),
    ]
    # Reported once, whichever way it came.
    batch = MutationBatch(rows=(), rejected=(bad, other))
    assert engine.ingest(batch, now=at(3)) == [RejectedRows((other,))]
    # An explicit argument wins over the batch's own rows.
    third = RejectedRow(raw={"amount": "z"}, reason="amount: not a number")
    batch = MutationBatch(rows=(), rejected=(third,))
    assert engine.ingest(batch, now=at(4), rejected=()) == []
    assert engine.ingest(batch, now=at(4), rejected=None) == []
    assert engine.ingest(batch, now=at(5)) == [RejectedRows((third,))]


def test_due_for_expiry_lists_without_closing() -> None:
    engine = tracked(
        invoice("late", 10_001, expires=at(20)),
        invoice("early", 10_002, expires=at(10)),
        invoice("paid", 10_003, expires=at(5)),
        invoice("later", 10_004, expires=at(30)),
        invoice("tie-b", 10_005, expires=at(10)),
    )
    engine.mark_paid("paid", now=at(1))
    assert engine.due_for_expiry(at(10)) == []  # expired_at < cutoff, strictly
    assert engine.due_for_expiry(at(20) + US) == ["early", "tie-b", "late"]
    assert engine.state_of("early") is InvoiceStatus.PENDING
    due = engine.due_for_expiry(at(25))
    assert kinds(engine.expire(now=at(25), invoice_ids=due)) == ["InvoiceExpired"] * 3
    assert engine.due_for_expiry(at(25)) == []
    assert engine.due_for_expiry(at(31)) == ["later"]
    with pytest.raises(ValueError, match="naive"):
        engine.due_for_expiry(datetime(2024, 5, 1))


def test_due_for_expiry_skips_invoices_closed_otherwise() -> None:
    invoices = [invoice(f"inv-{i:03d}", 20_000 + i, expires=at(10 + i % 7)) for i in range(300)]
    engine = tracked(*invoices)
    for item in invoices[::3]:  # enough closes to rebuild the expiry heap
        engine.cancel(item.invoice_id, now=at(1))
    open_ids = {item.invoice_id for item in engine.open_invoices()}
    expected = sorted(
        (item for item in invoices if item.invoice_id in open_ids and item.expired_at < at(14)),
        key=lambda item: (item.expired_at, item.invoice_id),
    )
    assert engine.due_for_expiry(at(14)) == [item.invoice_id for item in expected]


def test_snapshot_is_json_and_restores_identically() -> None:
    engine = tracked(invoice("a", 10_001), invoice("b", 10_002), invoice("c", 10_003))
    engine.mark_paid("a", now=at(1))
    engine.ingest([row(10_002, at(2), balance=100)], now=at(3))
    snapshot = engine.snapshot()
    assert snapshot["version"] == 1
    restored = roundtrip(engine)
    assert restored.snapshot() == json.loads(json.dumps(snapshot))
    assert restored.open_invoices() == engine.open_invoices()
    later = [row(10_001, at(4), balance=10_101), row(10_003, at(5)), row(10_002, at(6))]
    assert restored.ingest(later, now=at(7)) == engine.ingest(later, now=at(7))
    assert restored.expire(now=at(20)) == engine.expire(now=at(20))


@pytest.mark.parametrize("version", [None, 0, 2, "1", True])
def test_restore_refuses_other_versions(version: Any) -> None:
    snapshot = make_engine().snapshot()
    snapshot["version"] = version
    with pytest.raises(ValueError, match="version"):
        ReconciliationEngine.restore(snapshot)


def test_restore_refuses_a_damaged_snapshot() -> None:
    snapshot = make_engine().snapshot()
    del snapshot["seen"]
    with pytest.raises(ValueError, match="damaged"):
        ReconciliationEngine.restore(snapshot)


def test_closed_invoices_are_forgotten_after_retention() -> None:
    engine = tracked(invoice(), retention=timedelta(days=1))
    engine.ingest([row(10_001, at(1))], now=at(2))
    last_reach = at(1) + GRACE + SKEW  # a duplicate dated up to closed_at + late_grace
    engine.ingest([], now=last_reach + timedelta(days=1))
    assert engine.get("inv-1") is not None
    engine.ingest([], now=last_reach + timedelta(days=1) + US)
    assert engine.get("inv-1") is None
    assert engine.snapshot()["invoices"] == []


def test_memory_per_open_invoice_is_small() -> None:
    count = 2_000
    invoices = [invoice(f"inv-{i:06d}", 20_000 + i) for i in range(count)]
    engine = make_engine()
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        for item in invoices:
            engine.track(item, now=T0)
        end = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
    # The engine's own bookkeeping, on top of the Invoice objects the caller holds.
    assert grown / count <= 1024, grown / count
