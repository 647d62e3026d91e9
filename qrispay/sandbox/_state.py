"""The sandbox's state: the gateway's and the feed's, and the faults in force,
tied together over one lock, one clock and one seed. No HTTP.

Time is read only from the injected clock and randomness drawn only from
generators seeded with ``seed``.
"""

from __future__ import annotations

from typing import Any

from .._wire import FEED_ENDPOINT, GATEWAY_ENDPOINTS
from ._errors import (
    HIT_LIMIT,
    INTERNAL_ERROR,
    INVALID_FEED_AUTH,
    MISSING_FEED_PARAMS,
    SandboxRejection,
    feed_error,
    gateway_error,
)
from ._faults import ENDPOINTS, FAULT_KINDS, Fault, FaultInjector, FaultKind, Faults
from ._feed import FeedState
from ._gateway import CANCELLED_MESSAGE, WITHDRAWAL_MESSAGE, GatewayState
from ._settings import FEED_CREATOR, SandboxSettings
from ._shared import Shared, Stats
from ._values import is_int, iso_z, wib

__all__ = [
    "CANCELLED_MESSAGE",
    "ENDPOINTS",
    "FAULT_KINDS",
    "FEED",
    "FEED_CREATOR",
    "GATEWAY_ENDPOINTS",
    "HIT_LIMIT",
    "INTERNAL_ERROR",
    "INVALID_FEED_AUTH",
    "MISSING_FEED_PARAMS",
    "WITHDRAWAL_MESSAGE",
    "Fault",
    "FaultKind",
    "Faults",
    "SandboxRejection",
    "SandboxState",
    "Stats",
    "feed_error",
    "gateway_error",
    "iso_z",
    "wib",
]

#: The check-payment endpoint's name (``qrispay._wire.FEED_ENDPOINT``).
FEED = FEED_ENDPOINT


class SandboxState:
    """Both APIs' data and rules (``gateway``, ``feed``) and the faults in force
    (``injector``). See ``qrispay.sandbox.Sandbox``."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.shared = Shared(settings)
        self._lock = self.shared.lock
        self.injector = FaultInjector(self.shared, settings.faults)
        self.gateway = GatewayState(self.shared)
        self.feed = FeedState(self.shared, self.injector)

    def count_request(self, endpoint: str) -> float:
        """Count a request and draw its added latency (seconds)."""
        with self._lock:
            self.shared.stats.requests[endpoint] += 1
            return self.injector.latency(endpoint)

    def count_status(self, status: int) -> None:
        with self._lock:
            self.shared.stats.statuses[status] += 1

    def reset_stats(self) -> None:
        with self._lock:
            self.shared.stats = Stats()

    def pay(
        self, total: int, brand: str, qris: str | None, buyer_reff: str | None, hidden: bool | None
    ) -> dict[str, Any]:
        """A customer pays ``total`` now (see ``Sandbox.pay``); the new row."""
        if not is_int(total) or total < 1:
            raise ValueError(f"a payment is a positive int, not {total!r}")
        with self._lock:
            now = self.shared.now()
            self.gateway.expire_due(now)
            paid = self.gateway.settle(total, now)
            return self.feed.credit(
                now,
                total,
                qris if qris is not None else ("dynamic" if paid else "static"),
                brand,
                buyer_reff if buyer_reff is not None else f"NOBU / {brand}",
                hidden,
            )
