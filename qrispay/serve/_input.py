"""Reading requests: bounded JSON bodies, int rupiah, ids, idempotency keys,
query numbers. Each refusal is an ``ApiError`` naming what was wrong (400 for
what is not JSON at all, 422 for JSON that does not say what is asked)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request

from ._errors import ApiError

__all__ = ["idempotency_key", "json_object", "money", "query_int", "text_field"]

#: The longest body any route reads, in bytes.
MAX_BODY = 16 * 1024
_KEY_CHARS = frozenset(map(chr, range(0x21, 0x7F)))
#: The largest amount taken: 13 digits, the most a QRIS payload carries (and far
#: inside a 64-bit integer column, so a huge number never reaches a store or gateway).
MAX_AMOUNT = 10**13 - 1


def _digits(text: str) -> bool:
    # ASCII only: str.isdigit() is also true of "\u00b2" (int() refuses it)
    # and of "\u0665" (read as 5).
    return text.isascii() and text.isdigit()


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if _digits(declared) and int(declared) > limit:
        raise ApiError(400, "body_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(400, "body_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(
    request: Request, fields: Iterable[str], limit: int = MAX_BODY
) -> dict[str, Any]:
    """The body as a JSON object with no field but ``fields``."""
    raw = await _body(request, limit)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError:
        # Python refuses an integer of more than 4300 digits (int_max_str_digits).
        raise ApiError(422, "invalid_request", "a number in the body has too many digits") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
    return value


def money(body: dict[str, Any], name: str) -> int:
    """A positive whole number of rupiah up to ``MAX_AMOUNT``: a JSON integer,
    never a string, a float (even 10000.0) or a bool."""
    if name not in body:
        raise ApiError(422, "invalid_request", f"{name!r} is required (int rupiah)")
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a float" if isinstance(value, float) else f"a {type(value).__name__}"
        raise ApiError(
            422, "invalid_request", f"{name!r} must be an integer number of rupiah, not {kind}"
        )
    if value <= 0:
        raise ApiError(422, "invalid_request", f"{name!r} must be positive")
    if value > MAX_AMOUNT:
        raise ApiError(422, "invalid_request", f"{name!r} must be at most {MAX_AMOUNT} (13 digits)")
    return value


def text_field(body: dict[str, Any], name: str, *, longest: int = 100) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > longest:
        raise ApiError(
            422, "invalid_request", f"{name!r} must be a non-empty string of at most {longest}"
        )
    return value.strip()


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key", "")
    if not key:
        raise ApiError(400, "idempotency_key_required", "the Idempotency-Key header is required")
    if len(key) > 255 or not set(key) <= _KEY_CHARS:
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "an Idempotency-Key is 1 to 255 printable ASCII characters",
        )
    return key


def query_int(request: Request, name: str, default: int, *, lowest: int, highest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _digits(raw) or not lowest <= int(raw) <= highest:
        raise ApiError(
            400, "invalid_query", f"{name} must be an integer from {lowest} to {highest}"
        )
    return int(raw)
