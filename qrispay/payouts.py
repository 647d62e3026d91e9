"""``Payouts``: DANA withdrawals keyed by the caller's idempotency key, sent at
most once (docs/design.md, "Payouts: a withdrawal is sent at most once").

The intent is committed to the store before the request leaves. What became of
it is recorded after: ``done`` with the withdrawal, ``unknown`` when no answer
said, or nothing at all when the gateway definitely refused (the key is free
again). An ``intent`` left behind by a crash means the same as ``unknown``: the
request may have been sent. Neither is ever sent again; both are settled only
from the gateway's withdrawal history, and only when exactly one withdrawal
there can be theirs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from ._checks import (
    check_account_name,
    check_account_number,
    check_amount,
    check_id,
    require_aware,
    require_duration,
)
from ._codec import dump_withdrawal, load_withdrawal
from .errors import APIConnectionError, APIStatusError, OutcomeUnknownError, StoreError
from .gateway import GatewayClient
from .models import Withdrawal
from .store._base import PayoutEntry, Store

__all__ = ["CLOCK_SKEW", "Payouts"]

#: How far the gateway's clock may be from ours when a withdrawal in the
#: history is dated against an intent: two minutes either way.
CLOCK_SKEW = timedelta(minutes=2)

# The states in which the request may have reached the gateway.
_UNSETTLED = ("intent", "unknown")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _asked(amount: int, account_number: str, account_name: str) -> dict[str, Any]:
    return {"amount": amount, "account_number": account_number, "account_name": account_name}


def _request_text(asked: Mapping[str, Any]) -> str:
    return json.dumps(dict(asked), sort_keys=True, separators=(",", ":"))


class Payouts:
    """Withdrawals that are sent at most once per idempotency key.

    ::

        payouts = Payouts(gateway, store=store)
        withdrawal = await payouts.withdraw(50_000, "081234567890", "John Doe", key="order-17")

    Keys are scoped by ``store`` and the gateway account (its base URL and API
    key, kept as a digest in ``scope``): the same key on another account is
    another withdrawal. ``clock`` (default: wall UTC) dates the intents;
    ``clock_skew`` is how far the gateway's clock may be from it.
    """

    def __init__(
        self,
        gateway: GatewayClient,
        *,
        store: Store,
        clock: Callable[[], datetime] | None = None,
        clock_skew: timedelta = CLOCK_SKEW,
    ):
        if not isinstance(gateway, GatewayClient):
            raise TypeError(f"gateway must be a GatewayClient, not {type(gateway).__name__}")
        if not isinstance(store, Store):
            raise TypeError(f"store must be a Store, not {type(store).__name__}")
        require_duration(clock_skew, "clock_skew")
        self._gateway = gateway
        self._store = store
        self._clock = clock or _utc_now
        self._skew = clock_skew
        self._scope = gateway._account

    def __repr__(self) -> str:
        return f"Payouts(gateway={self._gateway!r}, store={self._store!r})"

    @property
    def scope(self) -> str:
        """The stable, non-secret name of the gateway account that keys are scoped by."""
        return self._scope

    def _now(self) -> datetime:
        now = self._clock()
        require_aware(now, "the clock's time")
        return now

    async def withdraw(
        self, amount: int, account_number: str, account_name: str, *, key: str
    ) -> Withdrawal:
        """Ask for a DANA withdrawal once per ``key``.

        The first call commits the intent, then sends. A later call with the
        same key never sends: it returns the recorded withdrawal, or, when the
        first outcome was unknown (or the process died before recording it),
        the one withdrawal in the gateway's history that can be it, else raises
        ``OutcomeUnknownError``. The same key with other arguments raises
        ``ValueError``. A definite refusal (the gateway's 4xx, or a request
        that never left) is raised and frees the key.
        """
        check_amount(amount)
        check_account_number(account_number)
        check_account_name(account_name)
        check_id(key, "key")
        if self._gateway._core.closed:
            # Refused before an intent exists: a closed client cannot have sent anything.
            raise RuntimeError("this client is closed")
        asked = _asked(amount, account_number, account_name)
        entry, created = await self._store.payout_claim(
            self._scope, key, _request_text(asked), self._now()
        )
        if not created:
            return await self._again(entry, asked)
        return await self._send(key, asked)

    async def resolve_unknown(self) -> list[Withdrawal]:
        """Settle every intent whose outcome is unknown (or was never recorded)
        from the gateway's history; the withdrawals settled now, oldest intent
        first. Those that stay unknown are left as they are; nothing is sent."""
        entries: list[PayoutEntry] = []
        for state in _UNSETTLED:
            entries += await self._store.payouts_in(self._scope, state)
        if not entries:
            return []
        entries.sort(key=lambda entry: entry.created_at)
        found = await self._resolve(entries)
        return [found[entry.key] for entry in entries if entry.key in found]

    # -- the steps -------------------------------------------------------------------

    async def _send(self, key: str, asked: dict[str, Any]) -> Withdrawal:
        try:
            withdrawal = await self._gateway.create_withdrawal(
                asked["amount"], asked["account_number"], asked["account_name"]
            )
        except OutcomeUnknownError:
            await self._store.payout_settle(
                self._scope, key, state="unknown", result=None, withdraw_id=None, now=self._now()
            )
            raise
        except (APIStatusError, APIConnectionError):
            # For a call that is not idempotent, the HTTP core raises these only
            # when the server said no or the request provably never left; every
            # answer that might follow a withdrawal comes as OutcomeUnknownError.
            await self._store.payout_settle(
                self._scope, key, state=None, result=None, withdraw_id=None, now=self._now()
            )
            raise
        # Anything else (a cancellation, a bug) leaves the intent as it is, which
        # later calls read as unknown: the request may have been sent.
        await self._settle_done(key, withdrawal)
        return withdrawal

    async def _again(self, entry: PayoutEntry, asked: dict[str, Any]) -> Withdrawal:
        if json.loads(entry.request) != asked:
            raise ValueError(
                f"key {entry.key!r} was used for another withdrawal; "
                "a key names one withdrawal (nothing was sent)"
            )
        if entry.state == "done":
            if entry.result is None:
                raise StoreError(f"key {entry.key!r} is done but holds no withdrawal")
            return load_withdrawal(json.loads(entry.result))
        # "intent" as well as "unknown": the first call may have sent it.
        found = await self._resolve([entry])
        if entry.key in found:
            return found[entry.key]
        method, path = "POST", self._gateway.endpoints.create_withdrawal
        raise OutcomeUnknownError(
            f"withdraw: the outcome of key {entry.key!r} is still unknown (no single "
            "withdrawal in the history can be it); it was not sent again; look the "
            "outcome up, or call resolve_unknown() later",
            operation="withdraw",
            params={**asked, "key": entry.key},
            method=method,
            path=path,
        )

    async def _resolve(self, entries: Iterable[PayoutEntry]) -> dict[str, Withdrawal]:
        """Settle each entry that exactly one unclaimed withdrawal fits, in the
        given order (an earlier entry takes a withdrawal first)."""
        history = [w async for w in self._gateway.iter_withdrawals()]
        # Read after the history, so a withdrawal claimed meanwhile is left out
        # (one claimed later still is refused by the store).
        claimed = await self._store.payout_claimed_ids(self._scope)
        found: dict[str, Withdrawal] = {}
        for entry in entries:
            asked = json.loads(entry.request)
            matches = [
                w for w in history if w.withdraw_id not in claimed and self._fits(entry, asked, w)
            ]
            if len(matches) != 1:
                continue
            (withdrawal,) = matches
            await self._settle_done(entry.key, withdrawal)
            claimed.add(withdrawal.withdraw_id)
            found[entry.key] = withdrawal
        return found

    def _fits(self, entry: PayoutEntry, asked: Mapping[str, Any], withdrawal: Withdrawal) -> bool:
        if (withdrawal.amount, withdrawal.account_number, withdrawal.account_name) != (
            asked["amount"],
            asked["account_number"],
            asked["account_name"],
        ):
            return False
        if withdrawal.created_at < entry.created_at - self._skew:
            return False
        # An "unknown" entry was recorded after its request ended, so nothing
        # made later is its withdrawal; an "intent" has no such end (a crash).
        return entry.state != "unknown" or withdrawal.created_at <= entry.updated_at + self._skew

    async def _settle_done(self, key: str, withdrawal: Withdrawal) -> None:
        await self._store.payout_settle(
            self._scope,
            key,
            state="done",
            result=json.dumps(dump_withdrawal(withdrawal)),
            withdraw_id=withdrawal.withdraw_id,
            now=self._now(),
        )
