"""The async client of the check-payment mutation feed."""

from __future__ import annotations

import random
from typing import Any

from . import _client, _http
from ._rows import AnswerReader
from ._wire import DEFAULT_FEED_URL, FEED_PATH
from .errors import ResponseDecodeError
from .models import MutationBatch

__all__ = ["DEFAULT_FEED_URL", "MutationClient"]


class MutationClient(_client.ClientBase):
    """Async client of the check-payment feed (the merchant's recent mutations).

    ::

        async with MutationClient(auth, merchant, token) as feed:
            batch = await feed.fetch()
            for row in batch:            # newest first
                print(row.date, row.amount, row.type, row.issuer_reff)
            for bad in batch.rejected:   # rows that could not be read
                print(bad.reason, bad.raw)

    The server caches each answer for 30 seconds and counts every request
    against a quota: asking more often returns the same rows and spends
    quota. The ``Reconciler`` keeps to that schedule for you.
    """

    def __init__(
        self,
        auth: str,
        merchant: str,
        token: str,
        *,
        base_url: str = DEFAULT_FEED_URL,
        path: str = FEED_PATH,
        timeout: float | _http.Timeout = _http.DEFAULT_TIMEOUT,
        max_retries: int = 2,
        http_client: _http.AsyncClient | None = None,
        transport: _http.Transport | None = None,
        deadline: float | None = None,
        rng: random.Random | None = None,
    ):
        super().__init__(
            _http.Connection(base_url, timeout, max_retries, http_client, transport, deadline),
            credentials={"auth": auth, "merchant": merchant, "token": token},
            secrets={"auth": auth, "token": token},
            rng=rng,
            paths={"path": path},
        )
        self.merchant = merchant
        self.path = path
        self._rows = AnswerReader(self._core.redactor)

    @property
    def max_retries(self) -> int:
        return self._core.max_retries

    def __repr__(self) -> str:
        return (
            f"MutationClient(merchant={self.merchant!r}, base_url={self.base_url!r}, "
            "auth='***', token='***')"
        )

    async def fetch(self, *, max_retries: int | None = None) -> MutationBatch:
        """The feed's current answer: readable rows in server order, and rejects.

        One unreadable row never costs the others: it is returned in
        ``rejected`` with the reason. ``max_retries`` overrides the client's
        setting for this call (the Reconciler passes 0: it owns its backoff).
        """
        body = await self._core.request(
            "GET",
            self.path,
            operation="fetch",
            params={"merchant": self.merchant},
            max_retries=max_retries,
        )
        if not isinstance(body, dict):
            raise self._shape_error("the answer is not a JSON object", body)
        self._check_success(body)
        data = body.get("data")
        if data is None:
            self._rows.forget()
            return MutationBatch()
        if not isinstance(data, list):
            raise self._shape_error("data is not a list", body)
        return self._rows.read(data)

    def _check_success(self, body: dict[str, Any]) -> None:
        # Only an answer that says it succeeded may mean "no new rows": anything
        # else read as an empty batch would let an invoice expire unseen.
        status = body.get("status")
        if isinstance(status, str) and status.strip().lower() == "success":
            return
        if status is None and isinstance(body.get("data"), list):
            return
        message = body.get("message") or body.get("error")
        if isinstance(message, str) and message:
            raise self._core.error_for(
                message, status_code=200, body=body, method="GET", path=self.path
            )
        raise self._shape_error(f"status is {status!r}, not 'success'", body)

    def _shape_error(self, why: str, body: Any) -> ResponseDecodeError:
        return self._core.shape_error(why, body, method="GET", path=self.path)
