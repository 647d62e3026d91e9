"""Signed webhooks (Standard Webhooks) from the store's outbox, for
``qrispay serve``: ``WebhookSigner`` signs, ``WebhookDispatcher`` delivers and
retries, ``verify`` checks a delivery as a receiver would."""

from ._dispatch import EndpointStats, RetryPolicy, WebhookDispatcher
from ._payload import endpoint_name, event_body, event_json
from ._signing import WebhookSigner, parse_secret, verify

__all__ = [
    "EndpointStats",
    "RetryPolicy",
    "WebhookDispatcher",
    "WebhookSigner",
    "endpoint_name",
    "event_body",
    "event_json",
    "parse_secret",
    "verify",
]
