"""The sandbox's refusals: the status and error body each real API answers with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "HIT_LIMIT",
    "INTERNAL_ERROR",
    "INVALID_FEED_AUTH",
    "MISSING_FEED_PARAMS",
    "SandboxRejection",
    "feed_error",
    "gateway_error",
]

MISSING_FEED_PARAMS = "auth, merchant and token parameters are required"
INVALID_FEED_AUTH = "Invalid auth or token"
HIT_LIMIT = "Hit limit"
INTERNAL_ERROR = "Internal server error"


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
    """A gateway refusal: ``{"error": message}`` (with ``"success": false`` first
    when the endpoint answers that way)."""
    body: dict[str, Any] = (
        {"success": False, "error": message} if success_flag else {"error": message}
    )
    return SandboxRejection(status, body, headers)


def feed_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> SandboxRejection:
    """A feed refusal: ``{"status": "false", "message": message}``."""
    return SandboxRejection(status, {"status": "false", "message": message}, headers)
