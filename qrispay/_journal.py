"""What changed in an engine since the last commit, so a store writes only that.

A poll with 100,000 open invoices that pays ten of them writes ten records,
not a snapshot: the engine notes each record it adds or changes and each key
it remembers, and the Reconciler hands the journal to its store.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["Journal"]


class Journal:
    """Invoice ids added or changed, ids forgotten, keys remembered since it was
    started (``seen`` for rows, ``rejected`` for unreadable rows)."""

    __slots__ = ("closed", "forgotten", "new", "records", "rejected", "seen")

    def __init__(self) -> None:
        self.records: set[str] = set()
        #: Of ``records``, the invoices tracked since: a store claims their totals.
        self.new: set[str] = set()
        #: Of ``records``, the invoices closed since (paid, expired, cancelled):
        #: a store writes them only if no other worker closed them first.
        self.closed: set[str] = set()
        self.forgotten: set[str] = set()
        self.seen: list[tuple[str, datetime]] = []
        self.rejected: list[tuple[str, datetime]] = []

    def __bool__(self) -> bool:
        return bool(self.records or self.forgotten or self.seen or self.rejected)

    def merge_earlier(self, earlier: Journal) -> None:
        """Take back a journal whose commit failed, as if it had never been taken."""
        self.records |= earlier.records - self.forgotten
        self.new |= earlier.new - self.forgotten
        self.closed |= earlier.closed - self.forgotten
        self.forgotten |= earlier.forgotten - self.records
        self.seen[:0] = earlier.seen
        self.rejected[:0] = earlier.rejected
