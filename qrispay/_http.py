"""The HTTP core shared by both clients: the only module that imports httpx.

It sends one logical request with retries, maps every failure into the
``qrispay.errors`` hierarchy, and keeps the credentials out of every
exception, repr and log record, httpx's own included.
"""

from __future__ import annotations

import email.utils
import functools
import html
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Iterable, Mapping
from datetime import timezone
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus

import anyio
import attrs
import httpx

from ._version import __version__
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvoiceNotCancellableError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

__all__ = ["DEFAULT_TIMEOUT", "HTTPCore", "Redactor", "Timeout", "asgi_transport"]

logger = logging.getLogger("qrispay")

# Re-exported so the clients can name httpx types without importing httpx.
AsyncClient = httpx.AsyncClient
Timeout = httpx.Timeout
Transport = httpx.AsyncBaseTransport

#: connect 5 s; read, write and pool 30 s.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

MASK = "***"

# Whatever the value, a query parameter with a secret's name is masked. This
# also covers URLs of clients we do not know about (another SDK instance,
# a secret never registered).
_SECRET_QUERY = re.compile(r"(?i)\b(apikey|auth|token)(=|%3D)[^&\s\"'#<>]*")

_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _variants(secret: str) -> set[str]:
    encoded = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    # A server echoing the URL back may lower-case the escapes.
    encoded |= {_ESCAPE.sub(lambda m: m.group().lower(), v) for v in encoded}
    # Echoes come back inside HTML pages and JSON strings, and excerpts are reprs.
    escaped = {
        html.escape(secret),
        html.escape(secret, quote=False),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret).replace("/", "\\/")[1:-1],
        repr(secret)[1:-1],
    }
    return {v for v in (secret, *encoded, *escaped) if v}


