"""The one exception hierarchy of qrispay.

Every message, repr and attribute here is built from text that the HTTP core
has already scrubbed of secrets, so an exception can be logged or printed
as it is.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AllocationError",
    "AuthenticationError",
    "BadRequestError",
    "EventsOverflowError",
    "InvoiceCancelledError",
    "InvoiceExpiredError",
    "InvoiceNotCancellableError",
    "NotFoundError",
    "OutcomeUnknownError",
    "QrispayError",
    "RateLimitError",
    "ReconcilerStoppedError",
    "ResponseDecodeError",
    "ServerError",
    "InvoiceStateConflictError",
    "LeaseLostError",
    "StoreError",
    "StoreSchemaError",
    "TotalConflictError",
]


class QrispayError(Exception):
    """Base class of every error qrispay raises on purpose."""


class APIError(QrispayError):
    """An API call failed. ``method`` and ``path`` name the call (never its query)."""

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path

    def _where(self) -> str:
        if self.method and self.path:
            return f"{self.method} {self.path}"
        return self.path or self.method or ""

    def __str__(self) -> str:
        where = self._where()
        return f"{self.message} ({where})" if where else self.message

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self.message!r}, method={self.method!r}, path={self.path!r})"

    def __reduce__(self) -> Any:
        # Keyword-only constructors do not survive the default pickling.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[APIError], state: dict[str, Any]) -> APIError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class APIStatusError(APIError):
    """The server answered with an error: an error status, or an error body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        method: str | None = None,
        path: str | None = None,
    ):
        super().__init__(message, method=method, path=path)
        self.status_code = status_code
        self.body = body

    def _where(self) -> str:
        where = super()._where()
        return f"HTTP {self.status_code}, {where}" if where else f"HTTP {self.status_code}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"method={self.method!r}, path={self.path!r})"
        )


class BadRequestError(APIStatusError):
    """HTTP 400: the server refused the parameters."""


class AuthenticationError(APIStatusError):
    """HTTP 401, or a body saying the credentials are invalid."""


class NotFoundError(APIStatusError):
    """HTTP 404."""


class RateLimitError(APIStatusError):
    """HTTP 429, or a body saying "Hit limit". ``retry_after`` is in seconds, if known."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """HTTP 5xx."""


class InvoiceNotCancellableError(APIStatusError):
    """The invoice cannot be cancelled; ``status`` is its current status (e.g. ``"paid"``)."""

    def __init__(self, message: str, *, status: str | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.status = status


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """A timeout: connecting, reading, or the call's total deadline."""


class ResponseDecodeError(APIError):
    """The answer was not JSON, or not of the documented shape.

    ``excerpt`` is the start of the body, scrubbed of secrets.
    """

    def __init__(
        self,
        message: str,
        *,
        excerpt: str = "",
        status_code: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ):
        super().__init__(message, method=method, path=path)
        self.excerpt = excerpt
        self.status_code = status_code


class OutcomeUnknownError(APIError):
    """A request that creates something may have reached the server, and no answer
    says what happened. It was not sent again. Look the outcome up (for a
    withdrawal, in the history) before trying again.

    ``operation`` is the client method (e.g. ``"create_withdrawal"``), ``params``
    what was asked, without secrets. The underlying error is ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        params: dict[str, Any],
        method: str | None = None,
        path: str | None = None,
    ):
        super().__init__(message, method=method, path=path)
        self.operation = operation
        self.params = params

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, operation={self.operation!r}, "
            f"params={self.params!r}, method={self.method!r}, path={self.path!r})"
        )


class TotalConflictError(QrispayError):
    """An open invoice, or a recently closed one, already holds this total."""

    def __init__(self, total: int, invoice_id: str, message: str | None = None):
        super().__init__(
            message or f"total {total} is already held by invoice {invoice_id!r}",
        )
        self.total = total
        self.invoice_id = invoice_id

    def __reduce__(self) -> Any:
        return (type(self), (self.total, self.invoice_id, str(self)))


class AllocationError(QrispayError):
    """No free unique total is left for an amount."""


class EventsOverflowError(QrispayError):
    """An ``events()`` subscriber fell behind its buffer. It received every event up
    to the overflow and none after: subscribe again, and reconcile from state."""


class ReconcilerStoppedError(QrispayError):
    """The Reconciler stopped while ``wait_for_payment`` was waiting: the invoice
    is still open, and nothing is watching it."""


class _InvoiceClosedError(QrispayError):
    def __init__(self, invoice: Any, message: str | None = None):
        invoice_id = getattr(invoice, "invoice_id", invoice)
        super().__init__(message or f"invoice {invoice_id!r} {self._verb}")
        self.invoice = invoice

    _verb = "closed"

    def __reduce__(self) -> Any:
        return (type(self), (self.invoice, str(self)))


class InvoiceExpiredError(_InvoiceClosedError):
    """The invoice expired unpaid (from ``wait_for_payment``). ``invoice`` is the invoice."""

    _verb = "expired unpaid"


class InvoiceCancelledError(_InvoiceClosedError):
    """The invoice was cancelled unpaid (from ``wait_for_payment``)."""

    _verb = "was cancelled unpaid"


class StoreError(QrispayError):
    """A store cannot be used: its file is not a qrispay database, is damaged, or
    holds data this qrispay cannot read. Nothing was changed by the call that
    raised it."""


class StoreSchemaError(StoreError):
    """The store's schema is newer than this qrispay knows (written by a later
    release): upgrade qrispay, or open another store. It is never migrated
    backwards."""


class LeaseLostError(StoreError):
    """Another worker holds the merchant's poll lease now: this worker's commit
    was refused (fenced) and nothing of it was written. Its events are not
    published; the new holder judges the same rows again while the feed still
    shows them."""


class InvoiceStateConflictError(StoreError):
    """The invoice was closed by another worker first (paid, expired or
    cancelled): this worker's change to it was refused and nothing was written."""
