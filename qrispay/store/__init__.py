"""Stores: where a Reconciler keeps what it knows, so that a restart, a crash or
a deploy loses nothing (docs/design.md, "Stores").

``MemoryStore`` keeps it in this process; ``SQLiteStore`` in one file on disk;
``PostgresStore`` in a PostgreSQL database (the ``postgres`` extra).
"""

from __future__ import annotations

from ..errors import StoreError, StoreSchemaError
from ._base import Changes, MerchantState, Store, StoredEvent
from ._memory import MemoryStore
from ._postgres import PostgresStore
from ._sqlite import SQLiteStore

__all__ = [
    "Changes",
    "MemoryStore",
    "MerchantState",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreSchemaError",
    "StoredEvent",
]
