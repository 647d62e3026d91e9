"""The REST routes: invoices, balance, withdrawals, the event feed, health."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._codec import dump_invoice, dump_time, dump_withdrawal
from ..errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    InvoiceNotCancellableError,
    NotFoundError,
    OutcomeUnknownError,
    TotalConflictError,
)
from ..webhooks import event_json
from ._errors import ApiError, error_body
from ._idempotency import Answer, digest
from ._input import idempotency_key, json_object, money, query_int, text_field

if TYPE_CHECKING:
    from ._service import Service

__all__ = [
    "balance",
    "cancel_invoice",
    "create_invoice",
    "create_withdrawal",
    "events",
    "get_invoice",
    "get_withdrawal",
    "healthz",
    "seq_after",
    "service",
]

_UNKNOWN = (
    "the outcome is unknown: the gateway may have made it; nothing was sent again. "
    "Look it up before asking again with a new Idempotency-Key"
)


def service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def respond(svc: Service, answer: Answer) -> Response:
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return JSONResponse(svc.redactor.scrub_obj(answer.body), answer.status, headers=headers)


def _gateway_failed(exc: Exception) -> Answer:
    # Definite: the gateway said no, or the request never left. Nothing was made.
    return Answer(502, error_body("gateway_error", str(exc)), final=False)


# -- invoices ---------------------------------------------------------------------------


async def create_invoice(request: Request) -> Response:
    svc = service(request)
    key = idempotency_key(request)
    body = await json_object(request, ("amount",), svc.max_body)
    amount = money(body, "amount")

    async def work(stale: bool) -> Answer:
        if stale:
            return Answer(502, error_body("outcome_unknown", _UNKNOWN))
        try:
            invoice = await svc.rec.create_invoice(amount)
        except OutcomeUnknownError:
            return Answer(502, error_body("outcome_unknown", _UNKNOWN))
        except TotalConflictError as exc:
            return Answer(502, error_body("total_conflict", str(exc)), final=False)
        except (APIStatusError, APIConnectionError) as exc:
            return _gateway_failed(exc)
        except ValueError as exc:
            return Answer(422, error_body("invalid_request", str(exc)), final=False)
        return Answer(201, dump_invoice(invoice))

    scope = f"invoices:{svc.merchant}"
    answer = await svc.keys.run(scope, key, digest("POST", "/v1/invoices", body), work)
    return respond(svc, answer)


async def _invoice(svc: Service, invoice_id: str) -> dict[str, Any]:
    invoice = svc.rec.engine.get(invoice_id)
    if invoice is None:
        await svc.rec.refresh()  # another instance may have made it
        invoice = svc.rec.engine.get(invoice_id)
    if invoice is None:
        raise ApiError(404, "not_found", f"no invoice {invoice_id!r} is known here")
    return dump_invoice(invoice)


async def get_invoice(request: Request) -> Response:
    svc = service(request)
    return JSONResponse(await _invoice(svc, request.path_params["invoice_id"]))


async def cancel_invoice(request: Request) -> Response:
    svc = service(request)
    invoice_id = request.path_params["invoice_id"]
    await _invoice(svc, invoice_id)
    try:
        await svc.rec.cancel_invoice(invoice_id)
    except KeyError:
        raise ApiError(404, "not_found", f"no invoice {invoice_id!r} is known here") from None
    except InvoiceNotCancellableError as exc:
        raise ApiError(409, "not_cancellable", str(exc)) from None
    except OutcomeUnknownError:
        raise ApiError(
            502, "outcome_unknown", "the gateway's answer was lost; look again"
        ) from None
    except APIError as exc:
        raise ApiError(502, "gateway_error", str(exc)) from None
    return JSONResponse(await _invoice(svc, invoice_id))


# -- the gateway: balance and withdrawals --------------------------------------------------


def _payouts(svc: Service) -> Any:
    if svc.payouts is None or svc.rec.gateway is None:
        raise ApiError(404, "not_configured", "this service has no gateway configured")
    return svc.payouts


async def balance(request: Request) -> Response:
    svc = service(request)
    _payouts(svc)
    assert svc.rec.gateway is not None
    try:
        found = await svc.rec.gateway.get_balance()
    except APIError as exc:
        raise ApiError(502, "gateway_error", str(exc)) from None
    return JSONResponse({"balance": found.balance})


async def create_withdrawal(request: Request) -> Response:
    svc = service(request)
    payouts = _payouts(svc)
    key = idempotency_key(request)
    fields = ("amount", "account_number", "account_name")
    body = await json_object(request, fields, svc.max_body)
    amount = money(body, "amount")
    number = text_field(body, "account_number", longest=32)
    name = text_field(body, "account_name")

    async def work(stale: bool) -> Answer:
        # Stale or not, Payouts never sends one key twice: it settles from history.
        try:
            withdrawal = await payouts.withdraw(amount, number, name, key=key)
        except OutcomeUnknownError:
            # Kept unknown by Payouts: the same key again looks it up, never resends.
            return Answer(502, error_body("outcome_unknown", _UNKNOWN), final=False)
        except (APIStatusError, APIConnectionError) as exc:
            return _gateway_failed(exc)
        except ValueError as exc:
            return Answer(422, error_body("invalid_request", str(exc)), final=False)
        return Answer(201, dump_withdrawal(withdrawal))

    scope = f"withdrawals:{payouts.scope}"
    answer = await svc.keys.run(scope, key, digest("POST", "/v1/withdrawals", body), work)
    return respond(svc, answer)


async def get_withdrawal(request: Request) -> Response:
    svc = service(request)
    _payouts(svc)
    assert svc.rec.gateway is not None
    withdraw_id = request.path_params["withdraw_id"]
    try:
        found = await svc.rec.gateway.get_withdrawal(withdraw_id)
    except NotFoundError:
        raise ApiError(404, "not_found", f"no withdrawal {withdraw_id!r}") from None
    except APIError as exc:
        raise ApiError(502, "gateway_error", str(exc)) from None
    return JSONResponse(dump_withdrawal(found))


# -- events and health ------------------------------------------------------------------


async def seq_after(svc: Service, event_id: str | None) -> int:
    """The seq to read after: 0 (the first stored event) for none."""
    if not event_id:
        return 0
    try:
        return await svc.store.event_seq(svc.merchant, event_id)
    except KeyError:
        raise ApiError(404, "unknown_event", f"no stored event has id {event_id!r}") from None


async def events(request: Request) -> Response:
    svc = service(request)
    limit = query_int(request, "limit", 100, lowest=1, highest=1000)
    seq = await seq_after(svc, request.query_params.get("after"))
    found = await svc.store.events_after(svc.merchant, seq, limit + 1)
    data = [event_json(event) for event in found[:limit]]
    return JSONResponse({"data": data, "has_more": len(found) > limit})


async def healthz(request: Request) -> Response:
    svc = service(request)
    last = svc.rec.stats.last_success
    body = {
        "status": "ok" if svc.running else "stopped",
        "polling": svc.rec.is_polling,
        "last_poll": None if last is None else dump_time(last),
    }
    return Response(json.dumps(body), 200 if svc.running else 503, media_type="application/json")
