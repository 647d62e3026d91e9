"""Idempotency keys of the service's creating routes.

A key is claimed in the store, with a digest of its request (method, path and
the body as canonical JSON), before anything is sent. The same key and the same
request again answers what the first one answered, and sends nothing; another
request under the same key is 422; one still in progress is 409. A definite
refusal (nothing was made) frees the key; every other answer is kept for ever.

A claim left pending by a crash would block its key for ever, so after
``stale_after`` it is claimed again, and the route decides what is safe: an
invoice that may have reached the gateway is never created twice, so the key
then answers 502 ``outcome_unknown`` for ever (use a new key; the invoice, if it
was made, expires unpaid); a withdrawal is handed to ``Payouts`` again, which
never sends twice and settles the intent from the gateway's history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import attrs

from ..store._base import Store
from ._errors import error_body

__all__ = ["STALE_AFTER", "Answer", "Keys", "digest"]

#: How long a claim may stay pending before it is taken for a crash's: longer
#: than any request may take (the gateway's timeouts, three creations, commits).
STALE_AFTER = timedelta(minutes=10)


@attrs.frozen
class Answer:
    """What a route answers. ``final``: kept for the key (False frees it:
    nothing was made). ``replayed``: read from the store, not made now."""

    status: int
    body: dict[str, Any]
    final: bool = True
    replayed: bool = False


def digest(method: str, path: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


class Keys:
    """Runs creating requests at most once per ``(scope, key)``."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        self._store = store
        self._clock = clock
        self.stale_after = stale_after

    async def run(
        self, scope: str, key: str, request_digest: str, work: Callable[[bool], Awaitable[Answer]]
    ) -> Answer:
        """``work(stale)`` once for the key (``stale``: a crashed claim's retake),
        or the answer the key holds."""
        now = self._clock()
        entry, how = await self._store.idempotency_claim(
            scope, key, request_digest, now=now, stale_before=now - self.stale_after
        )
        if how == "held":
            if entry.digest != request_digest:
                return Answer(
                    422,
                    error_body(
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for another request; nothing was done",
                    ),
                    final=False,
                )
            if entry.state == "pending" or entry.status is None or entry.body is None:
                return Answer(
                    409,
                    error_body(
                        "request_in_progress",
                        "a request with this Idempotency-Key is still in progress; ask again later",
                    ),
                    final=False,
                )
            return Answer(entry.status, json.loads(entry.body), replayed=True)
        # Anything raised here (a bug, a cancellation) leaves the claim pending:
        # after stale_after, the route's rule for a crashed claim decides.
        answer = await work(how == "stale")
        await self._store.idempotency_settle(
            scope,
            key,
            status=answer.status if answer.final else None,
            body=json.dumps(answer.body) if answer.final else None,
            now=self._clock(),
        )
        return answer
