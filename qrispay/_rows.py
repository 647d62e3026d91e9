"""Reading a feed answer's rows fast, with the canonical reader as the rule.

``_convert.mutation_from_row`` is the specification of how a row is read. Most
rows of a real feed have one exact shape (known keys only, the date as
``YYYY-MM-DD HH:MM:SS``, money as ints or plain digits, ``CR``/``DB``, text
as text); those are read here with a few type checks and dictionary lookups.
Every other row, and every row the fast path has any doubt about, goes to the
canonical reader, so a fast row and a canonical row are the same model and a
refused row has the same reason (tests/test_rows.py proves it on arbitrary
rows).

Dates: the datetime of each minute is cached once the canonical reader has
read a full date of that minute; a row of that minute is then its minute plus
its seconds. Nothing enters the cache that the canonical reader did not read.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Final

import attrs

from ._convert import LIMITS, limit_row, mutation_from_row
from ._json import fast_dumps
from ._redact import Redactor
from .models import Mutation, MutationBatch, MutationType, RejectedRow

__all__ = ["REMEMBERED_ROWS", "AnswerReader", "RowReader"]

_ORDER: Final = (
    "date",
    "amount",
    "type",
    "balance",
    "qris",
    "brand_name",
    "issuer_reff",
    "buyer_reff",
)
_FIELDS: Final = frozenset(_ORDER)
_PICK: Final = itemgetter(*_ORDER)
_SECONDS: Final = {f"{s:02d}": timedelta(seconds=s) for s in range(60)}
_TYPES: Final = {"CR": MutationType.CREDIT, "DB": MutationType.DEBIT}
_EXACT_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}", re.ASCII)
_MAX_TEXT: Final = LIMITS.max_text
# Plain digits up to this many are exactly what parse_money reads them as.
_MAX_DIGITS: Final = 18
_MAX_MINUTES: Final = 50_000


# A frozen attrs class sets each field through ``object.__setattr__``, which
# costs more than the rest of reading a row; the slots' own setters do the same
# job directly. Only for rows with a reference: their key is that reference.
_new = object.__new__
(
    _set_date,
    _set_amount,
    _set_type,
    _set_qris,
    _set_brand,
    _set_issuer,
    _set_buyer,
    _set_balance,
    _set_raw_type,
    _set_key,
) = (
    Mutation.__dict__[name].__set__
    for name in (
        "date",
        "amount",
        "type",
        "qris",
        "brand_name",
        "issuer_reff",
        "buyer_reff",
        "balance",
        "raw_type",
        "key",
    )
)


def _model(
    date: datetime,
    amount: int,
    kind: MutationType,
    qris: str,
    brand: str,
    issuer: str,
    buyer: str,
    balance: int | None,
    raw_type: str,
) -> Mutation:
    if not issuer:
        return Mutation(date, amount, kind, qris, brand, issuer, buyer, balance, raw_type=raw_type)
    row: Mutation = _new(Mutation)
    _set_date(row, date)
    _set_amount(row, amount)
    _set_type(row, kind)
    _set_qris(row, qris)
    _set_brand(row, brand)
    _set_issuer(row, issuer)
    _set_buyer(row, buyer)
    _set_balance(row, balance)
    _set_raw_type(row, raw_type)
    _set_key(row, issuer)
    return row


def _money(value: Any) -> int | None:
    """The amount the canonical reader gives for a plain value, or None when
    only the canonical reader can say."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is str and value.isdigit() and value.isascii() and len(value) <= _MAX_DIGITS:
        return int(value)
    return None


