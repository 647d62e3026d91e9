"""The async client of the check-payment mutation feed."""

from __future__ import annotations

from typing import Any

import attrs

from . import _http
from ._convert import mutation_from_row
from ._wire import DEFAULT_FEED_URL, FEED_PATH
from .errors import ResponseDecodeError
from .models import Mutation, MutationBatch, RejectedRow

__all__ = ["DEFAULT_FEED_URL", "MutationClient"]

_TEXT_FIELDS = ("qris", "brand_name", "issuer_reff", "buyer_reff")


class MutationClient(_http.ClientBase):
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
    ):
        super().__init__(
            _http.Connection(base_url, timeout, max_retries, http_client, transport, deadline),
            credentials={"auth": auth, "merchant": merchant, "token": token},
            secrets={"auth": auth, "token": token},
            paths={"path": path},
        )
        self.merchant = merchant
        self.path = path
        # The rows of the last answer, by issuer_reff, with the raw row they were
        # read from: most of each poll is rows already read, and an equal raw
        # row gives an equal model, so it is reused instead of read again.
        self._known: dict[str, tuple[dict[str, Any], Mutation]] = {}
        # The last answer's raw rows and what each was read as, in order.
        self._last: tuple[list[Any], list[Mutation | RejectedRow]] = ([], [])

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
            return MutationBatch()
        if not isinstance(data, list):
            raise self._shape_error("data is not a list", body)
        return self._read_rows(data)

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

    def _read_rows(self, data: list[Any]) -> MutationBatch:
        # Most of an answer is the previous answer's rows, one run shifted by the
        # rows that arrived since: one list comparison (in C) finds that run, and
        # its rows are reused as they were read. The rest are read one by one.
        before, read_before = self._last
        start, count = _shared_run(before, data)
        items = [self._read_one(raw) for raw in data[:start]]
        items += read_before[:count]
        items += [self._read_one(raw) for raw in data[start + count :]]
        self._last = (data, items)
        if len(self._known) > 2 * len(data) + 64:
            # Forget rows that left the feed.
            self._known = {
                item.issuer_reff: self._known[item.issuer_reff]
                for item in items
                if type(item) is Mutation and item.issuer_reff in self._known
            }
        rows = tuple([item for item in items if type(item) is Mutation])
        if len(rows) == len(items):
            return MutationBatch(rows)
        return MutationBatch(rows, tuple([i for i in items if type(i) is RejectedRow]))

    def _read_one(self, raw: Any) -> Mutation | RejectedRow:
        # A row read before (by reference) and unchanged is reused as it was.
        try:
            hit = self._known[raw["issuer_reff"]]
        except (KeyError, TypeError, IndexError):
            hit = None
        if hit is not None and hit[0] == raw:
            return hit[1]
        try:
            row = self._scrubbed(mutation_from_row(raw))
        except ValueError as exc:
            return self._rejection(raw, exc)
        if row.issuer_reff and raw.get("issuer_reff") == row.issuer_reff:
            self._known[row.issuer_reff] = (raw, row)
        return row

    def _rejection(self, raw: Any, error: ValueError) -> RejectedRow:
        redactor = self._core.redactor
        safe = redactor.scrub_obj(raw)
        reason = str(error)
        if safe != raw:
            # The reason quotes the value, cut short: a cut secret would not be
            # recognised, so the reason is taken from the scrubbed row instead.
            try:
                mutation_from_row(safe)
            except ValueError as again:
                reason = str(again)
        return RejectedRow(safe, redactor.scrub(reason))

    def _scrubbed(self, row: Mutation) -> Mutation:
        redactor = self._core.redactor
        changes: dict[str, Any] = {
            name: redactor.scrub(value)
            for name in _TEXT_FIELDS
            if redactor.contains_secret(value := getattr(row, name))
        }
        return attrs.evolve(row, **changes) if changes else row

    def _shape_error(self, why: str, body: Any) -> ResponseDecodeError:
        return self._core.shape_error(why, body, method="GET", path=self.path)


def _shared_run(before: list[Any], now: list[Any]) -> tuple[int, int]:
    """Where the previous answer's rows start again in this one, and how many of
    them are there unchanged: ``now[start:start + count] == before[:count]``."""
    if not before or not now:
        return 0, 0
    newest = before[0]
    for start, raw in enumerate(now):
        if raw == newest:
            count = min(len(before), len(now) - start)
            if now[start : start + count] == before[:count]:
                return start, count
            return 0, 0
    return 0, 0
