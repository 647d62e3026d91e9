"""The gateway's state and rules: its API key, balance, invoices (with their
unique codes and expiry) and withdrawals, without HTTP.

Methods return the JSON-ready bodies the gateway sends, or raise
``SandboxRejection`` with the status and error body it would answer with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

import attrs

from .._wire import is_dana_number
from ._errors import gateway_error
from ._shared import Shared
from ._values import is_int, iso_z, wib

__all__ = ["CANCELLED_MESSAGE", "WITHDRAWAL_MESSAGE", "GatewayState"]

CANCELLED_MESSAGE = "Invoice berhasil dibatalkan"
WITHDRAWAL_MESSAGE = "Permintaan penarikan berhasil diajukan"
_HISTORY_LIMIT_MAX = 100
# The create answer shows these of the status body, in this order.
_CREATED_KEYS = ("invoice_id", "amount", "fee", "total", "qris_image", "expired_at")
_T = TypeVar("_T")


@attrs.define
class _Invoice:
    invoice_id: str
    amount: int
    fee: int
    total: int
    status: str
    created_at: datetime
    expired_at: datetime
    qris_image: str
    closed_at: datetime | None = None
    cancelled: bool = False


@attrs.define
class _Withdrawal:
    withdraw_id: str
    amount: int
    fee: int
    total_deduct: int
    new_balance: int
    account_number: str
    account_name: str
    created_at: datetime
    status: str = "pending"
    admin_note: str | None = None
    processed_at: datetime | None = None


def _find(
    table: Mapping[str, _T], key: str | None, param: str, what: str, *, success_flag: bool
) -> _T:
    # The gateway's two lookups by id: the id is required, then must exist.
    if not key:
        raise gateway_error(400, f"Parameter {param} diperlukan", success_flag=success_flag)
    found = table.get(key)
    if found is None:
        raise gateway_error(404, f"{what} tidak ditemukan", success_flag=success_flag)
    return found


def _invoice_body(invoice: _Invoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.invoice_id,
        "amount": invoice.amount,
        "fee": invoice.fee,
        "total": invoice.total,
        "status": invoice.status,
        "qris_image": invoice.qris_image,
        "expired_at": wib(invoice.expired_at),
        "created_at": wib(invoice.created_at),
    }


def _withdrawal_body(w: _Withdrawal) -> dict[str, Any]:
    return {
        "withdraw_id": w.withdraw_id,
        "amount": w.amount,
        "fee": w.fee,
        "total_deduct": w.total_deduct,
        "status": w.status,
        "method": "dana",
        "account_number": w.account_number,
        "account_name": w.account_name,
        "admin_note": w.admin_note,
        "created_at": iso_z(w.created_at),
        "processed_at": iso_z(w.processed_at),
    }


class GatewayState:
    """The gateway's data and rules. See ``qrispay.sandbox.Sandbox``."""

    def __init__(self, shared: Shared) -> None:
        self._shared = shared
        self._settings = shared.settings
        self._lock = shared.lock
        self._balance = shared.settings.gateway_balance
        self._invoices: dict[str, _Invoice] = {}
        self._pending_by_total: dict[int, str] = {}
        self._withdrawals: dict[str, _Withdrawal] = {}

    # -- credentials, balance ------------------------------------------------

    def authorize(self, apikey: str | None) -> None:
        if not apikey:
            raise gateway_error(401, "API key diperlukan")
        if apikey != self._settings.api_key:
            raise gateway_error(401, "API key tidak valid")

    @property
    def gateway_balance(self) -> int:
        with self._lock:
            return self._balance

    @gateway_balance.setter
    def gateway_balance(self, value: int) -> None:
        if not is_int(value) or value < 0:
            raise ValueError("a balance is a non-negative int")
        with self._lock:
            self._balance = value

    def balance(self) -> dict[str, Any]:
        with self._lock:
            return {"balance": self._balance}

    # -- invoices ------------------------------------------------------------

    def expire_due(self, now: datetime) -> None:
        """Expire the pending invoices past their expiry (call under the lock)."""
        due = [
            invoice_id
            for invoice_id in self._pending_by_total.values()
            if now > self._invoices[invoice_id].expired_at
        ]
        for invoice_id in due:
            invoice = self._invoices[invoice_id]
            self._close(invoice, "expired", invoice.expired_at)

    def _close(self, invoice: _Invoice, status: str, when: datetime) -> None:
        invoice.status = status
        invoice.closed_at = when
        if self._pending_by_total.get(invoice.total) == invoice.invoice_id:
            del self._pending_by_total[invoice.total]

    def settle(self, total: int, now: datetime) -> bool:
        """A payment of ``total`` at ``now`` pays the pending invoice with that
        total, if any, crediting its amount; whether one was paid. Call under
        the lock, after ``expire_due(now)``."""
        invoice_id = self._pending_by_total.get(total)
        if invoice_id is None:
            return False
        invoice = self._invoices[invoice_id]
        self._close(invoice, "paid", now)
        self._balance += invoice.amount
        return True

    def create_invoice(self, amount: int) -> dict[str, Any]:
        settings = self._settings
        if not is_int(amount) or amount < settings.min_amount:
            raise gateway_error(400, f"Jumlah tidak valid (minimal {settings.min_amount})")
        with self._lock:
            now = self._shared.now()
            self.expire_due(now)
            for fee in range(1, settings.max_code + 1):
                if amount + fee not in self._pending_by_total:
                    break
            else:
                raise gateway_error(503, "Kode unik habis, coba lagi nanti")
            # The gateway shows whole seconds; keep them whole so the expiry it
            # shows is the expiry it applies.
            created = now.replace(microsecond=0)
            invoice_id = self._shared.object_id(created, self._invoices)
            invoice = _Invoice(
                invoice_id=invoice_id,
                amount=amount,
                fee=fee,
                total=amount + fee,
                status="pending",
                created_at=created,
                expired_at=created + settings.invoice_ttl,
                qris_image=f"{settings.qris_image_base}{invoice_id}.png",
            )
            self._invoices[invoice_id] = invoice
            self._pending_by_total[invoice.total] = invoice_id
            body = _invoice_body(invoice)
            return {"success": True, **{key: body[key] for key in _CREATED_KEYS}}

    def _invoice(self, invoice_id: str | None) -> _Invoice:
        return _find(self._invoices, invoice_id, "invoice_id", "Invoice", success_flag=False)

    def invoice_status(self, invoice_id: str | None) -> dict[str, Any]:
        with self._lock:
            self.expire_due(self._shared.now())
            return _invoice_body(self._invoice(invoice_id))

    def cancel_invoice(self, invoice_id: str | None) -> dict[str, Any]:
        with self._lock:
            now = self._shared.now()
            self.expire_due(now)
            invoice = self._invoice(invoice_id)
            if invoice.status != "pending":
                raise gateway_error(
                    400, f"Invoice tidak bisa dibatalkan, status saat ini: {invoice.status}"
                )
            self._close(invoice, "expired", now)
            invoice.cancelled = True
            return {
                "success": True,
                "invoice_id": invoice.invoice_id,
                "status": "expired",
                "message": CANCELLED_MESSAGE,
            }

    def invoice_ids(self) -> list[str]:
        with self._lock:
            return list(self._invoices)

    def pending_totals(self) -> dict[int, str]:
        with self._lock:
            self.expire_due(self._shared.now())
            return dict(self._pending_by_total)

    # -- withdrawals ---------------------------------------------------------

    def create_withdrawal(
        self, amount: object, account_number: object, account_name: object
    ) -> dict[str, Any]:
        if not is_int(amount) or amount < 1:
            raise gateway_error(400, "Jumlah penarikan tidak valid", success_flag=True)
        if not isinstance(account_number, str) or not is_dana_number(account_number):
            raise gateway_error(400, "Nomor akun DANA tidak valid", success_flag=True)
        if not isinstance(account_name, str) or not account_name.strip():
            raise gateway_error(400, "Nama akun wajib diisi", success_flag=True)
        with self._lock:
            fee = self._settings.withdrawal_fee
            total = amount + fee
            if total > self._balance:
                raise gateway_error(400, "Saldo tidak mencukupi", success_flag=True)
            now = self._shared.now()
            self._balance -= total
            w = _Withdrawal(
                withdraw_id=self._shared.object_id(now, self._withdrawals),
                amount=amount,
                fee=fee,
                total_deduct=total,
                new_balance=self._balance,
                account_number=account_number,
                account_name=account_name,
                created_at=now,
            )
            self._withdrawals[w.withdraw_id] = w
            return {
                "success": True,
                "message": WITHDRAWAL_MESSAGE,
                "withdraw_id": w.withdraw_id,
                "amount": w.amount,
                "fee": w.fee,
                "total_deduct": w.total_deduct,
                "new_balance": w.new_balance,
                "status": w.status,
                "created_at": iso_z(w.created_at),
            }

    def _withdrawal(self, withdraw_id: str | None) -> _Withdrawal:
        return _find(self._withdrawals, withdraw_id, "withdraw_id", "Withdraw", success_flag=True)

    def withdrawal_status(self, withdraw_id: str | None) -> dict[str, Any]:
        with self._lock:
            return {"success": True, **_withdrawal_body(self._withdrawal(withdraw_id))}

    def withdrawal_history(
        self, *, page: int = 1, limit: int = 10, status: str | None = None
    ) -> dict[str, Any]:
        if not is_int(page) or page < 1:
            raise gateway_error(400, "Parameter page tidak valid", success_flag=True)
        if not is_int(limit) or limit < 1:
            raise gateway_error(400, "Parameter limit tidak valid", success_flag=True)
        limit = min(limit, _HISTORY_LIMIT_MAX)
        with self._lock:
            items = [
                w for w in reversed(self._withdrawals.values()) if not status or w.status == status
            ]
            start = (page - 1) * limit
            return {
                "success": True,
                "data": [_withdrawal_body(w) for w in items[start : start + limit]],
                "pagination": {
                    "page": page,
                    "limit": limit,
                    "total": len(items),
                    "total_pages": math.ceil(len(items) / limit),
                },
            }

    def _process(self, withdraw_id: str, status: str, note: str | None) -> dict[str, Any]:
        with self._lock:
            w = self._withdrawals.get(withdraw_id)
            if w is None:
                raise KeyError(withdraw_id)
            if w.status != "pending":
                raise ValueError(f"withdrawal {withdraw_id} is already {w.status}")
            w.status = status
            w.admin_note = note
            w.processed_at = self._shared.now()
            if status == "rejected":
                self._balance += w.total_deduct
            return _withdrawal_body(w)

    def approve_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        return self._process(withdraw_id, "success", note)

    def reject_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        return self._process(withdraw_id, "rejected", note)

    def withdrawal_ids(self) -> list[str]:
        with self._lock:
            return list(self._withdrawals)