class RowReader:
    """Reads rows into ``Mutation`` models; a row that cannot be read raises
    ``ValueError`` with the canonical reader's reason."""

    __slots__ = ("_minutes",)

    def __init__(self) -> None:
        self._minutes: dict[str, datetime] = {}

    def read(self, raw: Any) -> Mutation:
        """``raw`` as a model, or ``ValueError`` saying why it cannot be read."""
        row = self._fast(raw)
        if row is not None:
            return row
        row = mutation_from_row(raw)
        self._learn(raw["date"], row.date)
        return row

    def _fast(self, raw: Any) -> Mutation | None:
        # Every check inline: this runs once per new row, and a call costs more
        # than most of the checks.
        if type(raw) is not dict:
            return None
        if len(raw) == len(_FIELDS):  # then all of them, or some other key: one lookup
            try:
                date, amount, raw_type, balance, qris, brand, issuer, buyer = _PICK(raw)
            except KeyError:
                return None
        elif raw.keys() <= _FIELDS:
            date, amount, raw_type, balance, qris, brand, issuer, buyer = map(raw.get, _ORDER)
        else:
            return None
        if type(date) is not str or len(date) != 19 or date[16] != ":":
            return None
        minute = self._minutes.get(date[:16])
        second = _SECONDS.get(date[17:])
        if minute is None or second is None:
            return None
        if type(amount) is not int or amount < 0:
            amount = _money(amount)
            if amount is None:
                return None
        kind = _TYPES.get(raw_type) if type(raw_type) is str else None
        if kind is None:
            return None
        if balance is not None and (type(balance) is not int or balance < 0):
            balance = _money(balance)
            if balance is None:
                return None
        if not (
            type(qris) is str
            and type(brand) is str
            and type(issuer) is str
            and type(buyer) is str
            and len(qris) <= _MAX_TEXT
            and len(brand) <= _MAX_TEXT
            and len(issuer) <= _MAX_TEXT
            and len(buyer) <= _MAX_TEXT
        ):  # the usual row, settled in one test; else a missing text may be None
            for text in (qris, brand, issuer, buyer):
                if (type(text) is not str or len(text) > _MAX_TEXT) and text is not None:
                    return None
        return _model(
            minute + second,
            amount,
            kind,
            qris or "",
            brand or "",
            issuer.strip() if issuer else "",
            buyer or "",
            balance,
            raw_type,
        )

    def _learn(self, text: object, date: datetime) -> None:
        # Only a date the canonical reader has just read, of the one exact shape.
        if type(text) is not str or not _EXACT_DATE.fullmatch(text):
            return
        if len(self._minutes) >= _MAX_MINUTES:
            self._minutes.clear()
        self._minutes[text[:16]] = date - timedelta(seconds=date.second)


_TEXT_FIELDS: Final = ("qris", "brand_name", "issuer_reff", "buyer_reff")
#: Rows of one answer remembered for the next one (the feed shows its most recent rows).
REMEMBERED_ROWS: Final = 5000


class AnswerReader:
    """Reads each answer's rows, reusing what it read of the previous answer.

    Most of a poll's answer is the previous answer shifted by the rows that
    arrived since. For each row of the last answer it keeps only a fingerprint
    (equal for two rows only if they are the same JSON value, key order and
    types included) next to what it was read as; a row of the new answer with
    the same fingerprint gets the same result. Rows beyond ``REMEMBERED_ROWS``
    are not remembered, so a merchant's memory is bounded whatever the feed sends.
    """

    __slots__ = ("_fingerprints", "_items", "_reader", "_redactor", "_shapes")

    def __init__(self, redactor: Redactor) -> None:
        self._reader = RowReader()
        self._redactor = redactor
        self._items: list[Mutation | RejectedRow] = []
        self._fingerprints: list[object] = []
        # Without orjson: one tuple per distinct key order, shared by its rows.
        self._shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def read(self, data: list[Any]) -> MutationBatch:
        """The rows of one answer's ``data``, in server order, and its rejects."""
        prints = _fingerprints(data, self._shapes)
        items: list[Mutation | RejectedRow | None] = [None] * len(data)
        fresh = self._reuse(prints, items)
        for i in fresh:
            prints[i] = _sized(prints[i])
        for i in self._read_fresh(data, fresh, items):
            prints[i] = object()  # beyond the limits: not kept, so read again next time
        done: list[Mutation | RejectedRow] = items  # type: ignore[assignment]
        self._remember(done, prints)
        rows = tuple([item for item in done if type(item) is Mutation])
        if len(rows) == len(done):
            return MutationBatch(rows)
        return MutationBatch(rows, tuple([i for i in done if type(i) is RejectedRow]))

    def forget(self) -> None:
        """Drop what was remembered (an answer without rows)."""
        self._items, self._fingerprints = [], []

    def _reuse(self, prints: list[object], items: list[Mutation | RejectedRow | None]) -> list[int]:
        """Fill ``items`` with what the last answer's equal rows were read as;
        the indices of the rows left to read."""
        before, before_items = self._fingerprints, self._items
        if not before:
            return list(range(len(prints)))
        try:
            start = prints.index(before[0])
        except ValueError:
            start, end = 0, 0  # nothing lines up: every row is looked up
        else:
            # The usual answer: the last one shifted down by the rows that arrived
            # since. One comparison of the slices (in C) stands for a row-by-row one.
            end = min(len(prints), start + len(before))
            if prints[start:end] == before[: end - start]:
                items[start:end] = before_items[: end - start]
                prints[start:end] = before[: end - start]  # kept at their size
            else:
                end = start
        # Rows above the last answer's newest are new ones, read without a look-up.
        left, suspect = list(range(start)), range(end, len(prints))
        if not suspect:
            return left
        # Rows that moved, changed, or follow one that did: looked up by fingerprint.
        found = dict(zip(before, before_items, strict=True))
        for i in suspect:
            item = found.get(prints[i])
            if item is None:
                left.append(i)
            else:
                items[i], prints[i] = item, _sized(prints[i])
        return left

    def _read_fresh(
        self, data: list[Any], fresh: list[int], items: list[Mutation | RejectedRow | None]
    ) -> list[int]:
        """Read the rows at ``fresh`` into ``items``; the indices of rows beyond
        the limits."""
        read = self._reader.read
        models: list[int] = []
        beyond: list[int] = []
        for i in fresh:
            try:
                items[i] = read(data[i])
                models.append(i)
            except ValueError as exc:
                items[i], cut = self._rejection(data[i], exc)
                if cut:
                    beyond.append(i)
        # One search for every secret in every text of the new rows, not one per field.
        texts = "\x00".join([getattr(items[i], name) for i in models for name in _TEXT_FIELDS])
        if self._redactor.contains_secret(texts):
            for i in models:
                items[i] = self._scrubbed(items[i])  # type: ignore[arg-type]
        return beyond

    def _remember(self, items: list[Mutation | RejectedRow], prints: list[object]) -> None:
        if len(items) > REMEMBERED_ROWS:
            items, prints = items[:REMEMBERED_ROWS], prints[:REMEMBERED_ROWS]
        self._items, self._fingerprints = items, prints
        if len(self._shapes) > 64:
            self._shapes.clear()

    def _rejection(self, raw: Any, error: ValueError) -> tuple[RejectedRow, bool]:
        """The rejected row, and whether it was beyond the limits (cut to size)."""
        redactor = self._redactor
        limited = limit_row(raw)
        safe = redactor.scrub_obj(limited)
        reason = str(error)
        if limited is raw and safe != raw:
            # The reason quotes the value, cut short: a cut secret would not be
            # recognised, so the reason is taken from the scrubbed row instead.
            try:
                mutation_from_row(safe)
            except ValueError as again:
                reason = str(again)
        return RejectedRow(safe, redactor.scrub(reason)), limited is not raw

    def _scrubbed(self, row: Mutation) -> Mutation:
        redactor = self._redactor
        changes: dict[str, Any] = {
            name: redactor.scrub(value)
            for name in _TEXT_FIELDS
            if redactor.contains_secret(value := getattr(row, name))
        }
        return attrs.evolve(row, **changes) if changes else row


