"""The HTTP core shared by both clients: the only module that imports httpx.

It sends one logical request with retries (``HTTPCore``), leaves what a
failure means to ``_failures`` and the secrets to ``_redact``, and holds
what both clients share (``ClientBase``): argument checks and lifecycle.
"""

from __future__ import annotations

import functools
import logging
import random
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import attrs
import httpx

from . import _failures, _json
from ._failures import Failure, TransportKinds, body_error
from ._redact import Redactor, install_log_scrubber, live_secrets, scrub_chain
from ._version import __version__
from .errors import APIError, APIStatusError, OutcomeUnknownError, ResponseDecodeError

__all__ = [
    "DEFAULT_TIMEOUT",
    "Connection",
    "Answered",
    "HTTPCore",
    "Poster",
    "Redactor",
    "Timeout",
    "asgi_transport",
    "outcome_unknown",
]

logger = logging.getLogger("qrispay")

# Re-exported so the clients can name httpx types without importing httpx.
AsyncClient = httpx.AsyncClient
Timeout = httpx.Timeout
Transport = httpx.AsyncBaseTransport

#: connect 5 s; read, write and pool 30 s.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)

_KINDS = TransportKinds(
    unsent=(httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout),
    retryable=(httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError),
    timeout=(httpx.TimeoutException,),
    undecodable=(httpx.DecodingError,),
)
# What an attempt may raise that ends as a Failure: our deadline, and the
# transport's errors. Anything else (httpx's other errors, a bug) propagates as it is.
_FAILED_ATTEMPT = (TimeoutError, httpx.DecodingError, httpx.TransportError)


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


_NOT_SENT_AGAIN = "the request may have reached the server and was not sent again"
_ANSWERED = "the request may have succeeded and was not sent again"


def outcome_unknown(
    reason: str,
    cause: BaseException,
    *,
    operation: str,
    params: dict[str, Any],
    method: str,
    path: str,
    answered: bool = False,
) -> OutcomeUnknownError:
    """The error for a request that is not idempotent and may have been acted
    on, with ``cause`` as its ``__cause__``. ``answered``: the server accepted
    it and only its answer is unreadable."""
    if answered:
        advice = f"{_ANSWERED}; look the outcome up first"
    else:
        advice = f"{_NOT_SENT_AGAIN}; look the outcome up before trying again"
    error = OutcomeUnknownError(
        f"{operation}: {reason}; {advice}",
        operation=operation,
        params=params,
        method=method,
        path=path,
    )
    error.__cause__ = cause
    return error


@attrs.frozen
class _Call:
    method: str
    path: str
    query: dict[str, Any]
    json_body: Any
    idempotent: bool
    operation: str
    op_params: dict[str, Any]

    def outcome_unknown(self, failure: Failure, redactor: Redactor) -> OutcomeUnknownError:
        scrub_chain(failure.cause, redactor)
        return outcome_unknown(
            failure.reason,
            failure.cause,
            operation=self.operation,
            params=self.op_params,
            method=self.method,
            path=self.path,
        )


@attrs.frozen
class Answered:
    """A successful answer's decoded body (any JSON value, so wrapped to tell
    it from a ``Failure``)."""

    body: Any


def _decode(content: bytes) -> tuple[Any, str | None]:
    """The decoded body, and None; or None and why it cannot be read."""
    if not content:
        return None, None
    if len(content) > _json.MAX_BODY:
        return None, f"the answer is larger than {_json.MAX_BODY} bytes"
    try:
        return _json.loads(content), None
    except _json.JSONTooDeep as exc:
        return None, str(exc)
    except ValueError:
        return None, "the answer is not JSON"


def _origin(base_url: str) -> str:
    """``scheme://host:port`` of ``base_url``: where a failed call went, for its
    error, without the user part, the path or the query."""
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        return "the server"
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return f"{url.scheme}://{host}:{port}" if port else f"{url.scheme}://{host}"


def _counted(error: APIError, attempts: int) -> APIError:
    # Said once, on the error raised: a user sees that it was retried, not just waited.
    if attempts > 1:
        error.message = f"{error.message}; {attempts} attempts"
        error.args = (error.message,)
    return error


@attrs.frozen
class Connection:
    """How a client reaches its server, as its constructor was given it (in
    the order of the clients' signatures)."""

    base_url: str
    timeout: float | httpx.Timeout
    max_retries: int
    http_client: httpx.AsyncClient | None
    transport: httpx.AsyncBaseTransport | None
    deadline: float | None


