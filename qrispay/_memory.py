"""Keys remembered with a date and forgotten oldest first, never arbitrarily."""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterable
from datetime import datetime

__all__ = ["ExpiringMemory", "key_of"]


class ExpiringMemory:
    """A set of keys, each remembered with a date.

    ``keys`` is the set itself, for callers that test many keys in a loop (one
    lookup each). ``forget_before()`` drops the keys dated before a horizon,
    oldest first: what is forgotten is decided by dates alone, so a key that is
    still inside the retention window is never lost.
    """

    __slots__ = ("_newest", "_order", "added", "keys")

    def __init__(self, items: Iterable[tuple[datetime, str]] = ()) -> None:
        self._order = list(items)
        heapq.heapify(self._order)
        self.keys = {key for _, key in self._order}
        # At least every pair in the heap: pairs from here on, appended in
        # order, keep it a heap without a push each.
        self._newest = max(self._order, default=None)
        #: When a store keeps the keys: the ``(key, date)`` pairs remembered since it
        #: was last emptied.
        self.added: list[tuple[str, datetime]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def remember(self, key: str, date: datetime) -> None:
        """Remember a key not yet known, dated ``date``."""
        self.keys.add(key)
        pair = (date, key)
        heapq.heappush(self._order, pair)
        if self._newest is None or pair > self._newest:
            self._newest = pair
        if self.added is not None:
            self.added.append((key, date))

    def date_all(self, pairs: list[tuple[datetime, str]]) -> None:
        """Date keys a caller testing many keys in a loop has added to ``keys``
        itself; ``pairs`` are ``(date, key)``, best oldest first (sorted here)."""
        if not pairs:
            return
        order, newest = self._order, self._newest
        pairs.sort()  # linear when they come in date order, as rows are judged
        if newest is None or pairs[0] >= newest:
            # Each pair is at least every pair before it, so the heap stays one.
            order += pairs
        elif len(pairs) * 8 > len(order):
            order += pairs
            heapq.heapify(order)
        else:
            for pair in pairs:
                heapq.heappush(order, pair)
        if newest is None or pairs[-1] > newest:
            self._newest = pairs[-1]
        if self.added is not None:
            self.added += [(key, date) for date, key in pairs]

    def remember_new(self, key: str, date: datetime) -> bool:
        """Remember ``key`` dated ``date`` unless it is known: True if it was not."""
        if key in self.keys:
            return False
        self.remember(key, date)
        return True

    def forget_before(self, horizon: datetime) -> None:
        """Forget, oldest first, every key dated before ``horizon``."""
        order, keys = self._order, self.keys
        while order and order[0][0] < horizon:
            keys.discard(heapq.heappop(order)[1])

    def items(self) -> list[tuple[datetime, str]]:
        """``(date, key)`` pairs, oldest first (ties by key)."""
        return sorted(self._order)


def key_of(value: object) -> str:
    """A short stable key for a value that has none (its JSON form, hashed; its
    ``repr`` when it has no JSON form). Keys are kept in snapshots: never change it."""
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()
