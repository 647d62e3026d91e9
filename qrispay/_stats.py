"""The counters a running Reconciler keeps for its operator."""

from __future__ import annotations

from datetime import datetime

import attrs

__all__ = ["ReconcilerStats"]


@attrs.define
class ReconcilerStats:
    """Counters of a running Reconciler (read them; do not change them).

    ``commit_failures`` counts commits to the store that failed; their changes
    and events were kept and went with a later commit.
    """

    polls: int = 0
    failures: int = 0
    rate_limited: int = 0
    consecutive_failures: int = 0
    rows_seen: int = 0
    rows_rejected: int = 0
    events: dict[str, int] = attrs.field(factory=dict)
    last_success: datetime | None = None
    last_error: str | None = None
    gateway_checks: int = 0
    commit_failures: int = 0
