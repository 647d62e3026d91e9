"""The async client of the payment gateway: balance, deposit invoices, DANA withdrawals."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeVar

import attrs

from . import _client, _http
from ._checks import (
    check_account_name,
    check_account_number,
    check_amount,
    check_at_least,
    check_id,
)
from ._convert import structure
from ._wire import GATEWAY_PATHS
from .errors import ResponseDecodeError
from .models import (
    Balance,
    CancelResult,
    Invoice,
    InvoiceStatus,
    Withdrawal,
    WithdrawalPage,
    WithdrawalStatus,
)

__all__ = ["GatewayClient", "GatewayEndpoints"]

T = TypeVar("T")

# An id the server left empty cannot be told apart from another one: refused.
_ID_FIELDS = ("invoice_id", "withdraw_id")


@attrs.frozen
class GatewayEndpoints:
    """The gateway's paths. Only cancel is documented; override any of them."""

    balance: str = GATEWAY_PATHS["balance"][1]
    create_invoice: str = GATEWAY_PATHS["create_invoice"][1]
    invoice_status: str = GATEWAY_PATHS["invoice_status"][1]
    cancel_invoice: str = GATEWAY_PATHS["cancel_invoice"][1]
    create_withdrawal: str = GATEWAY_PATHS["create_withdrawal"][1]
    withdrawal_status: str = GATEWAY_PATHS["withdrawal_status"][1]
    withdrawal_history: str = GATEWAY_PATHS["withdrawal_history"][1]


def _unwrap(body: Any) -> Any:
    # Some deployments wrap the object in "data"; the documented form is flat.
    if (
        isinstance(body, dict)
        and isinstance(body.get("data"), dict)
        and not body.keys() & {"invoice_id", "withdraw_id", "balance"}
    ):
        return body["data"]
    return body