class Redactor:
    """Scrubs known secret values (raw and URL-encoded) and secret-named query
    parameters from text and from decoded JSON."""

    __slots__ = ("_variants",)

    def __init__(self, secrets: Iterable[str]):
        found: set[str] = set()
        for secret in secrets:
            if secret:
                found |= _variants(secret)
        # Longest first: a secret that contains another must go whole.
        self._variants = tuple(sorted(found, key=len, reverse=True))

    def contains_secret(self, text: str) -> bool:
        return any(v in text for v in self._variants)

    def scrub(self, text: str) -> str:
        for variant in self._variants:
            if variant in text:
                text = text.replace(variant, MASK)
        return _SECRET_QUERY.sub(rf"\1\2{MASK}", text)

    def scrub_obj(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub_obj(k): self.scrub_obj(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_obj(v) for v in value]
        return value


class _LiveSecrets:
    """The secrets of every open client, so log records can be scrubbed by value
    too. Counted: two clients may share one key."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._redactor: Redactor | None = None

    @property
    def redactor(self) -> Redactor:
        # Built when a record needs it, not on every open: rebuilding over every
        # live secret per client made opening N clients cost O(N^2).
        if self._redactor is None:
            self._redactor = Redactor(self._counts)
        return self._redactor

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self._counts[secret] = self._counts.get(secret, 0) + 1
        self._redactor = None

    def remove(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            left = self._counts.get(secret, 0) - 1
            if left > 0:
                self._counts[secret] = left
            else:
                self._counts.pop(secret, None)
        self._redactor = None


_live_secrets = _LiveSecrets()


class _LogScrubber(logging.Filter):
    """Masks secrets in records of httpx and httpcore without silencing them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        redactor = _live_secrets.redactor
        if redactor.contains_secret(message) or _SECRET_QUERY.search(message):
            record.msg = redactor.scrub(message)
            record.args = ()
        return True


_SCRUBBED_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
_log_scrubber = _LogScrubber()


def _install_log_scrubber() -> None:
    # Filters on a logger do not see records its children propagate, so each
    # logger that may print a URL or headers gets one.
    for name in _SCRUBBED_LOGGERS:
        target = logging.getLogger(name)
        if _log_scrubber not in target.filters:
            target.addFilter(_log_scrubber)


_install_log_scrubber()


@functools.cache
def _default_tls() -> ssl.SSLContext:
    # Building a verifying TLS context costs tens of milliseconds; one shared,
    # never modified, keeps a process with many merchants' clients cheap to start.
    return httpx.create_ssl_context()


async def _sleep(seconds: float) -> None:
    # One indirection, so tests can record the backoff instead of waiting it out.
    await anyio.sleep(seconds)


def asgi_transport(app: Any) -> httpx.AsyncBaseTransport:
    """An in-process transport to an ASGI app (the sandbox), for ``transport=``."""
    return httpx.ASGITransport(app=app)


def _scrub_chain(error: BaseException, redactor: Redactor) -> None:
    """Scrub secrets from the text of every exception in a cause chain, in place.

    Tracebacks print each exception of the chain, so the one we raise being
    clean is not enough.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    pending: list[BaseException] = []
    while current is not None or pending:
        if current is None:
            current = pending.pop()
        if id(current) in seen:
            current = None
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            current.strerror = redactor.scrub(current.strerror)
        current.args = tuple(redactor.scrub(a) if isinstance(a, str) else a for a in current.args)
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redactor.scrub(n) if isinstance(n, str) else n for n in notes]
        if current.__context__ is not None and current.__context__ is not current.__cause__:
            pending.append(current.__context__)
        current = current.__cause__


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


_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRYABLE_TRANSPORT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
EXCERPT_CHARS = 200
SCRUB_LIMIT = 64 * 1024


@attrs.frozen
class _Call:
    method: str
    path: str
    query: dict[str, Any]
    json_body: Any
    creates: bool
    operation: str
    op_params: dict[str, Any]

    def unknown(self, reason: str, redactor: Redactor, cause: BaseException) -> OutcomeUnknownError:
        _scrub_chain(cause, redactor)
        error = OutcomeUnknownError(
            f"{self.operation}: {reason}; the request may have reached the server and was "
            "not sent again; look the outcome up before trying again",
            operation=self.operation,
            params=self.op_params,
            method=self.method,
            path=self.path,
        )
        error.__cause__ = cause
        return error


class ClientBase:
    """What both SDK clients share around their ``HTTPCore``: the lifecycle."""

    _core: HTTPCore

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this object made (never one passed in)."""
        await self._core.aclose()


_C = TypeVar("_C", bound=ClientBase)


class _Retry(Exception):
    """Internal: this attempt failed in a way a read may retry."""

    def __init__(self, error: Exception, delay: float | None = None):
        super().__init__()
        self.error = error
        self.delay = delay


class HTTPCore:
    """One logical request at a time, with the retry and error rules of DESIGN.md."""

    def __init__(
        self,
        *,
        base_url: str,
        secrets: Mapping[str, str],
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        deadline: float | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_after_cap: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
    ):
        if type(max_retries) is not int or max_retries < 0:
            raise ValueError("max_retries must be a non-negative int")
        if deadline is not None and not deadline > 0:
            raise ValueError("deadline must be positive seconds or None")
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        self.base_url = base_url.rstrip("/")
        self._secrets = dict(secrets)
        self.redactor = Redactor(self._secrets.values())
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.deadline = deadline
        self.retry_after_cap = retry_after_cap
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._transport = transport
        self._client = http_client
        self._owns_client = http_client is None
        self._closed = False
        self._random = random.Random()
        _live_secrets.add(self._secrets.values())

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("this client is closed")
        if self._client is None:
            # Made on first use, so inside the running event loop.
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                transport=self._transport,
                verify=_default_tls(),
                headers={"User-Agent": f"qrispay/{__version__}"},
            )
        return self._client

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        _live_secrets.remove(self._secrets.values())
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        creates: bool = False,
        op_params: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Send, retrying what is safe; the decoded JSON body, or a typed error.

        ``creates`` marks a request that makes something on the server: it is
        sent again only when it provably never left, and an answer that does
        not say what happened raises ``OutcomeUnknownError``.
        """
        client = self._http()
        retries = self.max_retries if max_retries is None else max_retries
        call = _Call(
            method=method,
            path=path,
            query={**(params or {}), **self._secrets},
            json_body=json_body,
            creates=creates,
            operation=operation,
            op_params=dict(op_params or {}),
        )
        end = None if self.deadline is None else anyio.current_time() + self.deadline
        attempt = 0
        while True:
            remaining = None if end is None else end - anyio.current_time()
            try:
                return await self._attempt(client, call, remaining)
            except _Retry as retry:
                failure = retry
            error = failure.error
            delay = failure.delay if failure.delay is not None else self._backoff(attempt)
            if attempt >= retries or (end is not None and anyio.current_time() + delay >= end):
                raise error
            attempt += 1
            logger.info(
                "retrying %s %s in %.2fs (attempt %d of %d) after %s",
                method,
                path,
                delay,
                attempt + 1,
                retries + 1,
                type(error).__name__,
            )
            await _sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return float(ceiling * (0.5 + self._random.random() / 2))

    async def _attempt(
        self, client: httpx.AsyncClient, call: _Call, remaining: float | None
    ) -> Any:
        method, path = call.method, call.path
        try:
            with anyio.fail_after(remaining):
                response = await client.request(
                    method, self.base_url + path, params=call.query, json=call.json_body
                )
        except TimeoutError as exc:
            # Our own total deadline: cancelled mid-flight, so it may have left.
            if call.creates:
                raise call.unknown(
                    "the total deadline passed mid-request", self.redactor, exc
                ) from exc
            raise self._transport_error(exc, method, path, deadline=True) from exc
        except httpx.DecodingError as exc:
            # The answer arrived (a broken compressed body): the request was served.
            unreadable = ResponseDecodeError(
                "the answer could not be decoded", method=method, path=path
            )
            unreadable.__cause__ = exc
            _scrub_chain(exc, self.redactor)
            if call.creates:
                raise call.unknown(
                    "the answer could not be decoded", self.redactor, unreadable
                ) from exc
            raise unreadable from exc
        except httpx.TransportError as exc:
            if call.creates and not isinstance(exc, _UNSENT):
                raise call.unknown(
                    f"{type(exc).__name__} after sending", self.redactor, exc
                ) from exc
            error = self._transport_error(exc, method, path)
            if isinstance(exc, (_UNSENT, _RETRYABLE_TRANSPORT)):
                raise _Retry(error) from exc
            raise error from exc

        status = response.status_code
        content = response.content
        body: Any
        try:
            body = json.loads(content) if content else None
            decoded = True
        except (ValueError, RecursionError):
            body, decoded = None, False

        logger.debug("%s %s -> %d (%d bytes)", method, path, status, len(content))

        if status >= 400 or (decoded and body_error(body) is not None):
            failed = self._status_error(response, body, decoded, method, path)
            # An error inside a 2xx that is not a plain refusal ("Internal server
            # error", or a message we cannot place) may come after the work was done.
            ambiguous = (
                status == 408
                or status >= 500
                or (status < 400 and type(failed) in (ServerError, APIStatusError))
            )
            if call.creates and ambiguous:
                raise call.unknown(f"HTTP {status}", self.redactor, failed)
            if isinstance(failed, RateLimitError):
                if failed.retry_after is not None and failed.retry_after > self.retry_after_cap:
                    raise failed
                raise _Retry(failed, failed.retry_after)
            if ambiguous:
                raise _Retry(failed)
            raise failed

        if not decoded:
            undecoded = ResponseDecodeError(
                "the answer is not JSON",
                excerpt=self._excerpt(response),
                status_code=status,
                method=method,
                path=path,
            )
            if call.creates:
                raise call.unknown("the answer could not be read", self.redactor, undecoded)
            raise undecoded
        return body

    def _excerpt(self, response: httpx.Response) -> str:
        # Scrubbed whole, then cut: a cut first could leave half a secret behind.
        text = response.content[:SCRUB_LIMIT].decode("utf-8", "replace")
        return self.redactor.scrub(text)[:EXCERPT_CHARS]

    def _status_error(
        self,
        response: httpx.Response,
        body: Any,
        decoded: bool,
        method: str,
        path: str,
    ) -> APIStatusError:
        status = response.status_code
        message = body_error(body) if decoded else None
        if message is None:
            if decoded and isinstance(body, dict) and isinstance(body.get("message"), str):
                message = body["message"]
            elif decoded:
                message = response.reason_phrase or f"HTTP {status}"
            else:
                excerpt = " ".join(self._excerpt(response).split())
                message = f"{response.reason_phrase or 'error'}: {excerpt}".strip(": ")
        message = self.redactor.scrub(message)
        cls = _error_class(status, message)
        safe_body = self.redactor.scrub_obj(body) if decoded else self._excerpt(response)
        common: dict[str, Any] = {
            "status_code": status,
            "body": safe_body,
            "method": method,
            "path": path,
        }
        if cls is RateLimitError:
            retry_after = _parse_retry_after(response.headers.get("Retry-After"))
            return RateLimitError(message, retry_after=retry_after, **common)
        if cls is InvoiceNotCancellableError:
            found = _CURRENT_STATUS.search(message)
            current = (found.group(1) or found.group(2)).lower() if found else None
            return InvoiceNotCancellableError(message, status=current, **common)
        return cls(message, **common)

    def error_for(
        self, message: str, *, status_code: int, body: Any, method: str, path: str
    ) -> APIStatusError:
        """The typed error for a failure the caller recognised in a 2xx body."""
        message = self.redactor.scrub(message)
        cls = _error_class(status_code, message)
        common: dict[str, Any] = {
            "status_code": status_code,
            "body": self.redactor.scrub_obj(body),
            "method": method,
            "path": path,
        }
        if cls is RateLimitError:
            return RateLimitError(message, retry_after=None, **common)
        return cls(message, **common)

    def shape_error(self, why: str, body: Any, *, method: str, path: str) -> ResponseDecodeError:
        """A decoded answer not of the documented shape: the reason, and a short
        excerpt of the body, scrubbed before it is cut."""
        excerpt = self.redactor.scrub(repr(self.redactor.scrub_obj(body)))[:EXCERPT_CHARS]
        return ResponseDecodeError(
            self.redactor.scrub(f"unexpected answer: {why}"),
            excerpt=excerpt,
            method=method,
            path=path,
        )

    def _transport_error(
        self, exc: BaseException, method: str, path: str, *, deadline: bool = False
    ) -> APIConnectionError:
        _scrub_chain(exc, self.redactor)
        if deadline:
            error: APIConnectionError = APITimeoutError(
                "the total deadline passed", method=method, path=path
            )
        else:
            detail = self.redactor.scrub(str(exc)) or type(exc).__name__
            cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
            error = cls(f"{type(exc).__name__}: {detail}", method=method, path=path)
        # Kept for a retried error, which is raised later outside this except.
        error.__cause__ = exc
        return error

    def __repr__(self) -> str:
        return f"HTTPCore(base_url={self.base_url!r})"
