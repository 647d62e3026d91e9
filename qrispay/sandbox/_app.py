"""The sandbox's ASGI app (Starlette): both APIs over one ``SandboxState``.

Each request: count it, check its credentials (and the feed's quota), draw
a fault, handle it, maybe spoil the answer, wait the added latency
(``anyio.sleep``, so asyncio, trio and trio's ``MockClock`` all work), answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._wire import FEED_ENDPOINT, FEED_PATH, GATEWAY_PATHS
from ._errors import HIT_LIMIT, INTERNAL_ERROR, SandboxRejection, feed_error, gateway_error
from ._faults import Fault
from ._state import SandboxState

__all__ = ["FEED_PATH", "GATEWAY_PATHS", "build_app"]

NOT_FOUND = "not_found"

_DIGITS = re.compile(r"[0-9]{1,15}", re.ASCII)
_JSON = "application/json"

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>Service temporarily unavailable</h1>\n"
    b"<p>The server is temporarily unable to service your request. Please try again later.</p>\n"
    b"<hr><address>Apache Server</address></body></html>\n"
)


@attrs.frozen
class _Answer:
    status: int
    content: bytes
    media_type: str = _JSON
    headers: dict[str, str] = attrs.field(factory=dict)

    def response(self) -> Response:
        return Response(
            self.content, status_code=self.status, media_type=self.media_type, headers=self.headers
        )


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> _Answer:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return _Answer(status, content, _JSON, dict(headers or {}))


def _rejection(exc: SandboxRejection) -> _Answer:
    return _json(exc.status, exc.body, exc.headers)


def _int_param(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise gateway_error(400, f"Parameter {name} diperlukan")
    if not _DIGITS.fullmatch(raw.strip()):
        raise gateway_error(400, f"Parameter {name} tidak valid")
    return int(raw)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise gateway_error(400, "Body harus berupa JSON", success_flag=True) from None
    if not isinstance(body, dict):
        raise gateway_error(400, "Body harus berupa objek JSON", success_flag=True)
    return body


Handler = Callable[[SandboxState, Request], Awaitable[_Answer]]

# -- the handlers, one per endpoint ---------------------------------------------


async def balance(state: SandboxState, request: Request) -> _Answer:
    return _json(200, state.gateway.balance())


async def create_invoice(state: SandboxState, request: Request) -> _Answer:
    raw = request.query_params.get("amount")
    if raw is None or raw == "":
        raise gateway_error(400, "Parameter amount diperlukan")
    if not _DIGITS.fullmatch(raw.strip()):
        raise gateway_error(400, "Jumlah tidak valid")
    return _json(200, state.gateway.create_invoice(int(raw)))


async def invoice_status(state: SandboxState, request: Request) -> _Answer:
    return _json(200, state.gateway.invoice_status(request.query_params.get("invoice_id")))


async def cancel_invoice(state: SandboxState, request: Request) -> _Answer:
    invoice_id = request.query_params.get("invoice_id")
    if not invoice_id:
        try:
            body = await _json_body(request)
        except SandboxRejection:
            body = {}
        value = body.get("invoice_id")
        invoice_id = value if isinstance(value, str) else None
    return _json(200, state.gateway.cancel_invoice(invoice_id))


async def create_withdrawal(state: SandboxState, request: Request) -> _Answer:
    body = await _json_body(request)
    answer = state.gateway.create_withdrawal(
        body.get("amount"), body.get("accountNumber"), body.get("accountName")
    )
    return _json(200, answer)


async def withdrawal_status(state: SandboxState, request: Request) -> _Answer:
    return _json(200, state.gateway.withdrawal_status(request.query_params.get("withdraw_id")))


async def withdrawal_history(state: SandboxState, request: Request) -> _Answer:
    try:
        page = _int_param(request, "page", 1)
        limit = _int_param(request, "limit", 10)
    except SandboxRejection as exc:
        raise gateway_error(exc.status, exc.body["error"], success_flag=True) from None
    status = request.query_params.get("status") or None
    return _json(200, state.gateway.withdrawal_history(page=page, limit=limit, status=status))


async def check_payment(state: SandboxState, request: Request) -> _Answer:
    return _Answer(200, state.feed.body(request.query_params["merchant"]))


HANDLERS: dict[str, Handler] = {
    "balance": balance,
    "create_invoice": create_invoice,
    "invoice_status": invoice_status,
    "cancel_invoice": cancel_invoice,
    "create_withdrawal": create_withdrawal,
    "withdrawal_status": withdrawal_status,
    "withdrawal_history": withdrawal_history,
    FEED_ENDPOINT: check_payment,
}

# -- the common path of every request -------------------------------------------


def _error(fault: Fault, feed: bool) -> _Answer:
    if fault.kind == "rate_limit":
        headers = {"Retry-After": str(max(0, round(fault.retry_after)))}
        exc = (
            feed_error(fault.status, HIT_LIMIT, headers)
            if feed
            else gateway_error(fault.status, "Too many requests", headers=headers)
        )
    else:
        exc = (
            feed_error(fault.status, INTERNAL_ERROR)
            if feed
            else gateway_error(fault.status, INTERNAL_ERROR)
        )
    return _rejection(exc)


def _spoil(fault: Fault, answer: _Answer, feed: bool) -> _Answer:
    if fault.kind == "error_after":
        return _error(fault, feed)
    if fault.kind == "html":
        return _Answer(fault.status, HTML_ERROR_PAGE, "text/html; charset=utf-8")
    if fault.kind == "truncated":
        return _Answer(answer.status, answer.content[: len(answer.content) // 2])
    return answer


async def _serve(state: SandboxState, request: Request, name: str, handler: Handler) -> Response:
    feed = name == FEED_ENDPOINT
    delay = state.count_request(name)
    fault: Fault | None = None
    try:
        query = request.query_params
        if feed:
            state.feed.authorize(query.get("auth"), query.get("merchant"), query.get("token"))
        else:
            state.gateway.authorize(query.get("apikey"))
        fault = state.injector.draw(name)
        if fault is not None and fault.kind in ("error", "rate_limit"):
            answer = _error(fault, feed)
        else:
            answer = await handler(state, request)
    except SandboxRejection as exc:
        answer = _rejection(exc)
    if fault is not None:
        answer = _spoil(fault, answer, feed)
    state.count_status(answer.status)
    if delay > 0:
        await anyio.sleep(delay)
    return answer.response()


def _route(state: SandboxState, name: str, method: str, path: str) -> Route:
    handler = HANDLERS[name]

    async def endpoint(request: Request) -> Response:
        return await _serve(state, request, name, handler)

    return Route(path, endpoint, methods=[method], name=name)


def _not_found(state: SandboxState, request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    state.count_request(NOT_FOUND)
    if request.url.path.startswith("/api/"):
        message = "Endpoint tidak ditemukan" if status == 404 else "Metode tidak diizinkan"
        answer = _rejection(gateway_error(status, message))
    else:
        answer = _rejection(feed_error(404, "API endpoint not found"))
    state.count_status(answer.status)
    return answer.response()


def build_app(state: SandboxState) -> Starlette:
    """The ASGI app serving both APIs at their default paths."""
    routes = [_route(state, name, method, path) for name, (method, path) in GATEWAY_PATHS.items()]
    routes.append(_route(state, FEED_ENDPOINT, "GET", FEED_PATH))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _not_found(state, request, exc)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
