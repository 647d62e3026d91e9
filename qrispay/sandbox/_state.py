"""The sandbox's state machine: both APIs' data and rules, without HTTP.

Everything here runs under one lock (a loopback server thread and the test
thread both call in), reads time only from the injected clock and draws
randomness only from generators seeded with ``seed``. Methods return the
JSON-ready bodies the real APIs send, or raise ``SandboxRejection`` carrying
the status and error body the real API would answer with.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeGuard

import attrs

from ..models import JAKARTA

__all__ = [
    "ENDPOINTS",
    "FAULT_KINDS",
    "FEED",
    "GATEWAY_ENDPOINTS",
    "Fault",
    "Faults",
    "SandboxRejection",
    "SandboxState",
    "Stats",
]

Clock = Callable[[], datetime]

#: The gateway's endpoints, named as the fields of ``GatewayEndpoints``.
GATEWAY_ENDPOINTS = (
    "balance",
    "create_invoice",
    "invoice_status",
    "cancel_invoice",
    "create_withdrawal",
    "withdrawal_status",
    "withdrawal_history",
)
#: The check-payment (mutation feed) endpoint's name.
FEED = "check_payment"
ENDPOINTS = (*GATEWAY_ENDPOINTS, FEED)

#: ``error``: a 5xx before the request is handled (nothing happened).
#: ``error_after``: the request is handled, then a 5xx is answered instead (the
#: client cannot know it happened). ``html``: handled, then an HTML error page
#: instead of JSON. ``truncated``: handled, then the JSON cut in half.
#: ``rate_limit``: a 429 with ``Retry-After`` before the request is handled.
FaultKind = Literal["error", "error_after", "html", "truncated", "rate_limit"]
FAULT_KINDS: tuple[FaultKind, ...] = ("error", "error_after", "html", "truncated", "rate_limit")

FEED_CREATOR = "t.me/qrispay-sandbox"
MISSING_FEED_PARAMS = "auth, merchant and token parameters are required"
INVALID_FEED_AUTH = "Invalid auth or token"
HIT_LIMIT = "Hit limit"
INTERNAL_ERROR = "Internal server error"
CANCELLED_MESSAGE = "Invoice berhasil dibatalkan"
WITHDRAWAL_MESSAGE = "Permintaan penarikan berhasil diajukan"

# A DANA account is a phone number: 10 to 15 digits, starting 08 or 628.
_DANA_NUMBER = re.compile(r"(?=[0-9]{10,15}\Z)(?:08|628)[0-9]+", re.ASCII)
_HISTORY_LIMIT_MAX = 100


class SandboxRejection(Exception):
    """The sandbox refused a call, as the real API would: ``status`` is the HTTP
    status and ``body`` the JSON error body it answers with."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.headers: dict[str, str] = dict(headers or {})
        message = body.get("error") or body.get("message") or "refused"
        super().__init__(f"HTTP {status}: {message}")


def gateway_error(
    status: int,
    message: str,
    *,
    success_flag: bool = False,
    headers: Mapping[str, str] | None = None,
) -> SandboxRejection:
    body: dict[str, Any] = (
        {"success": False, "error": message} if success_flag else {"error": message}
    )
    return SandboxRejection(status, body, headers)


def feed_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> SandboxRejection:
    return SandboxRejection(status, {"status": "false", "message": message}, headers)


