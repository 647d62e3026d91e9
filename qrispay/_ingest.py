"""The loop of ``ReconciliationEngine.ingest``: each fresh row judged once, in order.

It runs once per new row of every answer, so what a row costs is kept to a
few lookups: the balance chain is followed inline, a credit of a total no
invoice holds is judged here without asking the book's rules (none of them
can apply), the row keys are dated in one batch, and the commonest events are
made through their slots' setters (a frozen attrs class sets each field
through ``object.__setattr__``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ._book import InvoiceBook
from ._chain import BalanceChain
from ._memory import ExpiringMemory
from .events import BalanceGap, Event, InvoicePaid, UnknownRow, UnmatchedCredit
from .models import Invoice, Mutation, MutationType

__all__ = ["judge_fresh", "paid_by"]

_new = object.__new__
_set_unmatched = UnmatchedCredit.__dict__["mutation"].__set__
_set_paid = tuple(InvoicePaid.__dict__[name].__set__ for name in ("invoice", "mutation", "source"))
_CREDIT, _DEBIT = MutationType.CREDIT, MutationType.DEBIT


def judge_fresh(
    fresh: list[tuple[datetime, int, Mutation]],
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
    for date, _, row in fresh:
        key = row.key
        if key in keys:  # the same key earlier in this call: the first one stands
            continue
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
