"""``SandboxSettings``: everything a sandbox is made with, checked once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import attrs

from ._clock import utc_now
from ._faults import Faults
from ._values import is_int, seconds

__all__ = ["FEED_CREATOR", "QRIS_IMAGE_BASE", "SandboxSettings"]

FEED_CREATOR = "t.me/qrispay-sandbox"
QRIS_IMAGE_BASE = "https://sandbox.qrispay.invalid/qris/"


@attrs.frozen
class SandboxSettings:
    """A sandbox's configuration (see ``qrispay.sandbox.Sandbox`` for each field).

    ``gateway_balance``, ``merchant_balance`` and ``faults`` are starting
    values: the state keeps its own. Every field is checked on creation; the
    secrets stay out of the repr.
    """

    ttl: float = 30.0
    window: int = 20
    seed: int | None = 0
    clock: Callable[[], datetime] = utc_now
    api_key: str = attrs.field(default="sandbox-api-key", repr=False)
    auth: str = attrs.field(default="sandbox-auth", repr=False)
    merchant: str = "OK000001"
    token: str = attrs.field(default="000001:sandbox-token", repr=False)
    invoice_ttl: timedelta = timedelta(minutes=15)
    max_code: int = 999
    min_amount: int = 1
    withdrawal_fee: int = 1000
    gateway_balance: int = 0
    merchant_balance: int = 0
    quota: int | None = None
    quota_period: float = 60.0
    faults: Faults | None = attrs.field(default=None, eq=False)
    creator: str = FEED_CREATOR
    qris_image_base: str = QRIS_IMAGE_BASE

    def __attrs_post_init__(self) -> None:
        for message, ok in _checks(self):
            if not ok:
                raise ValueError(message)
        # Frozen: the two durations are stored as the floats they were checked as.
        object.__setattr__(self, "ttl", seconds(self.ttl))
        object.__setattr__(self, "quota_period", seconds(self.quota_period))
        if self.quota is not None and self.quota_period <= 0:
            raise ValueError("quota_period must be positive")


def _checks(s: SandboxSettings) -> tuple[tuple[str, bool], ...]:
    # Every test is guarded by its type test, so building the table never raises;
    # the first failure in this order is the one reported.
    return (
        ("seed must be an int or None", s.seed is None or is_int(s.seed)),
        ("window must be a positive int", isinstance(s.window, int) and s.window >= 1),
        ("max_code must be a positive int", isinstance(s.max_code, int) and s.max_code >= 1),
        ("min_amount must be a positive int", isinstance(s.min_amount, int) and s.min_amount >= 1),
        (
            "withdrawal_fee must be a non-negative int",
            is_int(s.withdrawal_fee) and s.withdrawal_fee >= 0,
        ),
        (
            "gateway_balance must be a non-negative int",
            is_int(s.gateway_balance) and s.gateway_balance >= 0,
        ),
        (
            "merchant_balance must be a non-negative int",
            is_int(s.merchant_balance) and s.merchant_balance >= 0,
        ),
        (
            "quota must be a positive int or None",
            s.quota is None or (is_int(s.quota) and s.quota >= 1),
        ),
        (
            "invoice_ttl must be a positive timedelta",
            isinstance(s.invoice_ttl, timedelta) and s.invoice_ttl > timedelta(0),
        ),
        ("api_key must be a non-empty string", _filled(s.api_key)),
        ("auth must be a non-empty string", _filled(s.auth)),
        ("merchant must be a non-empty string", _filled(s.merchant)),
        ("token must be a non-empty string", _filled(s.token)),
    )


def _filled(value: object) -> bool:
    return isinstance(value, str) and bool(value)
