"""The fast row path gives exactly what the canonical reader gives.

``_convert.mutation_from_row`` is the specification; ``_rows.AnswerReader`` reads
rows of the common shape on a fast path and reuses what it read of the last
answer. On arbitrary rows (odd shapes, string money, every date form, secrets
inside values, garbage), and across consecutive answers, the models, their
keys, the rejected rows and their reasons must be the canonical ones.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qrispay import _rows
from qrispay._convert import LIMITS, limit_row, mutation_from_row
from qrispay._redact import Redactor
from qrispay._rows import REMEMBERED_ROWS, AnswerReader, RowReader
from qrispay.models import Mutation, MutationBatch, RejectedRow

from .conftest import SECRET

REDACTOR = Redactor([SECRET, "tok3n"])
TEXT_FIELDS = ("qris", "brand_name", "issuer_reff", "buyer_reff")


def canonical(data: list[Any], redactor: Redactor = REDACTOR) -> MutationBatch:
    """What the feed client gave before the fast path: each row read by the
    canonical reader, text scrubbed, refusals kept with their reasons."""
    rows: list[Mutation] = []
    rejected: list[RejectedRow] = []
    for raw in data:
        try:
            row = mutation_from_row(raw)
        except ValueError as exc:
            limited = limit_row(raw)
            safe = redactor.scrub_obj(limited)
            reason = str(exc)
            if limited is raw and safe != raw:
                try:
                    mutation_from_row(safe)
                except ValueError as again:
                    reason = str(again)
            rejected.append(RejectedRow(safe, redactor.scrub(reason)))
            continue
        changes = {
            name: redactor.scrub(getattr(row, name))
            for name in TEXT_FIELDS
            if redactor.contains_secret(getattr(row, name))
        }
        rows.append(attrs.evolve(row, **changes) if changes else row)
    return MutationBatch(tuple(rows), tuple(rejected))


def same(got: MutationBatch, want: MutationBatch) -> None:
    assert len(got.rows) == len(want.rows)
    for a, b in zip(got.rows, want.rows, strict=True):
        assert a == b
        assert (a.key, a.raw_type, repr(a)) == (b.key, b.raw_type, repr(b))
        assert a.date.utcoffset() == b.date.utcoffset()
    assert got.rejected == want.rejected
    # 1 == 1.0 == True: the raw values must be the same types too.
    assert [repr(r.raw) for r in got.rejected] == [repr(r.raw) for r in want.rejected]


dates = st.one_of(
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    st.sampled_from(
        [
            "2025-01-01 10:00:00",
            "2025-01-01 10:00:59",
            "2025-01-01 10:00:60",
            "2025-01-01 10:00",
            "2025-01-01T10:00:00Z",
            "2025-01-01 10:00:00+07:00",
            "01/01/2025 10:00:00",
            " 2025-01-01 10:00:00",
            "2025-02-30 10:00:00",
            "0001-01-01 00:00:30",
            "2025-01-01 10:00:0\u0665",
            "kemarin",
            "",
        ]
    ),
    st.integers(),
    st.none(),
)
money = st.one_of(
    st.integers(min_value=-5, max_value=10**20),
    st.sampled_from(
        ["35.002", "Rp 10.000", "10000", "007", "10.000,00", "1e3", "", "-5", "\u0661"]
    ),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
types = st.sampled_from(["CR", "DB", "cr", " CR", "IN", "payment", "x", None, 1])
texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from([SECRET, f"ref-{SECRET}", "tok3n", " pad ", "", "x" * (LIMITS.max_text + 1)]),
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)
nested = st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=2), max_leaves=30)
fields = {
    "date": dates,
    "amount": money,
    "type": types,
    "qris": texts,
    "brand_name": texts,
    "issuer_reff": texts,
    "buyer_reff": texts,
    "balance": money,
}


@st.composite
def raw_rows(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 20)) == 0:
        return draw(st.one_of(st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2)))
    row = {
        name: draw(strategy)
        for name, strategy in fields.items()
        if draw(st.booleans()) or name in ("date", "amount")
    }
    if draw(st.integers(0, 6)) == 0:
        row[draw(st.sampled_from(["extra", "note", "date"]))] = draw(st.one_of(texts, nested))
    return row


answers = st.lists(raw_rows(), max_size=12)


@settings(max_examples=300, deadline=None)
@given(answers)
def test_one_answer_reads_as_the_canonical_reader_reads_it(data: list[Any]) -> None:
    same(AnswerReader(REDACTOR).read(data), canonical(data))


@settings(max_examples=200, deadline=None)
@given(answers, answers, st.integers(0, 12))
def test_a_following_answer_reads_as_if_read_alone(
    first: list[Any], new: list[Any], kept: int
) -> None:
    reader = AnswerReader(REDACTOR)
    reader.read(first)
    # The usual next answer: new rows on top of the last answer's, the oldest cut.
    second = new + first[: max(0, len(first) - len(new) + kept)]
    same(reader.read(second), canonical(second))
    same(reader.read(second), canonical(second))


def _twins(value: Any) -> list[Any]:
    """Values a row's value may turn into that Python may call equal to it."""
    near: list[Any] = [None, "", 0, False, math.nan]
    if type(value) in (int, bool, float) and math.isfinite(value):
        near += [int(value), float(value), bool(value), str(value), value + 1]
    if type(value) is str:
        near += [value + " ", value.upper(), value[:-1]]
    return [twin for twin in near if twin is not value]


