"""``Sandbox``: the simulator's public face."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._convert import mutation_from_row
from ..models import Mutation
from ._app import build_app
from ._clock import utc_now
from ._faults import FaultKind, Faults
from ._server import run, serving
from ._settings import FEED_CREATOR, SandboxSettings
from ._shared import Stats
from ._state import SandboxState

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .. import GatewayClient, MutationClient

__all__ = ["SANDBOX_URL", "Sandbox"]

#: The base URL the in-process clients use (nothing resolves it: no socket).
SANDBOX_URL = "http://sandbox.local"


class Sandbox:
    """A stateful, deterministic simulator of the gateway API and the
    check-payment feed, served as an ASGI app (``sandbox.app``).

    ``ttl``: seconds a feed answer is reused. ``window``: rows the feed shows.
    ``seed``: every id, reference and fault draw derives from it; None draws
    them from the OS, so that no reference or id of an earlier run repeats
    (what a service that keeps state across restarts needs). ``clock``:
    a zero-argument callable returning an aware datetime (default: wall UTC);
    everything time-based reads it (see ``ManualClock`` and ``LoopClock``).

    Credentials are fixed fakes (``api_key``, ``auth``, ``merchant``,
    ``token``); wrong ones get the real APIs' errors.
    """

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        window: int = 20,
        seed: int | None = 0,
        clock: Callable[[], datetime] = utc_now,
        api_key: str = "sandbox-api-key",
        auth: str = "sandbox-auth",
        merchant: str = "OK000001",
        token: str = "000001:sandbox-token",
        invoice_ttl: timedelta = timedelta(minutes=15),
        max_code: int = 999,
        min_amount: int = 1,
        withdrawal_fee: int = 1000,
        gateway_balance: int = 0,
        merchant_balance: int = 0,
        quota: int | None = None,
        quota_period: float = 60.0,
        faults: Faults | None = None,
        creator: str = FEED_CREATOR,
    ) -> None:
        settings = SandboxSettings(
            ttl=ttl,
            window=window,
            seed=seed,
            clock=clock,
            api_key=api_key,
            auth=auth,
            merchant=merchant,
            token=token,
            invoice_ttl=invoice_ttl,
            max_code=max_code,
            min_amount=min_amount,
            withdrawal_fee=withdrawal_fee,
            gateway_balance=gateway_balance,
            merchant_balance=merchant_balance,
            quota=quota,
            quota_period=quota_period,
            faults=faults,
            creator=creator,
        )
        self._settings = settings
        self._state = SandboxState(settings)
        self._app: Starlette | None = None

    def __repr__(self) -> str:
        s = self._settings
        return f"Sandbox(ttl={s.ttl}, window={s.window}, seed={s.seed})"

    # -- configuration -------------------------------------------------------

    @property
    def api_key(self) -> str:
        return self._settings.api_key

    @property
    def auth(self) -> str:
        return self._settings.auth

    @property
    def merchant(self) -> str:
        return self._settings.merchant

    @property
    def token(self) -> str:
        return self._settings.token

    @property
    def ttl(self) -> float:
        return self._settings.ttl

    @property
    def window(self) -> int:
        return self._settings.window

    @property
    def seed(self) -> int | None:
        return self._settings.seed

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._settings.clock

    def now(self) -> datetime:
        """The sandbox's current time (its clock's)."""
        return self._state.shared.now()

    @property
    def faults(self) -> Faults:
        """The random faults in force; mutable, or assign a new ``Faults``."""
        return self._state.injector.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        if not isinstance(value, Faults):
            raise TypeError("faults must be a qrispay.sandbox.Faults")
        self._state.injector.faults = value

    @property
    def stats(self) -> Stats:
        """Counters of what was served (live; ``stats.copy()`` for a snapshot)."""
        return self._state.shared.stats

    def reset_stats(self) -> None:
        self._state.reset_stats()

    def fail_next(
        self,
        kind: FaultKind = "error",
        *,
        endpoint: str | Iterable[str] | None = None,
        times: int = 1,
        status: int | None = None,
        retry_after: float = 30.0,
    ) -> None:
        """Make the next ``times`` authorised requests (to ``endpoint``, or any)
        fail with ``kind``: ``"error"`` (5xx, nothing done), ``"error_after"``
        (done, then a 5xx), ``"html"``, ``"truncated"`` (done, then a malformed
        body) or ``"rate_limit"`` (429 with ``Retry-After: retry_after``).
        ``status`` overrides the HTTP status (200 gives an error inside a 200)."""
        self._state.injector.fail_next(kind, endpoint, times, status, retry_after)

    def clear_faults(self) -> None:
        """No more faults: queued ones dropped, random ones off."""
        self._state.injector.clear()

    # -- HTTP -------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        """The ASGI app serving both APIs at their default paths."""
        if self._app is None:
            self._app = build_app(self._state)
        return self._app

    def serve(
        self, *, host: str = "127.0.0.1", port: int = 0
    ) -> contextlib.AbstractContextManager[str]:
        """Serve on loopback in a background thread: ``with sandbox.serve() as url:``.

        ``port=0`` picks a free port; the yielded base URL names it. Only
        loopback hosts are accepted. The server stops when the block ends.
        """
        return serving(self.app, host=host, port=port)

    def run(self, *, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve on loopback in the foreground until interrupted."""
        run(self.app, host=host, port=port)

    def _transport(self) -> Any:
        from .._http import asgi_transport

        return asgi_transport(self.app)

    def _wire(self, kw: dict[str, Any]) -> dict[str, Any]:
        # In-process unless the caller says where to go: a base_url (say, the
        # loopback server's), an http_client or a transport of their own.
        if not kw.keys() & {"base_url", "http_client", "transport"}:
            kw["transport"] = self._transport()
        kw.setdefault("base_url", SANDBOX_URL)
        return kw

    def gateway_client(self, **kw: Any) -> GatewayClient:
        """A ``GatewayClient`` with this sandbox's API key, wired to it in-process
        (no socket). Keywords go to ``GatewayClient``; with ``base_url=`` (e.g.
        ``serve()``'s URL) it goes over the network instead."""
        from .. import GatewayClient

        return GatewayClient(self.api_key, **self._wire(kw))

    def mutation_client(self, **kw: Any) -> MutationClient:
        """A ``MutationClient`` with this sandbox's credentials, wired to it
        in-process (no socket). Keywords go to ``MutationClient``; with
        ``base_url=`` it goes over the network instead."""
        from .. import MutationClient

        return MutationClient(self.auth, self.merchant, self.token, **self._wire(kw))

    # -- the payer and the merchant's account ----------------------------------

    def pay(
        self,
        total: int,
        *,
        brand: str = "GOPAY",
        qris: str | None = None,
        buyer_reff: str | None = None,
        hidden: bool | None = None,
    ) -> Mutation:
        """A customer pays ``total`` now: a credit row in the feed (a fresh
        ``issuer_reff``, the balance after it), and the pending invoice with
        that total, if any, turns paid (crediting the gateway balance by its
        amount). A total no invoice has still makes the row: a wrong amount.

        ``qris`` defaults to ``"dynamic"`` when an invoice was paid, else
        ``"static"``. ``hidden=True`` makes a row the feed never shows (None:
        drawn from ``faults.drop_rate``)."""
        row = self._state.pay(total, brand, qris, buyer_reff, hidden)
        return mutation_from_row(row)

    def debit(
        self,
        amount: int,
        *,
        brand: str = "QRIS",
        buyer_reff: str = "Penarikan saldo",
        hidden: bool | None = None,
    ) -> Mutation:
        """A debit row (money leaving the merchant account) now."""
        row = self._state.feed.debit(amount, brand, buyer_reff, hidden)
        return mutation_from_row(row)

    def add_row(self, row: Mapping[str, Any], *, hidden: bool = False) -> dict[str, Any]:
        """Append ``row`` to the feed verbatim (for quirky rows: amounts as
        ``"Rp 10.000"``, odd dates, empty ``issuer_reff``...). It changes no
        balance and pays no invoice. Returns a copy of the row."""
        return self._state.feed.add_row(row, hidden=hidden)

    def rows(self, *, include_hidden: bool = True) -> list[dict[str, Any]]:
        """Every feed row so far, newest first (raw dicts, copies)."""
        return self._state.feed.rows(include_hidden=include_hidden)

    def invalidate_cache(self) -> None:
        """Forget the cached feed answer: the next feed request builds afresh."""
        self._state.feed.invalidate_cache()

    @property
    def merchant_balance(self) -> int:
        """The merchant account's balance (the feed's ``balance`` chain)."""
        return self._state.feed.merchant_balance

    # -- the gateway, from Python -----------------------------------------------

    @property
    def gateway_balance(self) -> int:
        """The gateway balance (settable)."""
        return self._state.gateway.gateway_balance

    @gateway_balance.setter
    def gateway_balance(self, value: int) -> None:
        self._state.gateway.gateway_balance = value

    def create_invoice(self, amount: int) -> dict[str, Any]:
        """Create an invoice without HTTP; the create answer's body.
        Refusals raise ``SandboxRejection`` (``.status``, ``.body``)."""
        return self._state.gateway.create_invoice(amount)

    def invoice(self, invoice_id: str) -> dict[str, Any]:
        """An invoice as the status endpoint shows it (``SandboxRejection`` if unknown)."""
        return self._state.gateway.invoice_status(invoice_id)

    def cancel_invoice(self, invoice_id: str) -> dict[str, Any]:
        """Cancel without HTTP, with the cancel endpoint's rules."""
        return self._state.gateway.cancel_invoice(invoice_id)

    def invoice_ids(self) -> list[str]:
        """Every invoice id, oldest first."""
        return self._state.gateway.invoice_ids()

    def pending_totals(self) -> dict[int, str]:
        """``{total: invoice_id}`` of the pending invoices now."""
        return self._state.gateway.pending_totals()

    def withdrawal(self, withdraw_id: str) -> dict[str, Any]:
        """A withdrawal as the status endpoint shows it."""
        return self._state.gateway.withdrawal_status(withdraw_id)

    def withdrawal_ids(self) -> list[str]:
        """Every withdrawal id, oldest first."""
        return self._state.gateway.withdrawal_ids()

    def approve_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        """The admin approves: ``success``, ``processed_at`` now. ``KeyError`` if
        unknown, ``ValueError`` if already processed."""
        return self._state.gateway.approve_withdrawal(withdraw_id, note=note)

    def reject_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        """The admin rejects: ``rejected``, and ``total_deduct`` is refunded."""
        return self._state.gateway.reject_withdrawal(withdraw_id, note=note)
