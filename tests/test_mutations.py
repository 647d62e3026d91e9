"""The check-payment feed client: every real-world row read or reported, none lost."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrispay import (
    JAKARTA,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Mutation,
    MutationBatch,
    MutationClient,
    MutationType,
    NotFoundError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

pytestmark = pytest.mark.anyio

FEED = "https://mutasiv1.autsc.my.id"
CREDS = ("448a7240-c638-437c-a9b2-a8c31c346", "OK589309", "589309:Zgekx7TOUzmB0tEMc6GD8nipaRr")

DOC_EXAMPLE = {
    "status": "success",
    "data": [
        {
            "date": "2023-05-15 14:30:22",
            "amount": 25000,
            "type": "CR",
            "qris": "static",
            "brand_name": "GOPAY",
            "issuer_reff": "id92919187272",
            "buyer_reff": "NOBU /GOPAY",
            "balance": 75000,
        },
        {
            "date": "2023-05-15 11:15:10",
            "amount": 50000,
            "type": "CR",
            "qris": "static",
            "brand_name": "GOPAY",
            "issuer_reff": "id8281661618",
            "buyer_reff": "NOBU /GOPAY",
            "balance": 100000,
        },
    ],
    "creator": "t.me/RafanSTR",
}

BASE_ROW: dict[str, Any] = {
    "date": "2025-07-09 10:00:00",
    "amount": 10000,
    "type": "CR",
    "qris": "static",
    "brand_name": "GOPAY",
    "issuer_reff": "id81819911",
    "buyer_reff": "NOBU / GOPAY",
    "balance": 50000,
}


@pytest.fixture
def feed_api():
    with respx.mock(base_url=FEED, assert_all_called=False) as router:
        yield router


def client(**kw: Any) -> MutationClient:
    return MutationClient(*CREDS, **kw)


async def fetch_rows(feed_api: respx.MockRouter, data: Any) -> MutationBatch:
    feed_api.get("/check-payment").respond(json={"status": "success", "data": data})
    async with client() as feed:
        return await feed.fetch()


async def test_documented_example(feed_api: respx.MockRouter) -> None:
    route = feed_api.get("/check-payment").respond(json=DOC_EXAMPLE)
    async with client() as feed:
        batch = await feed.fetch()
    params = route.calls.last.request.url.params
    assert (params["auth"], params["merchant"], params["token"]) == CREDS
    assert len(batch) == 2
    assert batch.rejected == ()
    newest = batch[0]
    assert newest == Mutation(
        date=datetime(2023, 5, 15, 14, 30, 22, tzinfo=JAKARTA),
        amount=25000,
        type=MutationType.CREDIT,
        qris="static",
        brand_name="GOPAY",
        issuer_reff="id92919187272",
        buyer_reff="NOBU /GOPAY",
        balance=75000,
    )
    assert newest.key == "id92919187272"
    assert [row.amount for row in batch] == [25000, 50000]


async def test_documented_payment_type_example(feed_api: respx.MockRouter) -> None:
    batch = await fetch_rows(
        feed_api, [{**BASE_ROW, "date": "2025-07-09 00:00:00", "type": "payment"}]
    )
    assert batch[0].type is MutationType.CREDIT
    assert batch[0].raw_type == "payment"


# (changes to BASE_ROW, expected field values or a fragment of the rejection reason)
QUIRKS: list[tuple[str, dict[str, Any], dict[str, Any] | str]] = [
    ("amount digit string", {"amount": "10000"}, {"amount": 10000}),
    ("amount thousands dot", {"amount": "35.002"}, {"amount": 35002}),
    ("amount Rp prefix", {"amount": "Rp 10.000"}, {"amount": 10000}),
    ("amount IDR prefix", {"amount": "IDR 1.250.000"}, {"amount": 1250000}),
    ("balance with dots", {"balance": "1.050.000"}, {"balance": 1050000}),
    ("balance null", {"balance": None}, {"balance": None}),
    ("balance missing", {"balance": ...}, {"balance": None}),
    ("type lower cr", {"type": "cr"}, {"type": MutationType.CREDIT}),
    ("type credit", {"type": "Credit"}, {"type": MutationType.CREDIT}),
    ("type IN", {"type": "IN"}, {"type": MutationType.CREDIT}),
    ("type payment", {"type": "PAYMENT"}, {"type": MutationType.CREDIT}),
    ("type DB", {"type": "DB"}, {"type": MutationType.DEBIT}),
    ("type debit", {"type": "debit"}, {"type": MutationType.DEBIT}),
    ("type OUT", {"type": "out"}, {"type": MutationType.DEBIT}),
    ("type unknown word", {"type": "REVERSAL"}, {"type": MutationType.UNKNOWN}),
    ("type number", {"type": 1}, {"type": MutationType.UNKNOWN}),
    ("type missing", {"type": ...}, {"type": MutationType.UNKNOWN}),
    (
        "date without seconds",
        {"date": "2025-07-09 10:00"},
        {"date": datetime(2025, 7, 9, 10, 0, tzinfo=JAKARTA)},
    ),
    (
        "date day first",
        {"date": "09/07/2025 10:00:30"},
        {"date": datetime(2025, 7, 9, 10, 0, 30, tzinfo=JAKARTA)},
    ),
    (
        "date day first no seconds",
        {"date": "09/07/2025 10:00"},
        {"date": datetime(2025, 7, 9, 10, 0, tzinfo=JAKARTA)},
    ),
    ("empty issuer_reff", {"issuer_reff": ""}, {"issuer_reff": ""}),
    ("null issuer_reff", {"issuer_reff": None}, {"issuer_reff": ""}),
    ("numeric issuer_reff", {"issuer_reff": 12345}, {"issuer_reff": "12345"}),
    ("null texts", {"qris": None, "brand_name": None, "buyer_reff": None}, {"brand_name": ""}),
    ("extra field", {"note": "hello"}, {"amount": 10000}),
    ("amount decimal comma", {"amount": "10.000,00"}, "amount"),
    ("amount decimal point", {"amount": "10000.0"}, "amount"),
    ("amount float", {"amount": 10000.0}, "amount"),
    ("amount bool", {"amount": True}, "amount"),
    ("amount null", {"amount": None}, "amount"),
    ("amount negative", {"amount": -10000}, "amount"),
    ("amount word", {"amount": "sepuluh ribu"}, "amount"),
    ("amount missing", {"amount": ...}, "amount is missing"),
    ("balance float", {"balance": 1.5}, "balance"),
    ("balance word", {"balance": "n/a"}, "balance"),
    ("date not a string", {"date": 1720497600}, "date"),
    ("date null", {"date": None}, "date"),
    ("date garbage", {"date": "kemarin"}, "date"),
    ("date impossible", {"date": "2025-02-30 10:00:00"}, "date"),
    ("date missing", {"date": ...}, "date is missing"),
    ("issuer_reff object", {"issuer_reff": {"id": 1}}, "issuer_reff"),
    ("brand_name list", {"brand_name": ["GOPAY"]}, "brand_name"),
]


@pytest.mark.parametrize(("name", "changes", "expected"), QUIRKS, ids=[q[0] for q in QUIRKS])
async def test_quirky_rows(
    feed_api: respx.MockRouter, name: str, changes: dict[str, Any], expected: dict[str, Any] | str
) -> None:
    row = {**BASE_ROW, **changes}
    row = {k: v for k, v in row.items() if v is not ...}
    good = {**BASE_ROW, "issuer_reff": "other"}
    batch = await fetch_rows(feed_api, [row, good])
    if isinstance(expected, str):
        assert [m.issuer_reff for m in batch] == ["other"]
        assert len(batch.rejected) == 1
        assert batch.rejected[0].raw == row
        assert expected in batch.rejected[0].reason
    else:
        assert batch.rejected == ()
        assert len(batch) == 2
        for field, value in expected.items():
            assert getattr(batch[0], field) == value


async def test_non_object_rows_are_rejected_not_dropped(feed_api: respx.MockRouter) -> None:
    batch = await fetch_rows(feed_api, ["garbage", None, 42, BASE_ROW, [1, 2]])
    assert len(batch) == 1
    assert [r.raw for r in batch.rejected] == ["garbage", None, 42, [1, 2]]
    assert all("object" in r.reason for r in batch.rejected)


async def test_a_batch_with_nothing_readable_still_returns(feed_api: respx.MockRouter) -> None:
    bad = [{"date": "?", "amount": "?"}, {"amount": 1.5}]
    batch = await fetch_rows(feed_api, bad)
    assert len(batch) == 0
    assert len(batch.rejected) == 2


@pytest.mark.parametrize("body", [{"status": "success"}, {"status": "success", "data": None}])
async def test_missing_or_null_data_is_an_empty_batch(
    feed_api: respx.MockRouter, body: dict[str, Any]
) -> None:
    feed_api.get("/check-payment").respond(json=body)
    async with client() as feed:
        batch = await feed.fetch()
    assert (len(batch), batch.rejected) == (0, ())


async def test_composite_key_when_issuer_reff_is_empty(feed_api: respx.MockRouter) -> None:
    row = {**BASE_ROW, "issuer_reff": ""}
    first = await fetch_rows(feed_api, [row])
    again = await fetch_rows(feed_api, [dict(row)])
    other = await fetch_rows(feed_api, [{**row, "balance": 60000}])
    assert first[0].key == again[0].key
    assert first[0].key != other[0].key
    assert first[0].key not in ("", BASE_ROW["issuer_reff"])


@pytest.mark.parametrize(
    ("status", "message", "error_class"),
    [
        (400, "auth, merchant and token parameters are required", BadRequestError),
        (401, "Invalid auth or token", AuthenticationError),
        (404, "API endpoint not found", NotFoundError),
        (429, "Hit limit", RateLimitError),
        (500, "Internal server error", ServerError),
    ],
)
async def test_documented_errors(
    feed_api: respx.MockRouter,
    sleeps: list[float],
    status: int,
    message: str,
    error_class: type[APIStatusError],
) -> None:
    feed_api.get("/check-payment").respond(status, json={"status": "false", "message": message})
    async with client(max_retries=0) as feed:
        with pytest.raises(error_class) as caught:
            await feed.fetch()
    assert message in str(caught.value)
    assert caught.value.status_code == status


@pytest.mark.parametrize(
    ("message", "error_class"),
    [
        ("Invalid auth or token", AuthenticationError),
        ("Hit limit", RateLimitError),
        ("Internal server error", ServerError),
        ("auth, merchant and token parameters are required", BadRequestError),
        ("Something else went wrong", APIStatusError),
    ],
)
async def test_http_200_with_status_false_is_an_error(
    feed_api: respx.MockRouter, sleeps: list[float], message: str, error_class: type[APIStatusError]
) -> None:
    feed_api.get("/check-payment").respond(200, json={"status": "false", "message": message})
    async with client(max_retries=0) as feed:
        with pytest.raises(error_class, match=message) as caught:
            await feed.fetch()
    assert caught.value.status_code == 200


async def test_rate_limit_retry_after_header(
    feed_api: respx.MockRouter, sleeps: list[float]
) -> None:
    feed_api.get("/check-payment").respond(
        429, headers={"Retry-After": "45"}, json={"status": "false", "message": "Hit limit"}
    )
    async with client(max_retries=0) as feed:
        with pytest.raises(RateLimitError) as caught:
            await feed.fetch()
    assert caught.value.retry_after == 45.0


async def test_max_retries_override_per_fetch(
    feed_api: respx.MockRouter, sleeps: list[float]
) -> None:
    route = feed_api.get("/check-payment").respond(500, json={"status": "false", "message": "x"})
    async with client(max_retries=3) as feed:
        with pytest.raises(ServerError):
            await feed.fetch(max_retries=0)
        assert route.call_count == 1
        with pytest.raises(ServerError):
            await feed.fetch()
    assert route.call_count == 5


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html><body>Cloudflare</body></html>"),
        httpx.Response(200, text='{"status": "success", "data": [{"date":'),
        httpx.Response(200, json=[BASE_ROW]),
        httpx.Response(200, json={"status": "success", "data": {"0": BASE_ROW}}),
        httpx.Response(200, json={"status": "success", "data": "none"}),
    ],
)
async def test_unreadable_answers(feed_api: respx.MockRouter, response: httpx.Response) -> None:
    feed_api.get("/check-payment").mock(return_value=response)
    async with client() as feed:
        with pytest.raises(ResponseDecodeError):
            await feed.fetch()


async def test_rows_already_read_are_not_read_again(feed_api: respx.MockRouter) -> None:
    changed = {**BASE_ROW, "issuer_reff": "r2", "balance": 1}
    answers = iter(
        [
            [BASE_ROW, {**BASE_ROW, "issuer_reff": "r2"}],
            [dict(BASE_ROW), changed],
        ]
    )
    feed_api.get("/check-payment").mock(
        side_effect=lambda request: httpx.Response(
            200, json={"status": "success", "data": next(answers)}
        )
    )
    async with client() as feed:
        first = await feed.fetch()
        second = await feed.fetch()
    # An equal raw row gives the very same model; a changed one is read anew.
    assert second[0] is first[0]
    assert second[1] is not first[1]
    assert second[1].balance == 1


async def test_custom_path_and_base_url() -> None:
    with respx.mock(base_url="http://mirror.test") as router:
        route = router.get("/v2/check").respond(json={"status": "success", "data": []})
        async with MutationClient(*CREDS, base_url="http://mirror.test", path="/v2/check") as feed:
            await feed.fetch()
    assert route.called


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ["date", "amount", "type", "qris", "brand_name", "issuer_reff", "buyer_reff", "balance"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=len(FIELDS)))
async def test_any_json_in_any_field_becomes_a_row_or_a_rejection(values: dict[str, Any]) -> None:
    row = {**BASE_ROW, **values}
    body = json.dumps({"status": "success", "data": [row, BASE_ROW]})

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    async with client(transport=httpx.MockTransport(answer)) as feed:
        batch = await feed.fetch()
    assert len(batch) + len(batch.rejected) == 2
    for mutation in batch:
        assert type(mutation.amount) is int
        assert mutation.amount >= 0
        assert mutation.date.tzinfo is not None
        assert mutation.key


@pytest.mark.parametrize(
    ("body", "error_class"),
    [
        ({"message": "Hit limit"}, RateLimitError),
        ({"status": "gagal", "message": "Invalid auth or token"}, AuthenticationError),
        ({"status": "gagal"}, ResponseDecodeError),
        ({}, ResponseDecodeError),
        ({"status": "success ", "data": None}, None),
        ({"data": [BASE_ROW]}, None),
    ],
)
async def test_only_an_answer_that_says_success_is_read_as_rows(
    feed_api: respx.MockRouter, sleeps: list[float], body: dict[str, Any], error_class: Any
) -> None:
    # An unrecognised failure read as "no rows" would let an invoice expire unseen.
    feed_api.get("/check-payment").respond(200, json=body)
    async with client(max_retries=0) as feed:
        if error_class is None:
            batch = await feed.fetch()
            assert len(batch) == len(body.get("data") or [])
        else:
            with pytest.raises(error_class):
                await feed.fetch()


async def test_a_date_out_of_range_costs_only_its_own_row(feed_api: respx.MockRouter) -> None:
    zero = {**BASE_ROW, "issuer_reff": "", "date": "0001-01-01 00:00:00"}
    batch = await fetch_rows(feed_api, [zero, BASE_ROW])
    assert [m.issuer_reff for m in batch] == [BASE_ROW["issuer_reff"]]
    assert "date" in batch.rejected[0].reason


async def test_a_shifted_answer_reuses_every_row_read_before(feed_api: respx.MockRouter) -> None:
    def row(n: int) -> dict[str, Any]:
        return {**BASE_ROW, "issuer_reff": f"r{n}", "balance": 50000 + n}

    bad = {"date": "kemarin", "amount": 1}
    first = [row(3), bad, row(2), row(1)]
    second = [row(5), row(4), *first[:-1]]  # two new rows; the oldest fell off
    third = [row(5), row(4), row(3), bad, {**row(2), "amount": 7}]  # a row changed
    answers = iter([first, second, third])
    feed_api.get("/check-payment").mock(
        side_effect=lambda request: httpx.Response(
            200, json={"status": "success", "data": next(answers)}
        )
    )
    async with client() as feed:
        one, two, three = await feed.fetch(), await feed.fetch(), await feed.fetch()
    assert [m.issuer_reff for m in two] == ["r5", "r4", "r3", "r2"]
    assert two[2] is one[0]
    assert two[3] is one[1]
    assert two.rejected[0] is one.rejected[0]
    assert three[2] is one[0]
    assert three[3].amount == 7
    assert three[3] is not one[1]