def _fingerprints(data: list[Any], shapes: dict[tuple[Any, ...], tuple[Any, ...]]) -> list[object]:
    """One fingerprint per row: equal only for rows that are the same JSON
    value (``0``, ``0.0`` and ``False`` are equal in Python but not the same
    row). A row without one gets a new ``object()``, equal to nothing: it is
    always read afresh."""
    if fast_dumps is None:
        return _tuple_prints(data, shapes)
    try:
        prints: list[object] = list(map(fast_dumps, data))
        text = b"".join(prints)  # type: ignore[arg-type]
    except TypeError:  # orjson.JSONEncodeError: a big integer, a lone surrogate, deep nesting
        prints = [_dumped(raw) for raw in data]
        text = b"".join([p for p in prints if type(p) is bytes])
    # orjson writes NaN and the infinities as null: a row with a null may hide
    # one (only the standard library decodes them), so it must show it has none.
    if b"null" in text:
        for i, (raw, dumped) in enumerate(zip(data, prints, strict=True)):
            if type(dumped) is bytes and b"null" in dumped and not _flat_finite(raw):
                prints[i] = object()
    return prints


def _sized(fingerprint: object) -> object:
    # orjson's bytes keep the 4 KiB buffer they were written in: a copy to keep.
    return bytes(memoryview(fingerprint)) if type(fingerprint) is bytes else fingerprint


def _dumped(raw: Any) -> object:
    assert fast_dumps is not None
    try:
        return fast_dumps(raw)
    except TypeError:
        return object()


def _flat_finite(raw: Any) -> bool:
    """Whether ``raw`` is a flat object with no float but finite ones."""
    if type(raw) is not dict:
        return raw is None
    for value in raw.values():
        kind = type(value)
        if kind is dict or kind is list or (kind is float and not math.isfinite(value)):
            return False
    return True


def _tuple_prints(data: list[Any], shapes: dict[tuple[Any, ...], tuple[Any, ...]]) -> list[object]:
    # Each row's shape (its keys in order and the types of its values; one
    # tuple shared by the rows of one shape) and its values. Flat rows of
    # text, ints, bools and nulls only.
    prints: list[object] = []
    for raw in data:
        if type(raw) is dict:
            values = tuple(raw.values())
            kinds = tuple(map(type, values))
            if float not in kinds and list not in kinds and dict not in kinds:
                shape = (tuple(raw), kinds)
                prints.append((shapes.setdefault(shape, shape), values))
                continue
        prints.append(object())
    return prints