# Rows the fast path reads, so that a wrong reuse shows as a wrong model.
readable = st.fixed_dictionaries(
    {
        "date": st.sampled_from(["2025-01-01 10:00:00", "2025-01-01 10:00:07"]),
        "amount": st.integers(0, 2),
        "type": st.sampled_from(["CR", "DB"]),
        "issuer_reff": st.text("ab", max_size=2),
    },
    optional={"balance": st.one_of(st.none(), st.integers(0, 2)), "qris": texts},
)
mixed = st.lists(st.one_of(raw_rows(), readable), max_size=12)


@st.composite
def altered(draw: st.DrawFn, first: list[Any]) -> list[Any]:
    """A following answer: new rows on top of some of the last one's, a few of
    them altered in one value or its type, in an order of their own."""
    kept = first[: draw(st.integers(0, len(first)))]
    second = [*draw(mixed), *kept]
    for i, raw in enumerate(second):
        if type(raw) is dict and raw and draw(st.integers(0, 3)) == 0:
            key = draw(st.sampled_from(sorted(raw)))
            second[i] = {**raw, key: draw(st.sampled_from(_twins(raw[key])))}
    if draw(st.booleans()):
        second = draw(st.permutations(second))
    return second


@pytest.mark.parametrize("dumps", [_rows.fast_dumps, None], ids=["orjson", "tuples"])
@settings(max_examples=200, deadline=None)
@given(first=mixed, data=st.data())
def test_rows_equal_to_the_last_answers_are_reused_only_when_exactly_equal(
    dumps: Any, first: list[Any], data: st.DataObject
) -> None:
    with mock.patch.object(_rows, "fast_dumps", dumps):
        reader = AnswerReader(REDACTOR)
        reader.read(first)
        for _ in range(2):
            second = data.draw(altered(first))
            same(reader.read(second), canonical(second))
            first = second


def test_a_value_only_the_standard_library_decodes_is_never_taken_for_another() -> None:
    good = {"date": "2025-01-01 10:00:00", "amount": 1, "type": "CR", "issuer_reff": "n"}
    for before, after in [(None, math.nan), (None, math.inf), (1, True), (1, 1.0), (1, "1")]:
        reader = AnswerReader(REDACTOR)
        for value in (before, after):
            # Rows, not bare values: a bare NaN is not equal to itself.
            data = [{**good, "balance": value}, [value], {**good, "note": value}]
            same(reader.read(data), canonical(data))


def test_the_minute_cache_is_filled_only_by_the_canonical_reader() -> None:
    reader = RowReader()
    good = {"date": "2025-01-01 10:00:05", "amount": 1, "type": "CR", "issuer_reff": "a"}
    assert reader.read(good) == mutation_from_row(good)
    # Same minute, impossible second: the fast path must not accept it.
    for second in ("60", "61", "6", "\u0665\u0665", "5 "):
        with pytest.raises(ValueError, match="date"):
            reader.read({**good, "date": f"2025-01-01 10:00:{second}"})


def test_rows_of_an_answer_beyond_the_cap_are_not_remembered() -> None:
    data = [
        {"date": "2025-01-01 10:00:00", "amount": i + 1, "type": "CR", "issuer_reff": f"r{i}"}
        for i in range(REMEMBERED_ROWS + 10)
    ]
    reader = AnswerReader(REDACTOR)
    batch = reader.read(data)
    assert len(batch) == REMEMBERED_ROWS + 10
    assert len(reader._fingerprints) == REMEMBERED_ROWS
    assert len(reader._items) == REMEMBERED_ROWS


def test_a_row_nested_hundreds_deep_is_rejected_and_the_rest_is_read() -> None:
    deep: Any = 1
    for _ in range(600):
        deep = [deep]
    good = {"date": "2025-01-01 10:00:00", "amount": 5, "type": "CR", "issuer_reff": "g"}
    data = [good, {**good, "issuer_reff": "d", "extra": deep}]
    batch = AnswerReader(REDACTOR).read(data)
    assert [row.issuer_reff for row in batch] == ["g"]
    (bad,) = batch.rejected
    assert bad.reason == f"extra: nested deeper than {LIMITS.max_depth} levels"
    # What is kept of it can be shown and compared without recursion.
    assert bad.raw["extra"] == "<nested too deeply>"
    repr(bad)


def test_a_huge_value_is_rejected_and_cut_short() -> None:
    data = [{"date": "2025-01-01 10:00:00", "amount": 5, "type": "CR", "buyer_reff": "x" * 10**6}]
    (bad,) = AnswerReader(REDACTOR).read(data).rejected
    assert bad.reason.startswith(f"buyer_reff: text longer than {LIMITS.max_text} characters")
    assert len(bad.raw["buyer_reff"]) < 300
