"""What a failed attempt means: the typed error to raise, whether the server
may have acted on the request, and whether it may be sent again.

No I/O and no httpx: the HTTP core names the transport's exception classes
(``TransportKinds``) and hands over answers as they are (``Answer``).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from datetime import timezone
from typing import Any, Protocol

import attrs

from ._redact import Redactor, scrub_chain
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvoiceNotCancellableError,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

__all__ = [
    "EXCERPT_CHARS",
    "Answer",
    "Failure",
    "TransportKinds",
    "body_error",
    "excerpt",
    "from_answer",
    "from_exception",
    "shape_error",
    "status_error",
]

EXCERPT_CHARS = 200
SCRUB_LIMIT = 64 * 1024


@attrs.frozen
class Failure:
    """One failed attempt, classified."""

    #: What the caller gets when the request is not sent again.
    error: APIError
    #: The server may have acted on the request (it left, and no answer says no).
    may_have_left: bool
    #: Sending it again is safe for a request that is idempotent.
    retryable: bool
    #: How long the server asked us to wait, in seconds, if it said.
    retry_after: float | None
    #: Why the outcome is unknown, and what ``OutcomeUnknownError`` names as its
    #: cause, for a request that is not idempotent and may have left.
    reason: str
    cause: BaseException


@attrs.frozen
class TransportKinds:
    """Which exception classes of the HTTP library mean what."""

    #: Provably never sent (connecting failed, or no connection was free).
    unsent: tuple[type[BaseException], ...]
    #: Worth sending again, for a request that is idempotent.
    retryable: tuple[type[BaseException], ...]
    #: Timeouts: raised as ``APITimeoutError``.
    timeout: tuple[type[BaseException], ...]
    #: The answer arrived but could not be decoded (a broken compressed body).
    undecodable: tuple[type[BaseException], ...]


class Answer(Protocol):
    """What the classification reads from an HTTP response."""

    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def reason_phrase(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def from_exception(
    exc: BaseException,
    kinds: TransportKinds,
    redactor: Redactor,
    method: str,
    path: str,
    *,
    origin: str = "the server",
) -> Failure:
    """The failure of an attempt that raised ``exc``: our own total deadline
    (``TimeoutError``), or the transport's exception."""
    scrub_chain(exc, redactor)
    name = type(exc).__name__
    error: APIError
    if isinstance(exc, TimeoutError):
        # Our own total deadline: cancelled mid-flight, so it may have left.
        error = APITimeoutError(
            f"the total deadline passed waiting for {origin}", method=method, path=path
        )
        failure = _failure(error, True, False, "the total deadline passed mid-request", exc)
    elif isinstance(exc, kinds.undecodable):
        # The answer arrived: the request was served.
        error = ResponseDecodeError("the answer could not be decoded", method=method, path=path)
        failure = _failure(error, True, False, "the answer could not be decoded", exc)
    else:
        detail = redactor.scrub(str(exc))
        cls = APITimeoutError if isinstance(exc, kinds.timeout) else APIConnectionError
        # The host named (never the query), and httpx's words only when they add
        # to its exception's name (a ReadTimeout's are often just "ReadTimeout").
        said = f": {detail}" if detail and detail != name else ""
        error = cls(f"{name} at {origin}{said}", method=method, path=path)
        unsent = isinstance(exc, kinds.unsent)
        retryable = unsent or isinstance(exc, kinds.retryable)
        failure = _failure(error, not unsent, retryable, f"{name} after sending", exc)
    # Kept for a retried error, which is raised later outside any except.
    error.__cause__ = exc
    return failure


def _failure(
    error: APIError, may_have_left: bool, retryable: bool, reason: str, cause: BaseException
) -> Failure:
    return Failure(error, may_have_left, retryable, None, reason, cause)


def from_answer(
    answer: Answer,
    body: Any,
    decoded: bool,
    *,
    redactor: Redactor,
    retry_after_cap: float,
    method: str,
    path: str,
    unreadable: str = "",
) -> Failure:
    """The failure of an answer that is an error (a status or an error body),
    or a success that cannot be read (``unreadable`` says why)."""
    status = answer.status_code
    if not (status >= 400 or (decoded and body_error(body) is not None)):
        undecoded = ResponseDecodeError(
            unreadable or "the answer is not JSON",
            excerpt=excerpt(answer, redactor),
            status_code=status,
            method=method,
            path=path,
        )
        return _failure(undecoded, True, False, "the answer could not be read", undecoded)
    failed = _answer_error(answer, body, decoded, redactor, method, path)
    # An error inside a 2xx that is not a plain refusal ("Internal server
    # error", or a message we cannot place) may come after the work was done.
    ambiguous = (
        status == 408
        or status >= 500
        or (status < 400 and type(failed) in (ServerError, APIStatusError))
    )
    if isinstance(failed, RateLimitError):
        wait = failed.retry_after
        retryable = wait is None or wait <= retry_after_cap
        return Failure(failed, ambiguous, retryable, wait, f"HTTP {status}", failed)
    return _failure(failed, ambiguous, ambiguous, f"HTTP {status}", failed)


