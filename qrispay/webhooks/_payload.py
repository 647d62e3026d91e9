"""What a webhook carries and where it goes: an event as JSON (the same object
the HTTP service answers with), and an endpoint's stored name, which never
holds a credential from its URL."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._codec import dump_time
from ..store._base import StoredEvent

__all__ = ["endpoint_name", "event_body", "event_json", "url_secrets"]


def event_json(event: StoredEvent) -> dict[str, Any]:
    """``{"id", "type", "created_at", "data"}``: money as int rupiah, times ISO 8601."""
    return {
        "id": event.id,
        "type": event.kind,
        "created_at": dump_time(event.created_at),
        "data": event.data,
    }


def event_body(event: StoredEvent) -> bytes:
    """The exact bytes POSTed (and signed) for ``event``."""
    return json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False).encode()


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be credentials: the user info's password
    and every query value."""
    parts = urlsplit(url)
    found = [value for _, value in parse_qsl(parts.query, keep_blank_values=False)]
    if parts.password:
        found.append(parts.password)
    return [value for value in found if value]


def endpoint_name(url: str) -> str:
    """How the outbox names ``url``: the URL with its user info dropped and its
    query values masked, and a short digest of the whole URL, so two URLs that
    differ only in a masked part are still two endpoints."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None  # reported below, without quoting what may be a password
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook URL is an http:// or https:// URL with a host (not shown)")
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    query = urlencode([(name, "***") for name, _ in parse_qsl(parts.query)], safe="*")
    shown = urlunsplit((parts.scheme, host, parts.path, query, ""))
    digest = hashlib.blake2b(url.encode(), digest_size=4).hexdigest()
    return f"{shown} #{digest}"
