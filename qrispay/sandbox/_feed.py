"""The check-payment feed's state and rules: the mutation rows and the merchant
balance they chain, the credentials and quota, and the cached answer reused
until its TTL has passed, without HTTP."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ._errors import HIT_LIMIT, INVALID_FEED_AUTH, MISSING_FEED_PARAMS, feed_error
from ._faults import FaultInjector
from ._shared import Shared
from ._values import is_int, wib

__all__ = ["FeedState"]


@attrs.define
class _Row:
    data: dict[str, Any]
    hidden: bool


@attrs.define
class _Cache:
    built_at: datetime
    body: bytes


class FeedState:
    """The feed's data and rules. See ``qrispay.sandbox.Sandbox``."""

    def __init__(self, shared: Shared, injector: FaultInjector) -> None:
        settings = shared.settings
        self._shared = shared
        self._injector = injector
        self._lock = shared.lock
        self._auth = settings.auth
        self._merchant = settings.merchant
        self._token = settings.token
        self._quota_limit = settings.quota
        self._quota_period = settings.quota_period
        self._ttl = settings.ttl
        self._window = settings.window
        self._creator = settings.creator
        self._balance = settings.merchant_balance
        self._rows: list[_Row] = []
        self._reffs: set[str] = set()
        self._caches: dict[str, _Cache] = {}
        self._quota: dict[str, tuple[datetime, int]] = {}

    # -- rows ----------------------------------------------------------------

    @property
    def merchant_balance(self) -> int:
        with self._lock:
            return self._balance

    def credit(
        self, now: datetime, total: int, qris: str, brand: str, buyer_reff: str, hidden: bool | None
    ) -> dict[str, Any]:
        """A credit row of ``total`` at ``now`` (call under the lock)."""
        self._balance += total
        return self._append(now, total, "CR", qris, brand, buyer_reff, hidden)

    def debit(
        self, amount: int, brand: str, buyer_reff: str, hidden: bool | None
    ) -> dict[str, Any]:
        """A debit row of ``amount`` now (see ``Sandbox.debit``)."""
        if not is_int(amount) or amount < 1:
            raise ValueError(f"a debit is a positive int, not {amount!r}")
        with self._lock:
            if amount > self._balance:
                raise ValueError(
                    f"a debit of {amount} exceeds the merchant balance {self._balance}"
                )
            self._balance -= amount
            now = self._shared.now()
            return self._append(now, amount, "DB", "static", brand, buyer_reff, hidden)

    def _issuer_reff(self) -> str:
        ids = self._shared.ids
        while True:
            digits = self._shared.reff_digits
            candidate = f"id{ids.randrange(10 ** (digits - 1), 10**digits)}"
            if candidate not in self._reffs:
                return candidate

    def _append(
        self,
        now: datetime,
        amount: int,
        type_: str,
        qris: str,
        brand: str,
        buyer_reff: str,
        hidden: bool | None,
    ) -> dict[str, Any]:
        reff = self._issuer_reff()
        self._reffs.add(reff)
        row = {
            "date": wib(now),
            "amount": amount,
            "type": type_,
            "qris": qris,
            "brand_name": brand,
            "issuer_reff": reff,
            "buyer_reff": buyer_reff,
            "balance": self._balance,
        }
        self._rows.append(_Row(row, self._injector.drops(hidden)))
        return dict(row)

    def add_row(self, row: Mapping[str, Any], *, hidden: bool = False) -> dict[str, Any]:
        """Append ``row`` to the feed exactly as given (quirks and all). It does not
        touch the merchant balance or pay any invoice."""
        if not isinstance(row, Mapping):
            raise TypeError("a row is a mapping")
        data = dict(row)
        json.dumps(data)  # it must be JSON, or the feed could not serve it
        with self._lock:
            reff = data.get("issuer_reff")
            if isinstance(reff, str):
                self._reffs.add(reff)
            self._rows.append(_Row(data, hidden))
            return dict(data)

    def rows(self, *, include_hidden: bool = True) -> list[dict[str, Any]]:
        """Every row so far, newest first (copies)."""
        with self._lock:
            return [dict(r.data) for r in reversed(self._rows) if include_hidden or not r.hidden]

    # -- requests ------------------------------------------------------------

    def authorize(self, auth: str | None, merchant: str | None, token: str | None) -> None:
        """Check the parameters, the credentials and the quota (spending it)."""
        if not auth or not merchant or not token:
            raise feed_error(400, MISSING_FEED_PARAMS)
        if auth != self._auth or token != self._token or merchant != self._merchant:
            raise feed_error(401, INVALID_FEED_AUTH)
        if self._quota_limit is None:
            return
        with self._lock:
            now = self._shared.now()
            start, used = self._quota.get(auth, (now, 0))
            elapsed = (now - start).total_seconds()
            if elapsed >= self._quota_period or elapsed < 0:
                start, used, elapsed = now, 0, 0.0
            if used >= self._quota_limit:
                self._shared.stats.rate_limited += 1
                retry_after = max(1, math.ceil(self._quota_period - elapsed))
                raise feed_error(429, HIT_LIMIT, {"Retry-After": str(retry_after)})
            self._quota[auth] = (start, used + 1)

    def body(self, merchant: str) -> bytes:
        """The feed's answer for ``merchant``: built, then reused unchanged until
        ``ttl`` seconds (by the clock) have passed since it was built."""
        with self._lock:
            now = self._shared.now()
            cache = self._caches.get(merchant)
            if cache is not None:
                age = (now - cache.built_at).total_seconds()
                if 0 <= age < self._ttl:
                    return cache.body
            visible = [r.data for r in reversed(self._rows) if not r.hidden][: self._window]
            body = json.dumps(
                {"status": "success", "data": visible, "creator": self._creator},
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
            self._caches[merchant] = _Cache(now, body)
            self._shared.stats.feed_builds += 1
            return body

    def invalidate_cache(self) -> None:
        """Forget the cached feed answers: the next request builds a fresh one."""
        with self._lock:
            self._caches.clear()