def _answer_error(
    answer: Answer, body: Any, decoded: bool, redactor: Redactor, method: str, path: str
) -> APIStatusError:
    status = answer.status_code
    message = body_error(body) if decoded else None
    if message is None:
        if decoded and isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]
        elif decoded:
            message = answer.reason_phrase or f"HTTP {status}"
        else:
            text = " ".join(excerpt(answer, redactor).split())
            message = f"{answer.reason_phrase or 'error'}: {text}".strip(": ")
    return status_error(
        status,
        redactor.scrub(message),
        body=redactor.scrub_obj(body) if decoded else excerpt(answer, redactor),
        method=method,
        path=path,
        retry_after=answer.headers.get("Retry-After"),
    )


def excerpt(answer: Answer, redactor: Redactor) -> str:
    """The start of the answer's body, scrubbed whole and then cut: a cut first
    could leave half a secret behind."""
    text = answer.content[:SCRUB_LIMIT].decode("utf-8", "replace")
    return redactor.scrub(text)[:EXCERPT_CHARS]


def shape_error(
    why: str, body: Any, redactor: Redactor, *, method: str, path: str
) -> ResponseDecodeError:
    """A decoded answer not of the documented shape: the reason, and a short
    excerpt of the body, scrubbed before it is cut."""
    cut = redactor.scrub(repr(redactor.scrub_obj(body)))[:EXCERPT_CHARS]
    return ResponseDecodeError(
        redactor.scrub(f"unexpected answer: {why}"), excerpt=cut, method=method, path=path
    )


def body_error(body: Any) -> str | None:
    """The server's error message when a decoded body says the call failed."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if error not in (None, False, ""):
        return error if isinstance(error, str) else json.dumps(error)
    status = body.get("status")
    failed = body.get("success") is False or status is False
    if isinstance(status, str) and status.strip().lower() in ("false", "error"):
        failed = True
    if not failed:
        return None
    message = body.get("message")
    return message if isinstance(message, str) and message else "the server reported a failure"


_NOT_CANCELLABLE = re.compile(r"tidak bisa dibatalkan|cannot be cancel", re.IGNORECASE)
_CURRENT_STATUS = re.compile(r"status saat ini\s*:?\s*([A-Za-z_]+)|status is\s+([A-Za-z_]+)")

# For error bodies that arrive with HTTP 200: the message is all there is.
_MESSAGE_KINDS: tuple[tuple[re.Pattern[str], type[APIStatusError]], ...] = (
    (
        re.compile(r"invalid (auth|token|api ?key)|unauthori[sz]ed|apikey", re.I),
        AuthenticationError,
    ),
    (re.compile(r"hit limit|rate limit|too many", re.I), RateLimitError),
    (re.compile(r"not found|tidak ditemukan", re.I), NotFoundError),
    (re.compile(r"internal server error|server error", re.I), ServerError),
    (re.compile(r"required|invalid|tidak valid|wajib", re.I), BadRequestError),
)

_STATUS_KINDS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    422: BadRequestError,
    429: RateLimitError,
}


def _error_class(status_code: int, message: str) -> type[APIStatusError]:
    if _NOT_CANCELLABLE.search(message):
        return InvoiceNotCancellableError
    if status_code >= 500:
        return ServerError
    if status_code >= 400:
        return _STATUS_KINDS.get(status_code, APIStatusError)
    for pattern, cls in _MESSAGE_KINDS:
        if pattern.search(message):
            return cls
    return APIStatusError


def status_error(
    status_code: int,
    message: str,
    *,
    body: Any,
    method: str,
    path: str,
    retry_after: str | None = None,
) -> APIStatusError:
    """The typed error for a failure the server reported, by status and message.

    ``message`` and ``body`` must be scrubbed already; ``retry_after`` is the
    Retry-After header, if any.
    """
    cls = _error_class(status_code, message)
    common: dict[str, Any] = {
        "status_code": status_code,
        "body": body,
        "method": method,
        "path": path,
    }
    if cls is RateLimitError:
        return RateLimitError(message, retry_after=_parse_retry_after(retry_after), **common)
    if cls is InvoiceNotCancellableError:
        found = _CURRENT_STATUS.search(message)
        current = (found.group(1) or found.group(2)).lower() if found else None
        return InvoiceNotCancellableError(message, status=current, **common)
    return cls(message, **common)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # "-0000": HTTP dates are GMT
                when = when.replace(tzinfo=timezone.utc)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)