def _rate(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a rate is a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a rate is from 0 to 1, not {value}")
    return float(value)


def _seconds(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a duration is a number of seconds")
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f"a duration is finite and not negative, not {value}")
    return float(value)


def _endpoint_set(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    names = frozenset([value] if isinstance(value, str) else value)
    unknown = names - set(ENDPOINTS)
    if unknown:
        raise ValueError(f"unknown endpoint(s) {sorted(unknown)}; known: {list(ENDPOINTS)}")
    return names


@attrs.define
class Faults:
    """Faults the sandbox injects, at random but reproducibly (seeded).

    Mutable: set fields on ``sandbox.faults`` at any time. Rates are
    probabilities per request (``drop_rate``: per new feed row).
    """

    #: a 5xx (``error_status``) before handling: nothing happened.
    error_rate: float = attrs.field(default=0.0, converter=_rate)
    #: handled, then a 5xx: it happened, the client cannot know.
    error_after_rate: float = attrs.field(default=0.0, converter=_rate)
    #: handled, then a malformed body (see ``malformed``).
    malformed_rate: float = attrs.field(default=0.0, converter=_rate)
    #: which malformed body: an HTML error page, truncated JSON, or either at random.
    malformed: Literal["html", "truncated", "mixed"] = attrs.field(
        default="mixed", validator=attrs.validators.in_(("html", "truncated", "mixed"))
    )
    #: a new feed row is never shown (its balance still counts: the chain breaks).
    drop_rate: float = attrs.field(default=0.0, converter=_rate)
    #: seconds added to every answer, plus a uniform draw from [0, jitter).
    latency: float = attrs.field(default=0.0, converter=_seconds)
    jitter: float = attrs.field(default=0.0, converter=_seconds)
    #: the HTTP status of an injected error (200 gives "an error inside a 200").
    error_status: int = 500
    #: the HTTP status of an HTML error page.
    html_status: int = 200
    #: the endpoints random faults and latency apply to (None: all).
    endpoints: frozenset[str] | None = attrs.field(default=None, converter=_endpoint_set)

    def applies_to(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints


@attrs.frozen
class Fault:
    """One injected fault, as drawn for one request."""

    kind: FaultKind
    status: int
    retry_after: float = 0.0


@attrs.define
class _Queued:
    kind: FaultKind
    endpoints: frozenset[str] | None
    remaining: int
    status: int | None
    retry_after: float


@attrs.define
class Stats:
    """What the sandbox served. ``requests`` counts every request by endpoint
    name (``"check_payment"`` for the feed, the ``GatewayEndpoints`` field names
    for the gateway, ``"not_found"`` for unknown paths), whatever the answer."""

    requests: Counter[str] = attrs.field(factory=Counter)
    #: answers by HTTP status
    statuses: Counter[int] = attrs.field(factory=Counter)
    #: injected faults by kind
    faults: Counter[str] = attrs.field(factory=Counter)
    #: feed answers built (cache misses), and feed requests refused by the quota
    feed_builds: int = 0
    rate_limited: int = 0

    @property
    def feed_fetches(self) -> int:
        """Requests to the feed endpoint, answered or not."""
        return self.requests[FEED]

    def copy(self) -> Stats:
        return Stats(
            Counter(self.requests),
            Counter(self.statuses),
            Counter(self.faults),
            self.feed_builds,
            self.rate_limited,
        )


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


@attrs.define
class _Row:
    data: dict[str, Any]
    hidden: bool


@attrs.define
class _Cache:
    built_at: datetime
    body: bytes


def wib(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Asia/Jakarta, without a zone (both APIs' style)."""
    return when.astimezone(JAKARTA).strftime("%Y-%m-%d %H:%M:%S")


def iso_z(when: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and ``Z`` (the withdrawal style)."""
    if when is None:
        return None
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _is_int(value: object) -> TypeGuard[int]:
    return type(value) is int


class SandboxState:
    """The data and rules of both APIs. See ``qrispay.sandbox.Sandbox``."""

    def __init__(
        self,
        *,
        ttl: float = 30.0,
        window: int = 20,
        seed: int = 0,
        clock: Clock,
        api_key: str,
        auth: str,
        merchant: str,
        token: str,
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
        qris_image_base: str = "https://sandbox.qrispay.invalid/qris/",
    ) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError("window must be a positive int")
        if not isinstance(max_code, int) or max_code < 1:
            raise ValueError("max_code must be a positive int")
        if not isinstance(min_amount, int) or min_amount < 1:
            raise ValueError("min_amount must be a positive int")
        for name, value in (
            ("withdrawal_fee", withdrawal_fee),
            ("gateway_balance", gateway_balance),
            ("merchant_balance", merchant_balance),
        ):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative int")
        if quota is not None and (not _is_int(quota) or quota < 1):
            raise ValueError("quota must be a positive int or None")
        if not isinstance(invoice_ttl, timedelta) or invoice_ttl <= timedelta(0):
            raise ValueError("invoice_ttl must be a positive timedelta")
        for name, secret in (("api_key", api_key), ("auth", auth), ("merchant", merchant)):
            if not isinstance(secret, str) or not secret:
                raise ValueError(f"{name} must be a non-empty string")
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        self.ttl = _seconds(ttl)
        self.window = window
        self.seed = seed
        self.clock = clock
        self.api_key = api_key
        self.auth = auth
        self.merchant = merchant
        self.token = token
        self.invoice_ttl = invoice_ttl
        self.max_code = max_code
        self.min_amount = min_amount
        self.withdrawal_fee = withdrawal_fee
        self.quota = quota
        self.quota_period = _seconds(quota_period)
        if quota is not None and self.quota_period <= 0:
            raise ValueError("quota_period must be positive")
        self.faults = faults if faults is not None else Faults()
        self.creator = creator
        self.qris_image_base = qris_image_base
        self.stats = Stats()

        self._lock = threading.RLock()
        # Two streams from one seed: ids never depend on how many faults were drawn.
        self._ids = random.Random(seed)
        self._chaos = random.Random(f"qrispay-sandbox-faults:{seed}")
        self._gateway_balance = gateway_balance
        self._merchant_balance = merchant_balance
        self._invoices: dict[str, _Invoice] = {}
        self._pending_by_total: dict[int, str] = {}
        self._withdrawals: dict[str, _Withdrawal] = {}
        self._rows: list[_Row] = []
        self._reffs: set[str] = set()
        self._caches: dict[str, _Cache] = {}
        self._quota: dict[str, tuple[datetime, int]] = {}
        self._queued: list[_Queued] = []

    # -- time and ids ------------------------------------------------------

    def now(self) -> datetime:
        when = self.clock()
        if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"the sandbox clock must return an aware datetime, got {when!r}")
        return when

    def _object_id(self, when: datetime, taken: Mapping[str, object]) -> str:
        # Shaped like a MongoDB ObjectId (24 hex digits, seconds first), as the
        # documented examples are.
        seconds = int(when.timestamp()) & 0xFFFFFFFF
        while True:
            candidate = f"{seconds:08x}{self._ids.getrandbits(64):016x}"
            if candidate not in taken:
                return candidate

    def _issuer_reff(self) -> str:
        while True:
            candidate = f"id{self._ids.randrange(10**10, 10**11)}"
            if candidate not in self._reffs:
                return candidate

    # -- statistics and faults ---------------------------------------------

    def count_request(self, endpoint: str) -> float:
        """Count a request and draw its added latency (seconds)."""
        with self._lock:
            self.stats.requests[endpoint] += 1
            faults = self.faults
            if not faults.applies_to(endpoint):
                return 0.0
            delay = faults.latency
            if faults.jitter > 0:
                delay += self._chaos.random() * faults.jitter
            return delay

    def count_status(self, status: int) -> None:
        with self._lock:
            self.stats.statuses[status] += 1

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    def fail_next(
        self,
        kind: FaultKind = "error",
        *,
        endpoint: str | Iterable[str] | None = None,
        times: int = 1,
        status: int | None = None,
        retry_after: float = 30.0,
    ) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {list(FAULT_KINDS)}")
        if not _is_int(times) or times < 1:
            raise ValueError("times must be a positive int")
        queued = _Queued(kind, _endpoint_set(endpoint), times, status, _seconds(retry_after))
        with self._lock:
            self._queued.append(queued)

    def clear_faults(self) -> None:
        """Drop queued faults and reset the random ones to none."""
        with self._lock:
            self._queued.clear()
            self.faults = Faults()

    def draw_fault(self, endpoint: str) -> Fault | None:
        """The fault for one authorised request: a queued one first, else random."""
        with self._lock:
            for queued in self._queued:
                if queued.endpoints is None or endpoint in queued.endpoints:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        self._queued.remove(queued)
                    fault = self._make_fault(queued.kind, queued.status, queued.retry_after)
                    self.stats.faults[fault.kind] += 1
                    return fault
            faults = self.faults
            if not faults.applies_to(endpoint):
                return None
            chosen: FaultKind | None = None
            if faults.error_rate and self._chaos.random() < faults.error_rate:
                chosen = "error"
            elif faults.error_after_rate and self._chaos.random() < faults.error_after_rate:
                chosen = "error_after"
            elif faults.malformed_rate and self._chaos.random() < faults.malformed_rate:
                if faults.malformed == "mixed":
                    chosen = "html" if self._chaos.random() < 0.5 else "truncated"
                else:
                    chosen = faults.malformed
            if chosen is None:
                return None
            self.stats.faults[chosen] += 1
            return self._make_fault(chosen, None, 30.0)

    def _make_fault(self, kind: FaultKind, status: int | None, retry_after: float) -> Fault:
        if status is None:
            if kind in ("error", "error_after"):
                status = self.faults.error_status
            elif kind == "html":
                status = self.faults.html_status
            elif kind == "rate_limit":
                status = 429
            else:
                status = 200
        return Fault(kind, status, retry_after)

    # -- gateway: auth, balance --------------------------------------------

    def authorize_gateway(self, apikey: str | None) -> None:
        if not apikey:
            raise gateway_error(401, "API key diperlukan")
        if apikey != self.api_key:
            raise gateway_error(401, "API key tidak valid")

    @property
    def gateway_balance(self) -> int:
        with self._lock:
            return self._gateway_balance

    @gateway_balance.setter
    def gateway_balance(self, value: int) -> None:
        if not _is_int(value) or value < 0:
            raise ValueError("a balance is a non-negative int")
        with self._lock:
            self._gateway_balance = value

    def balance(self) -> dict[str, Any]:
        with self._lock:
            return {"balance": self._gateway_balance}

    # -- gateway: invoices -------------------------------------------------

    def _expire_due(self, now: datetime) -> None:
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

    def create_invoice(self, amount: int) -> dict[str, Any]:
        if not _is_int(amount) or amount < self.min_amount:
            raise gateway_error(400, f"Jumlah tidak valid (minimal {self.min_amount})")
        with self._lock:
            now = self.now()
            self._expire_due(now)
            for fee in range(1, self.max_code + 1):
                if amount + fee not in self._pending_by_total:
                    break
            else:
                raise gateway_error(503, "Kode unik habis, coba lagi nanti")
            # The gateway shows whole seconds; keep them whole so the expiry it
            # shows is the expiry it applies.
            created = now.replace(microsecond=0)
            invoice_id = self._object_id(created, self._invoices)
            invoice = _Invoice(
                invoice_id=invoice_id,
                amount=amount,
                fee=fee,
                total=amount + fee,
                status="pending",
                created_at=created,
                expired_at=created + self.invoice_ttl,
                qris_image=f"{self.qris_image_base}{invoice_id}.png",
            )
            self._invoices[invoice_id] = invoice
            self._pending_by_total[invoice.total] = invoice_id
            return {
                "success": True,
                "invoice_id": invoice_id,
                "amount": invoice.amount,
                "fee": invoice.fee,
                "total": invoice.total,
                "qris_image": invoice.qris_image,
                "expired_at": wib(invoice.expired_at),
            }

    def _invoice(self, invoice_id: str | None) -> _Invoice:
        if not invoice_id:
            raise gateway_error(400, "Parameter invoice_id diperlukan")
        invoice = self._invoices.get(invoice_id)
        if invoice is None:
            raise gateway_error(404, "Invoice tidak ditemukan")
        return invoice

    def invoice_status(self, invoice_id: str | None) -> dict[str, Any]:
        with self._lock:
            self._expire_due(self.now())
            invoice = self._invoice(invoice_id)
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

    def cancel_invoice(self, invoice_id: str | None) -> dict[str, Any]:
        with self._lock:
            now = self.now()
            self._expire_due(now)
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
            self._expire_due(self.now())
            return dict(self._pending_by_total)

    # -- gateway: withdrawals ------------------------------------------------

    def _withdrawal_body(self, w: _Withdrawal) -> dict[str, Any]:
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

    def create_withdrawal(
        self, amount: object, account_number: object, account_name: object
    ) -> dict[str, Any]:
        if not _is_int(amount) or amount < 1:
            raise gateway_error(400, "Jumlah penarikan tidak valid", success_flag=True)
        if not isinstance(account_number, str) or not _DANA_NUMBER.fullmatch(account_number):
            raise gateway_error(400, "Nomor akun DANA tidak valid", success_flag=True)
        if not isinstance(account_name, str) or not account_name.strip():
            raise gateway_error(400, "Nama akun wajib diisi", success_flag=True)
        with self._lock:
            total = amount + self.withdrawal_fee
            if total > self._gateway_balance:
                raise gateway_error(400, "Saldo tidak mencukupi", success_flag=True)
            now = self.now()
            self._gateway_balance -= total
            w = _Withdrawal(
                withdraw_id=self._object_id(now, self._withdrawals),
                amount=amount,
                fee=self.withdrawal_fee,
                total_deduct=total,
                new_balance=self._gateway_balance,
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
        if not withdraw_id:
            raise gateway_error(400, "Parameter withdraw_id diperlukan", success_flag=True)
        w = self._withdrawals.get(withdraw_id)
        if w is None:
            raise gateway_error(404, "Withdraw tidak ditemukan", success_flag=True)
        return w

    def withdrawal_status(self, withdraw_id: str | None) -> dict[str, Any]:
        with self._lock:
            return {"success": True, **self._withdrawal_body(self._withdrawal(withdraw_id))}

    def withdrawal_history(
        self, *, page: int = 1, limit: int = 10, status: str | None = None
    ) -> dict[str, Any]:
        if not _is_int(page) or page < 1:
            raise gateway_error(400, "Parameter page tidak valid", success_flag=True)
        if not _is_int(limit) or limit < 1:
            raise gateway_error(400, "Parameter limit tidak valid", success_flag=True)
        limit = min(limit, _HISTORY_LIMIT_MAX)
        with self._lock:
            items = [
                w for w in reversed(self._withdrawals.values()) if not status or w.status == status
            ]
            start = (page - 1) * limit
            return {
                "success": True,
                "data": [self._withdrawal_body(w) for w in items[start : start + limit]],
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
            w.processed_at = self.now()
            if status == "rejected":
                self._gateway_balance += w.total_deduct
            return self._withdrawal_body(w)

    def approve_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        return self._process(withdraw_id, "success", note)

    def reject_withdrawal(self, withdraw_id: str, *, note: str | None = None) -> dict[str, Any]:
        return self._process(withdraw_id, "rejected", note)

    def withdrawal_ids(self) -> list[str]:
        with self._lock:
            return list(self._withdrawals)

    # -- feed: rows ----------------------------------------------------------

    @property
    def merchant_balance(self) -> int:
        with self._lock:
            return self._merchant_balance

    def _dropped(self, hidden: bool | None) -> bool:
        if hidden is not None:
            return hidden
        rate = self.faults.drop_rate
        if rate and self.faults.applies_to(FEED) and self._chaos.random() < rate:
            self.stats.faults["drop"] += 1
            return True
        return False

    def pay(
        self,
        total: int,
        *,
        brand: str = "GOPAY",
        qris: str | None = None,
        buyer_reff: str | None = None,
        hidden: bool | None = None,
    ) -> dict[str, Any]:
        if not _is_int(total) or total < 1:
            raise ValueError(f"a payment is a positive int, not {total!r}")
        with self._lock:
            now = self.now()
            self._expire_due(now)
            invoice_id = self._pending_by_total.get(total)
            if invoice_id is not None:
                invoice = self._invoices[invoice_id]
                self._close(invoice, "paid", now)
                self._gateway_balance += invoice.amount
            self._merchant_balance += total
            return self._append(
                now,
                total,
                "CR",
                qris if qris is not None else ("dynamic" if invoice_id else "static"),
                brand,
                buyer_reff if buyer_reff is not None else f"NOBU / {brand}",
                hidden,
            )

    def debit(
        self,
        amount: int,
        *,
        brand: str = "QRIS",
        buyer_reff: str = "Penarikan saldo",
        hidden: bool | None = None,
    ) -> dict[str, Any]:
        if not _is_int(amount) or amount < 1:
            raise ValueError(f"a debit is a positive int, not {amount!r}")
        with self._lock:
            if amount > self._merchant_balance:
                raise ValueError(
                    f"a debit of {amount} exceeds the merchant balance {self._merchant_balance}"
                )
            self._merchant_balance -= amount
            return self._append(self.now(), amount, "DB", "static", brand, buyer_reff, hidden)

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
            "balance": self._merchant_balance,
        }
        self._rows.append(_Row(row, self._dropped(hidden)))
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

    # -- feed: requests ------------------------------------------------------

    def authorize_feed(self, auth: str | None, merchant: str | None, token: str | None) -> None:
        """Check the parameters, the credentials and the quota (spending it)."""
        if not auth or not merchant or not token:
            raise feed_error(400, MISSING_FEED_PARAMS)
        if auth != self.auth or token != self.token or merchant != self.merchant:
            raise feed_error(401, INVALID_FEED_AUTH)
        if self.quota is None:
            return
        with self._lock:
            now = self.now()
            start, used = self._quota.get(auth, (now, 0))
            elapsed = (now - start).total_seconds()
            if elapsed >= self.quota_period or elapsed < 0:
                start, used, elapsed = now, 0, 0.0
            if used >= self.quota:
                self.stats.rate_limited += 1
                retry_after = max(1, math.ceil(self.quota_period - elapsed))
                raise feed_error(429, HIT_LIMIT, {"Retry-After": str(retry_after)})
            self._quota[auth] = (start, used + 1)

    def feed_body(self, merchant: str) -> bytes:
        """The feed's answer for ``merchant``: built, then reused unchanged until
        ``ttl`` seconds (by the clock) have passed since it was built."""
        with self._lock:
            now = self.now()
            cache = self._caches.get(merchant)
            if cache is not None:
                age = (now - cache.built_at).total_seconds()
                if 0 <= age < self.ttl:
                    return cache.body
            visible = [r.data for r in reversed(self._rows) if not r.hidden][: self.window]
            body = json.dumps(
                {"status": "success", "data": visible, "creator": self.creator},
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
            self._caches[merchant] = _Cache(now, body)
            self.stats.feed_builds += 1
            return body

    def invalidate_cache(self) -> None:
        """Forget the cached feed answers: the next request builds a fresh one."""
        with self._lock:
            self._caches.clear()
