"""The ASGI app: routes, bearer authentication, JSON errors, and a lifespan
that runs the service (under uvicorn)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _routes as routes
from ._errors import error_body, handlers
from ._metrics import metrics
from ._openapi import openapi
from ._sse import stream

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["build_app"]

#: The one path open without the token.
OPEN_PATHS = frozenset({"/healthz"})


class BearerAuth:
    """Refuses with 401 every HTTP request but ``OPEN_PATHS`` that does not
    carry the service token."""

    def __init__(self, app: ASGIApp, svc: Service) -> None:
        self.app = app
        self.svc = svc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = ""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    header = value.decode("latin-1")
            if not self.svc.token_ok(header):
                answer = JSONResponse(
                    error_body("unauthorized", "send Authorization: Bearer <QRISPAY_SERVE_TOKEN>"),
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await answer(scope, receive, send)
                return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            # Starlette answered 500 (the "bug" handler) and raises again for the
            # server to log with a traceback; it stops here, logged by its type only.
            if not started:
                await JSONResponse(error_body("internal_error", "the service failed"), 500)(
                    scope, receive, send
                )


def build_app(svc: Service) -> Any:
    async def schema(request: Any) -> JSONResponse:
        return JSONResponse(openapi())

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            await tasks.start(svc.run)
            yield
            svc.stopping = True
            tasks.cancel_scope.cancel()

    app = Starlette(
        routes=[
            Route("/v1/invoices", routes.create_invoice, methods=["POST"]),
            Route("/v1/invoices/{invoice_id}", routes.get_invoice, methods=["GET"]),
            Route("/v1/invoices/{invoice_id}/cancel", routes.cancel_invoice, methods=["POST"]),
            Route("/v1/events", routes.events, methods=["GET"]),
            Route("/v1/events/stream", stream, methods=["GET"]),
            Route("/v1/balance", routes.balance, methods=["GET"]),
            Route("/v1/withdrawals", routes.create_withdrawal, methods=["POST"]),
            Route("/v1/withdrawals/{withdraw_id}", routes.get_withdrawal, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", schema, methods=["GET"]),
        ],
        exception_handlers=handlers(svc.redactor),
        lifespan=lifespan,
    )
    app.state.service = svc
    return BearerAuth(app, svc)
