"""No row and no answer can break the feed reader: limits, decoders, seeded jitter."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import httpx
import pytest

from qrispay import MutationClient, PollPolicy, Reconciler, ResponseDecodeError, ServerError, _json
from qrispay.polling import Schedule

from .conftest import SECRET

pytestmark = pytest.mark.anyio

GOOD = {"date": "2025-01-01 10:00:00", "amount": 5, "type": "CR", "issuer_reff": "g"}


def feed(content: bytes, **kw: Any) -> MutationClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=content))
    return MutationClient(
        SECRET, "m1", "tok3n", base_url="https://feed.test", transport=transport, **kw
    )


def answer(rows: list[Any]) -> bytes:
    return json.dumps({"status": "success", "data": rows}).encode()


@pytest.fixture(params=["orjson", "json"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with orjson (the speed extra) and with the stdlib alone."""
    if request.param == "json":
        monkeypatch.setattr(_json, "_fast", None)
    elif _json._fast is None:
        pytest.skip("orjson is not installed")
    return str(request.param)


async def test_a_deep_row_is_rejected_and_the_good_rows_are_read(decoder: str) -> None:
    deep: Any = 1
    for _ in range(600):
        deep = [deep]
    async with feed(answer([GOOD, {**GOOD, "issuer_reff": "d", "note": deep}])) as client:
        batch = await client.fetch()
    assert [row.issuer_reff for row in batch] == ["g"]
    assert "nested deeper than" in batch.rejected[0].reason


async def test_a_body_too_deep_to_parse_is_one_decode_error(decoder: str) -> None:
    async with feed(b"[" * 200_000) as client:
        with pytest.raises(ResponseDecodeError, match="nested too deeply"):
            await client.fetch()


async def test_a_body_too_large_is_one_decode_error(
    decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_json, "MAX_BODY", 100)
    async with feed(answer([GOOD] * 10)) as client:
        with pytest.raises(ResponseDecodeError, match="larger than 100 bytes"):
            await client.fetch()


@pytest.mark.parametrize(
    "text",
    [b"[1, 18446744073709551616]", b"[NaN]", b'["\\ud800"]', "[1]".encode("utf-16"), b"{bad"],
)
def test_both_decoders_mean_the_same(text: bytes) -> None:
    def read(fast: bool) -> Any:
        try:
            return repr(_json.loads(text, fast=fast))
        except ValueError as exc:
            return type(exc)

    assert read(True) == read(False)


async def test_a_failed_poll_logs_one_line_without_a_traceback(
    decoder: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Reconciler(feed(b"[" * 200_000), policy=PollPolicy(ttl=0.01, margin=0))
    with caplog.at_level(logging.WARNING, logger="qrispay"):
        await rec._poll()
    (record,) = [r for r in caplog.records if "feed fetch failed" in r.getMessage()]
    assert not record.exc_info
    assert "nested too deeply" in record.getMessage()
    await rec.feed.aclose()


def test_a_seeded_schedule_repeats_its_jitter() -> None:
    def waits(seed: int) -> list[float]:
        schedule = Schedule(PollPolicy(), random.Random(seed))
        out = []
        for _ in range(5):
            schedule.failed()
            out.append(schedule.backoff)
        return out

    assert waits(7) == waits(7)
    assert waits(7) != waits(8)


async def test_a_seeded_client_repeats_its_retry_jitter(sleeps: list[float]) -> None:
    async def delays(seed: int) -> list[float]:
        sleeps.clear()
        transport = httpx.MockTransport(lambda request: httpx.Response(503))
        async with MutationClient(
            "a",
            "m",
            "t",
            base_url="https://feed.test",
            transport=transport,
            rng=random.Random(seed),
            max_retries=3,
        ) as client:
            with pytest.raises(ServerError):
                await client.fetch()
        return list(sleeps)

    first = await delays(3)
    assert len(first) == 3
    assert await delays(3) == first
    assert await delays(4) != first


def test_rng_must_be_a_random() -> None:
    with pytest.raises(TypeError):
        MutationClient("a", "m", "t", rng=3)  # type: ignore[arg-type]
