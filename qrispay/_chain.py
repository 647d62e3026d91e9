"""The balance chain: the balance carried by each row follows from the row before.

``_ingest.judge_fresh`` follows it, inline in its loop over the rows.
"""

from __future__ import annotations

from .models import Mutation

__all__ = ["BalanceChain"]


class BalanceChain:
    """The link the balances of the feed rows follow, in the order they are judged."""

    __slots__ = ("last",)

    def __init__(self, last: Mutation | None = None) -> None:
        #: The last row that carried a balance, the link the next one must follow.
        self.last = last
