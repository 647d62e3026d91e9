"""Faults the sandbox injects: the random ones (``Faults``), the queued ones
(``fail_next``), and their draw for each request, from a seeded generator."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Literal

import attrs

from .._wire import FEED_ENDPOINT, GATEWAY_ENDPOINTS
from ._shared import Shared
from ._values import is_int, rate, seconds

__all__ = ["ENDPOINTS", "FAULT_KINDS", "Fault", "FaultInjector", "FaultKind", "Faults"]

#: Every endpoint a fault can be aimed at: the gateway's, then the feed.
ENDPOINTS = (*GATEWAY_ENDPOINTS, FEED_ENDPOINT)

#: ``error``: a 5xx before the request is handled (nothing happened).
#: ``error_after``: the request is handled, then a 5xx is answered instead (the
#: client cannot know it happened). ``html``: handled, then an HTML error page
#: instead of JSON. ``truncated``: handled, then the JSON cut in half.
#: ``rate_limit``: a 429 with ``Retry-After`` before the request is handled.
FaultKind = Literal["error", "error_after", "html", "truncated", "rate_limit"]
FAULT_KINDS: tuple[FaultKind, ...] = ("error", "error_after", "html", "truncated", "rate_limit")


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
    error_rate: float = attrs.field(default=0.0, converter=rate)
    #: handled, then a 5xx: it happened, the client cannot know.
    error_after_rate: float = attrs.field(default=0.0, converter=rate)
    #: handled, then a malformed body (see ``malformed``).
    malformed_rate: float = attrs.field(default=0.0, converter=rate)
    #: which malformed body: an HTML error page, truncated JSON, or either at random.
    malformed: Literal["html", "truncated", "mixed"] = attrs.field(
        default="mixed", validator=attrs.validators.in_(("html", "truncated", "mixed"))
    )
    #: a new feed row is never shown (its balance still counts: the chain breaks).
    drop_rate: float = attrs.field(default=0.0, converter=rate)
    #: seconds added to every answer, plus a uniform draw from [0, jitter).
    latency: float = attrs.field(default=0.0, converter=seconds)
    jitter: float = attrs.field(default=0.0, converter=seconds)
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


class FaultInjector:
    """The faults in force and their draws. ``latency`` and ``drops`` are called
    under the shared lock by their callers; the other methods take it."""

    def __init__(self, shared: Shared, faults: Faults | None) -> None:
        self._shared = shared
        self.faults = faults if faults is not None else Faults()
        # Its own stream, so ids never depend on how many faults were drawn.
        self._chaos = random.Random(f"qrispay-sandbox-faults:{shared.settings.seed}")
        self._queued: list[_Queued] = []

    def latency(self, endpoint: str) -> float:
        """The seconds added to one answer from ``endpoint``."""
        faults = self.faults
        if not faults.applies_to(endpoint):
            return 0.0
        delay = faults.latency
        if faults.jitter > 0:
            delay += self._chaos.random() * faults.jitter
        return delay

    def drops(self, hidden: bool | None) -> bool:
        """Whether a new feed row is hidden: ``hidden`` if given, else drawn."""
        if hidden is not None:
            return hidden
        drop_rate = self.faults.drop_rate
        if drop_rate and self.faults.applies_to(FEED_ENDPOINT) and self._chaos.random() < drop_rate:
            self._shared.stats.faults["drop"] += 1
            return True
        return False

    def fail_next(
        self,
        kind: FaultKind,
        endpoint: str | Iterable[str] | None,
        times: int,
        status: int | None,
        retry_after: float,
    ) -> None:
        """Queue a fault for the next ``times`` requests (see ``Sandbox.fail_next``)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {list(FAULT_KINDS)}")
        if not is_int(times) or times < 1:
            raise ValueError("times must be a positive int")
        queued = _Queued(kind, _endpoint_set(endpoint), times, status, seconds(retry_after))
        with self._shared.lock:
            self._queued.append(queued)

    def clear(self) -> None:
        """Drop queued faults and reset the random ones to none."""
        with self._shared.lock:
            self._queued.clear()
            self.faults = Faults()

    def draw(self, endpoint: str) -> Fault | None:
        """The fault for one authorised request: a queued one first, else random."""
        with self._shared.lock:
            for queued in self._queued:
                if queued.endpoints is None or endpoint in queued.endpoints:
                    queued.remaining -= 1
                    if queued.remaining == 0:
                        self._queued.remove(queued)
                    fault = self._make(queued.kind, queued.status, queued.retry_after)
                    self._shared.stats.faults[fault.kind] += 1
                    return fault
            chosen = self._draw_random(endpoint)
            if chosen is None:
                return None
            self._shared.stats.faults[chosen] += 1
            return self._make(chosen, None, 30.0)

    def _draw_random(self, endpoint: str) -> FaultKind | None:
        faults = self.faults
        if not faults.applies_to(endpoint):
            return None
        if faults.error_rate and self._chaos.random() < faults.error_rate:
            return "error"
        if faults.error_after_rate and self._chaos.random() < faults.error_after_rate:
            return "error_after"
        if faults.malformed_rate and self._chaos.random() < faults.malformed_rate:
            if faults.malformed == "mixed":
                return "html" if self._chaos.random() < 0.5 else "truncated"
            return faults.malformed
        return None

    def _make(self, kind: FaultKind, status: int | None, retry_after: float) -> Fault:
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