class HTTPCore:
    """One logical request at a time, with the retry and error rules of
    docs/design.md. Its arguments are checked by ``check_client_args``."""

    def __init__(
        self,
        connection: Connection,
        secrets: Mapping[str, str],
        *,
        retry_after_cap: float = 60.0,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        rng: random.Random | None = None,
    ):
        self.base_url = connection.base_url.rstrip("/")
        self.origin = _origin(self.base_url)
        self._secrets = dict(secrets)
        self.redactor = Redactor(self._secrets.values())
        timeout = connection.timeout
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = connection.max_retries
        self.deadline = connection.deadline
        self.retry_after_cap = retry_after_cap
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._transport = connection.transport
        self._client = connection.http_client
        self._owns_client = connection.http_client is None
        self._closed = False
        # A seeded one makes the jitter of retries, and so a faulty run, repeatable.
        self._random = rng or random.Random()
        install_log_scrubber()
        live_secrets.add(self._secrets.values())

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
        live_secrets.remove(self._secrets.values())
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
        idempotent: bool = True,
        op_params: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Send, retrying what is safe; the decoded JSON body, or a typed error.

        A request that is not ``idempotent`` (it makes something on the
        server) is sent again only when it provably never left, and an answer
        that does not say what happened raises ``OutcomeUnknownError``.
        """
        call = _Call(
            method=method,
            path=path,
            query={**(params or {}), **self._secrets},
            json_body=json_body,
            idempotent=idempotent,
            operation=operation,
            op_params=dict(op_params or {}),
        )
        return (await self._send(call, max_retries)).body

    async def _send(self, call: _Call, max_retries: int | None) -> Answered:
        client = self._http()
        retries = self.max_retries if max_retries is None else max_retries
        end = None if self.deadline is None else anyio.current_time() + self.deadline
        attempt = 0
        while True:
            remaining = None if end is None else end - anyio.current_time()
            outcome = await self._attempt(client, call, remaining)
            if isinstance(outcome, Answered):
                return outcome
            failure = outcome
            if failure.may_have_left and not call.idempotent:
                raise call.outcome_unknown(failure, self.redactor)
            if not failure.retryable or attempt >= retries:
                raise _counted(failure.error, attempt + 1)
            delay = failure.retry_after
            if delay is None:
                delay = self._backoff(attempt)
            if end is not None and anyio.current_time() + delay >= end:
                raise _counted(failure.error, attempt + 1)
            attempt += 1
            self._log_retry(call, delay, attempt, retries, failure)
            await _sleep(delay)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return float(ceiling * (0.5 + self._random.random() / 2))

    def _log_retry(
        self, call: _Call, delay: float, attempt: int, retries: int, failure: Failure
    ) -> None:
        error = type(failure.error).__name__
        logger.info(
            "retrying %s %s in %.2fs (attempt %d of %d) after %s",
            call.method,
            call.path,
            delay,
            attempt + 1,
            retries + 1,
            error,
            # For handlers that show progress (the command line on a terminal).
            extra={
                "retry_in": delay,
                "attempt": attempt + 1,
                "attempts": retries + 1,
                "error": error,
                "call": f"{call.method} {call.path}",
                "method": call.method,
                "path": call.path,
                "status": getattr(failure.error, "status_code", None),
            },
        )

    async def _attempt(
        self, client: httpx.AsyncClient, call: _Call, remaining: float | None
    ) -> Answered | Failure:
        """One send: the decoded body of a success, or a ``Failure``."""
        method, path = call.method, call.path
        try:
            with anyio.fail_after(remaining):
                response = await client.request(
                    method, self.base_url + path, params=call.query, json=call.json_body
                )
        except _FAILED_ATTEMPT as exc:
            return _failures.from_exception(
                exc, _KINDS, self.redactor, method, path, origin=self.origin
            )
        status = response.status_code
        content = response.content
        logger.debug("%s %s -> %d (%d bytes)", method, path, status, len(content))
        body, unreadable = _decode(content)
        if status < 400 and unreadable is None and body_error(body) is None:
            return Answered(body)
        return _failures.from_answer(
            response,
            body,
            unreadable is None,
            redactor=self.redactor,
            retry_after_cap=self.retry_after_cap,
            method=method,
            path=path,
            unreadable=unreadable or "",
        )

    def error_for(
        self, message: str, *, status_code: int, body: Any, method: str, path: str
    ) -> APIStatusError:
        """The typed error for a failure the caller recognised in a 2xx body."""
        return _failures.status_error(
            status_code,
            self.redactor.scrub(message),
            body=self.redactor.scrub_obj(body),
            method=method,
            path=path,
        )

    def shape_error(self, why: str, body: Any, *, method: str, path: str) -> ResponseDecodeError:
        """A decoded answer not of the documented shape: the reason, and a short
        excerpt of the body, scrubbed before it is cut."""
        return _failures.shape_error(why, body, self.redactor, method=method, path=path)

    def __repr__(self) -> str:
        return f"HTTPCore(base_url={self.base_url!r})"


class Poster:
    """POSTs bodies to webhook receivers for ``qrispay.webhooks``: one attempt
    per call (the outbox owns the retries), ``timeout`` seconds at most, no
    redirects followed. ``secrets`` (parts of the receivers' URLs that may be
    credentials) are masked in httpx's log records while it is open.

    ``post`` answers the status, or None and why the attempt failed, in words
    that never quote the URL or the receiver's answer."""

    def __init__(
        self,
        *,
        timeout: float,
        secrets: Iterable[str] = (),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = float(timeout)
        self._secrets = [secret for secret in secrets if secret]
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        install_log_scrubber()
        live_secrets.add(self._secrets)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int | None, str | None]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                transport=self._transport,
                verify=_default_tls(),
                follow_redirects=False,
                headers={"User-Agent": f"qrispay/{__version__}"},
            )
        try:
            with anyio.fail_after(self.timeout):
                answer = await self._client.post(url, content=body, headers=dict(headers))
        except (TimeoutError, httpx.TimeoutException):
            return None, f"no answer within {self.timeout:g} s"
        except httpx.ConnectError:
            return None, "cannot connect"
        except (httpx.TransportError, httpx.DecodingError) as exc:
            return None, f"transport error ({type(exc).__name__})"
        return answer.status_code, None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        live_secrets.remove(self._secrets)
        self._secrets = []
