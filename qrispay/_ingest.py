"""The loop of ``ReconciliationEngine.ingest``: each fresh row judged once, in order.

It runs once per new row of every answer, so what a row costs is kept to a
few lookups: the balance chain is followed inline, a credit of a total no
invoice holds is judged here without asking the book's rules (none of them
can apply), the row keys are dated in one batch, and the commonest events are
made through their slots' setters (a frozen attrs class sets each field
through ``object.__setattr__``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from ._book import InvoiceBook
from ._chain import BalanceChain
from ._memory import ExpiringMemory
from .events import BalanceGap, Event, InvoicePaid, UnknownRow, UnmatchedCredit
from .models import JAKARTA, Invoice, Mutation, MutationType

__all__ = ["judge_fresh", "paid_by", "unseen"]

_new = object.__new__
_set_unmatched = UnmatchedCredit.__dict__["mutation"].__set__
_set_paid = tuple(InvoicePaid.__dict__[name].__set__ for name in ("invoice", "mutation", "source"))
_CREDIT, _DEBIT = MutationType.CREDIT, MutationType.DEBIT


def unseen(rows: Iterable[Mutation], keys: set[str], horizon: datetime) -> list[Mutation]:
    """The rows whose key is not in ``keys``, dated at or after ``horizon`` (in
    the rows' zone), oldest first: rows of equal dates in the reverse of the
    order given, since the feed lists newest first."""
    fresh: list[Mutation] = []
    keep = fresh.append
    descending, previous = True, None
    for row in rows:
        if row.key in keys:
            continue
        date = row.date
        zone = date.tzinfo
        if zone is not JAKARTA and (zone is None or date.utcoffset() is None):
            raise ValueError(f"row {row.key!r} has a naive date; feed dates must be timezone-aware")
        if date >= horizon:
            if descending and previous is not None and not date < previous:
                descending = False
            previous = date
            keep(row)
    if descending:  # as the feed sends them: no two dates equal, nothing to sort
        fresh.reverse()
        return fresh
    # (date, -position) is unique, so the tuples sort without a key function
    # and never compare the rows themselves.
    order = sorted([(row.date, -position, row) for position, row in enumerate(fresh)])
    return [row for _, _, row in order]


def judge_fresh(
    fresh: list[Mutation],
    events: list[Event],
    *,
    seen: ExpiringMemory,
    chain: BalanceChain,
    book: InvoiceBook,
    history_before: datetime,
    judge: Callable[[Mutation, bool], list[Event]],
) -> None:
    """Judge ``fresh`` (rows not seen before, oldest first) into ``events``.

    ``history_before`` is in the rows' zone; ``judge`` gives the verdict on a
    credit of a total some invoice, open or closed, holds.
    """
    keys = seen.keys
    add = keys.add
    dated: list[tuple[datetime, str]] = []
    date_key = dated.append
    emit = events.append
    open_by_total, closed_by_total = book.open_by_total, book.closed_by_total
    last = chain.last
    # Whatever happens, what was judged stays judged, as if row by row.
    try:
        for row in fresh:
            key = row.key
            if key in keys:  # the same key earlier in this call: the first one stands
                continue
            date = row.date
            add(key)
            date_key((date, key))
            history = date < history_before
            kind = row.type
            balance = row.balance
            # The balance chain: each row's balance follows from the last one's. A
            # straggler from the past is not chained (that would turn one gap into two).
            if balance is not None and (last is None or date >= last.date):
                before, last = last, row
                if before is not None and before.balance is not None and not history:
                    if kind == _CREDIT:
                        missing = balance - (before.balance + row.amount)
                    elif kind == _DEBIT:
                        missing = balance - (before.balance - row.amount)
                    else:  # no sign to apply: the chain starts again from this balance
                        missing = 0
                    if missing:
                        emit(BalanceGap(before, row, missing))
            if kind == _CREDIT:
                amount = row.amount
                if amount in open_by_total or amount in closed_by_total:
                    events += judge(row, history)
                elif not history:
                    # No invoice, open or closed, has this total: rules 4, 5 and 8
                    # all come to this one verdict.
                    unmatched = _new(UnmatchedCredit)
                    _set_unmatched(unmatched, row)
                    emit(unmatched)
            elif kind != _DEBIT and not history:
                emit(UnknownRow(row))
    finally:
        chain.last = last
        seen.date_all(dated)


def paid_by(invoice: Invoice, row: Mutation) -> InvoicePaid:
    """``InvoicePaid(invoice, row, "mutation")``, made through its slots."""
    paid: InvoicePaid = _new(InvoicePaid)
    set_invoice, set_mutation, set_source = _set_paid
    set_invoice(paid, invoice)
    set_mutation(paid, row)
    set_source(paid, "mutation")
    return paid
