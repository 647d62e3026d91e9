"""``GET /metrics``: counters in the Prometheus text format (version 0.0.4),
written directly: a handful of lines needs no client library."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from ._routes import service

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["metrics", "render"]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    # Exact: "%g" keeps 6 digits, so a timestamp or a count past 999999 was rounded.
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(svc: Service) -> str:
    stats = svc.rec.stats
    lines: list[str] = []

    def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {_number(value)}")

    merchant = f'{{merchant="{_label(svc.merchant)}"}}'
    metric("qrispay_polls_total", "counter", "Feed fetches made.", [(merchant, stats.polls)])
    metric(
        "qrispay_poll_failures_total",
        "counter",
        "Feed fetches that failed.",
        [(merchant, stats.failures)],
    )
    last = stats.last_success.timestamp() if stats.last_success else 0.0
    metric(
        "qrispay_last_poll_timestamp_seconds",
        "gauge",
        "When the last successful fetch started (0: none yet).",
        [(merchant, last)],
    )
    metric(
        "qrispay_lease_holder",
        "gauge",
        "1 while this instance polls the feed.",
        [(merchant, 1.0 if svc.rec.is_polling else 0.0)],
    )
    metric(
        "qrispay_events_total",
        "counter",
        "Events this instance saw, by type.",
        [(f'{{type="{_label(kind)}"}}', count) for kind, count in sorted(svc.events_seen.items())],
    )
    endpoints = [] if svc.webhooks is None else list(svc.webhooks.stats.values())
    for name, help, field in (
        ("qrispay_webhook_deliveries_total", "Webhook deliveries answered 2xx.", "delivered"),
        ("qrispay_webhook_failures_total", "Webhook attempts that failed.", "failed_attempts"),
        ("qrispay_webhook_given_up_total", "Webhook deliveries given up on.", "given_up"),
    ):
        samples = [(f'{{endpoint="{_label(e.name)}"}}', getattr(e, field)) for e in endpoints]
        metric(name, "counter", help, samples)
    return "\n".join(lines) + "\n"


async def metrics(request: Request) -> Response:
    return Response(render(service(request)), media_type="text/plain; version=0.0.4")
