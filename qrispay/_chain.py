"""The balance chain: the balance carried by each row follows from the row before."""

from __future__ import annotations

from .events import BalanceGap
from .models import Mutation, MutationType

__all__ = ["BalanceChain"]


class BalanceChain:
    """Follows the balances the feed rows carry, in the order they are judged."""

    __slots__ = ("last",)

    def __init__(self, last: Mutation | None = None) -> None:
        #: The last row that carried a balance, the link the next one must follow.
        self.last = last

    def follow(self, row: Mutation, history: bool) -> BalanceGap | None:
        """Chain ``row``; a ``BalanceGap`` when its balance does not follow (history
        rows are chained but never reported)."""
        if row.balance is None:
            return None
        before = self.last
        if before is not None and row.date < before.date:
            # A straggler from the past: chaining it would turn one gap into two.
            return None
        self.last = row
        if before is None or before.balance is None:
            return None
        if row.type == MutationType.CREDIT:
            expected = before.balance + row.amount
        elif row.type == MutationType.DEBIT:
            expected = before.balance - row.amount
        else:  # no sign to apply: the chain starts again from this row's balance
            return None
        if row.balance == expected or history:
            return None
        return BalanceGap(before, row, row.balance - expected)
