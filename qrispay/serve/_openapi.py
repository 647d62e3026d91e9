"""``GET /openapi.json``: the service described in OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from .._version import __version__
from ._input import MAX_AMOUNT

__all__ = ["openapi"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "an error")
_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "1 to 255 printable ASCII characters; the same key and body replays "
    "the stored answer (Idempotent-Replayed: true), another body is 422, one in "
    "progress is 409",
    "schema": {"type": "string", "maxLength": 255},
}
_ERRORS = {code: _ERROR for code in ("400", "401", "404", "409", "422", "502")}
_MONEY = {"type": "integer", "minimum": 1, "description": "int rupiah"}
_MONEY_IN = {**_MONEY, "maximum": MAX_AMOUNT}
_TIME = {"type": "string", "format": "date-time"}
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Invoice": {
        "type": "object",
        "properties": {
            "invoice_id": {"type": "string"},
            "amount": _MONEY,
            "fee": {"type": "integer"},
            "total": {**_MONEY, "description": "what the customer pays, int rupiah"},
            "status": {"type": "string", "examples": ["pending", "paid", "expired"]},
            "qris_image": {"type": "string"},
            "qris_payload": {"type": ["string", "null"]},
            "expired_at": _TIME,
            "created_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Withdrawal": {
        "type": "object",
        "properties": {
            "withdraw_id": {"type": "string"},
            "amount": _MONEY,
            "fee": {"type": "integer"},
            "total_deduct": {"type": "integer"},
            "status": {"type": "string"},
            "account_number": {"type": ["string", "null"]},
            "account_name": {"type": ["string", "null"]},
            "created_at": _TIME,
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "created_at", "data"],
        "properties": {
            "id": {"type": "string", "description": "stable: deduplicate on it"},
            "type": {
                "type": "string",
                "enum": [
                    "invoice.paid",
                    "invoice.expired",
                    "invoice.cancelled",
                    "payment.late",
                    "payment.duplicate",
                    "payment.unmatched",
                    "payment.ambiguous",
                    "feed.unknown_row",
                    "feed.rejected_rows",
                    "feed.balance_gap",
                ],
            },
            "created_at": _TIME,
            "data": {"type": "object"},
        },
    },
}


def _op(summary: str, ok: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {ok: _json(schema, summary), **_ERRORS}, **more}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_id(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def openapi() -> dict[str, Any]:
    invoice_body = {
        "type": "object",
        "required": ["amount"],
        "additionalProperties": False,
        "properties": {"amount": _MONEY_IN},
    }
    withdrawal_body = {
        "type": "object",
        "required": ["amount", "account_number", "account_name"],
        "additionalProperties": False,
        "properties": {
            "amount": _MONEY_IN,
            "account_number": {"type": "string", "maxLength": 32},
            "account_name": {"type": "string", "maxLength": 100},
        },
    }
    page = {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": _ref("Event")},
            "has_more": {"type": "boolean"},
        },
    }
    after = {
        "name": "after",
        "in": "query",
        "schema": {"type": "string"},
        "description": "an event id",
    }
    limit = {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
    paths = {
        "/v1/invoices": {
            "post": _op(
                "create an invoice",
                "201",
                _ref("Invoice"),
                parameters=[_KEY],
                requestBody=_body(invoice_body),
            )
        },
        "/v1/invoices/{invoice_id}": {
            "get": _op(
                "an invoice and its status",
                "200",
                _ref("Invoice"),
                parameters=_path_id("invoice_id"),
            )
        },
        "/v1/invoices/{invoice_id}/cancel": {
            "post": _op(
                "cancel a pending invoice",
                "200",
                _ref("Invoice"),
                parameters=_path_id("invoice_id"),
            )
        },
        "/v1/events": {
            "get": _op(
                "stored events, oldest first, after a cursor",
                "200",
                page,
                parameters=[after, limit],
            )
        },
        "/v1/events/stream": {
            "get": {
                "summary": "the same as server-sent events, resuming from Last-Event-ID",
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    after,
                ],
                "responses": {
                    "200": {"description": "text/event-stream: id: <event id>, data: <Event>"},
                    **_ERRORS,
                },
            }
        },
        "/v1/balance": {
            "get": _op(
                "the gateway balance", "200", {"type": "object", "properties": {"balance": _MONEY}}
            )
        },
        "/v1/withdrawals": {
            "post": _op(
                "ask for a withdrawal, sent at most once per key",
                "201",
                _ref("Withdrawal"),
                parameters=[_KEY],
                requestBody=_body(withdrawal_body),
            )
        },
        "/v1/withdrawals/{withdraw_id}": {
            "get": _op(
                "a withdrawal", "200", _ref("Withdrawal"), parameters=_path_id("withdraw_id")
            )
        },
        "/healthz": {
            "get": {
                "summary": "no auth: 200 while the loop runs, with the last successful poll",
                "security": [],
                "responses": {"200": {"description": "running"}, "503": {"description": "stopped"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text format",
                "responses": {"200": {"description": "metrics"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "qrispay serve", "version": __version__},
        "security": [{"bearer": []}],
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
