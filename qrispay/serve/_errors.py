"""The service's error answers: ``{"error": {"type", "message"}}``, never a
secret (every message passes the service's redactor), never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._redact import Redactor

__all__ = ["ApiError", "error_body", "handlers"]

logger = logging.getLogger("qrispay.serve")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """An answer other than success: ``status``, a stable ``type`` for programs
    and a ``message`` for people."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


def error_body(type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type, "message": message}}


def handlers(redactor: Redactor) -> dict[Any, Any]:
    """Starlette's exception handlers: every failure becomes a JSON error."""

    def answer(status: int, type: str, message: str) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(
            error_body(type, redactor.scrub(message)), status_code=status, headers=headers
        )

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return answer(exc.status, exc.type, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _HTTP_TYPES.get(exc.status_code, "bad_request")
        return answer(exc.status_code, kind, str(exc.detail))

    async def bug(request: Request, exc: Exception) -> Response:
        # The type only: a bug's message might quote anything.
        logger.error(
            "serve: %s %s failed: %s", request.method, request.url.path, type(exc).__name__
        )
        return answer(500, "internal_error", "the service failed; nothing more is shown")

    return {ApiError: api_error, HTTPException: http_error, Exception: bug}