class GatewayClient(_client.ClientBase):
    """Async client of the payment gateway.

    ::

        async with GatewayClient(api_key, base_url="https://gateway.example") as gw:
            invoice = await gw.create_invoice(10_000)
            print(invoice.total, invoice.qris_image)

    Reads are retried on connect errors, timeouts, 408, 429 and 5xx. Calls
    that create something (``create_invoice``, ``cancel_invoice``,
    ``create_withdrawal``) are never sent twice once they may have reached the
    server: an ambiguous failure raises ``OutcomeUnknownError``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str,
        endpoints: GatewayEndpoints = GatewayEndpoints(),
        timeout: float | _http.Timeout = _http.DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: _http.AsyncClient | None = None,
        transport: _http.Transport | None = None,
        deadline: float | None = None,
        rng: random.Random | None = None,
    ):
        super().__init__(
            _http.Connection(base_url, timeout, max_retries, http_client, transport, deadline),
            credentials={"api_key": api_key},
            secrets={"apikey": api_key},
            rng=rng,
        )
        self.endpoints = endpoints
        self._account = _account_scope(self._core.base_url, api_key)

    def __repr__(self) -> str:
        return f"GatewayClient(base_url={self.base_url!r}, api_key='***')"

    # -- reads -----------------------------------------------------------

    async def get_balance(self) -> Balance:
        """The account's active balance."""
        body = await self._read("get_balance", self.endpoints.balance)
        return self._model(body, Balance, "get_balance", self.endpoints.balance, "GET")

    async def get_invoice(self, invoice_id: str) -> Invoice:
        """An invoice's current state (``pending``, ``paid``, ``expired``)."""
        check_id(invoice_id, "invoice_id")
        path = self.endpoints.invoice_status
        body = _unwrap(await self._read("get_invoice", path, {"invoice_id": invoice_id}))
        if isinstance(body, dict):
            body = {"invoice_id": invoice_id, "created_at": None, **body}
        return self._model(body, Invoice, "get_invoice", path, "GET")

    async def get_withdrawal(self, withdraw_id: str) -> Withdrawal:
        """A withdrawal's real-time status."""
        check_id(withdraw_id, "withdraw_id")
        path = self.endpoints.withdrawal_status
        body = _unwrap(await self._read("get_withdrawal", path, {"withdraw_id": withdraw_id}))
        if isinstance(body, dict):
            body = {"withdraw_id": withdraw_id, **body}
        return self._model(body, Withdrawal, "get_withdrawal", path, "GET")

    async def list_withdrawals(
        self,
        *,
        page: int = 1,
        limit: int = 10,
        status: WithdrawalStatus | str | None = None,
    ) -> WithdrawalPage:
        """One page of the withdrawal history, newest first, optionally by status."""
        check_at_least(page, "page", 1)
        check_at_least(limit, "limit", 1)
        params: dict[str, Any] = {"page": page, "limit": limit}
        if status is not None:
            params["status"] = status.value if isinstance(status, WithdrawalStatus) else status
        path = self.endpoints.withdrawal_history
        body = await self._read("list_withdrawals", path, params)
        data = body.get("data") if isinstance(body, dict) else None
        pagination = body.get("pagination") if isinstance(body, dict) else None
        if not isinstance(data, list) or not isinstance(pagination, dict):
            raise self._decode_error("no data list and pagination object", body, path, "GET")
        items = tuple(
            self._model(item, Withdrawal, "list_withdrawals", path, "GET") for item in data
        )
        info = self._model(pagination, _PageInfo, "list_withdrawals", path, "GET")
        return WithdrawalPage(items, info.page, info.limit, info.total, info.total_pages)

    async def iter_withdrawals(
        self,
        *,
        status: WithdrawalStatus | str | None = None,
        limit: int = 50,
    ) -> AsyncIterator[Withdrawal]:
        """Every withdrawal, walking the pages to ``total_pages``.

        A withdrawal that moves to a later page while walking (a new one was
        made) is yielded once.
        """
        seen: set[str] = set()
        page = 1
        while True:
            result = await self.list_withdrawals(page=page, limit=limit, status=status)
            for item in result.items:
                if item.withdraw_id not in seen:
                    seen.add(item.withdraw_id)
                    yield item
            if not result.items or page >= result.total_pages:
                return
            page += 1

    # -- calls that create or change something ---------------------------

    async def create_invoice(self, amount: int) -> Invoice:
        """A new deposit invoice with its QRIS image. Never sent twice."""
        check_amount(amount)
        asked = {"amount": amount}
        body, path, method = await self._change("create_invoice", asked, params=asked)
        if isinstance(body, dict):
            body = {"status": InvoiceStatus.PENDING.value, "created_at": None, **body}
        return self._created(body, Invoice, "create_invoice", path, method, asked)

    async def cancel_invoice(self, invoice_id: str) -> CancelResult:
        """Cancel a pending invoice (it becomes ``expired``).

        A paid invoice raises ``InvoiceNotCancellableError`` with its status.
        """
        check_id(invoice_id, "invoice_id")
        asked = {"invoice_id": invoice_id}
        body, path, method = await self._change("cancel_invoice", asked, params=asked)
        if isinstance(body, dict):
            body = {"invoice_id": invoice_id, "status": "expired", "message": "", **body}
        return self._created(body, CancelResult, "cancel_invoice", path, method, asked)

    async def create_withdrawal(
        self, amount: int, account_number: str, account_name: str
    ) -> Withdrawal:
        """Ask for a DANA withdrawal (status ``pending`` until an admin decides).

        Never sent twice: on ``OutcomeUnknownError``, look in
        ``iter_withdrawals()`` before asking again.
        """
        check_amount(amount)
        check_account_number(account_number)
        check_account_name(account_name)
        asked = {"amount": amount, "account_number": account_number, "account_name": account_name}
        sent = {"amount": amount, "accountNumber": account_number, "accountName": account_name}
        body, path, method = await self._change("create_withdrawal", asked, json_body=sent)
        return self._created(body, Withdrawal, "create_withdrawal", path, method, asked)

    # -- plumbing ----------------------------------------------------------

    async def _change(
        self, operation: str, asked: dict[str, Any], **request: Any
    ) -> tuple[Any, str, str]:
        # The endpoint of a call that changes something is named as the call.
        method = GATEWAY_PATHS[operation][0]
        path: str = getattr(self.endpoints, operation)
        body = await self._core.request(
            method, path, operation=operation, idempotent=False, op_params=asked, **request
        )
        return _unwrap(body), path, method

    async def _read(
        self, operation: str, path: str, params: Mapping[str, Any] | None = None
    ) -> Any:
        return await self._core.request("GET", path, operation=operation, params=params)

    def _model(self, body: Any, cls: type[T], operation: str, path: str, method: str) -> T:
        if not isinstance(body, Mapping):
            raise self._decode_error("the answer is not a JSON object", body, path, method)
        try:
            model = structure(body, cls)
        except ValueError as exc:
            raise self._decode_error(
                f"{cls.__name__}: {self._reason(body, cls, exc)}", body, path, method
            ) from None
        for name in _ID_FIELDS:
            value = getattr(model, name, None)
            if isinstance(value, str) and not value.strip():
                raise self._decode_error(f"{cls.__name__}: {name} is empty", body, path, method)
        return model

    def _reason(self, body: Mapping[str, Any], cls: type[Any], error: ValueError) -> str:
        # Reasons quote values cut short, where a cut secret would not be
        # recognised: take the reason from the scrubbed body instead.
        safe = self._core.redactor.scrub_obj(dict(body))
        if safe != body:
            try:
                structure(safe, cls)
            except ValueError as again:
                return str(again)
        return str(error)

    def _created(
        self,
        body: Any,
        cls: type[T],
        operation: str,
        path: str,
        method: str,
        asked: dict[str, Any],
    ) -> T:
        try:
            return self._model(body, cls, operation, path, method)
        except ResponseDecodeError as exc:
            # The server accepted the request; what it made is just unreadable.
            raise _http.outcome_unknown(
                f"the answer could not be read ({exc.message})",
                exc,
                operation=operation,
                params=asked,
                method=method,
                path=path,
                answered=True,
            ) from exc

    def _decode_error(self, why: str, body: Any, path: str, method: str) -> ResponseDecodeError:
        return self._core.shape_error(why, body, method=method, path=path)


def _account_scope(base_url: str, api_key: str) -> str:
    """A stable name of the gateway account that gives the key away to nobody:
    what ``Payouts`` scopes its idempotency keys by, in stores and in messages."""
    # A digest, never the key: the scope is written to stores, which are not
    # secret. The separator keeps ("ab", "c") and ("a", "bc") apart.
    data = f"{base_url}\n{api_key}".encode()
    return hashlib.blake2b(data, digest_size=16, person=b"qrispay.payouts").hexdigest()


@attrs.frozen
class _PageInfo:
    page: int
    limit: int
    total: int
    total_pages: int
