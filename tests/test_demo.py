"""``qrispay demo``: every simulated customer lands in the verdict the story says."""

from __future__ import annotations

import io

import pytest

from qrispay.demo import PAYERS, VERDICTS, DemoResult, run_demo

pytestmark = pytest.mark.anyio

FAST = 5.0  # five times the wall-clock pace: about two seconds a run


async def test_every_customer_lands_where_expected() -> None:
    out = io.StringIO()
    result = await run_demo(out=out, speed=FAST)
    assert isinstance(result, DemoResult)
    assert result.complete
    assert result.ok
    assert dict(result.counts) == {
        "paid": 2,
        "late": 1,
        "duplicate": 1,
        "unmatched": 1,
        "expired": 3,
    }
    assert dict(result.outcomes) == {
        "Ani": ("paid",),
        "Budi": ("expired", "late"),
        "Citra": ("unmatched", "expired"),
        "Dewi": ("paid", "duplicate"),
        "Eko": ("expired",),
    }
    assert result.payments == 5  # Ani, Citra, Budi once; Dewi twice
    assert result.failures == 0
    assert 4 <= result.polls <= 8

    text = out.getvalue()
    assert text.isascii()
    assert "\033[" not in text  # not a terminal: no colour
    for payer in PAYERS:
        assert payer.name in text
    for label in ("PAID", "LATE", "DUPLICATE", "UNMATCHED", "EXPIRED"):
        assert label in text
    summary = text[text.index("Summary") :]
    for verdict in VERDICTS:
        assert verdict in summary
    assert "NO" not in summary.split()  # every "as expected" column says yes
    # Every line but the summary's tables carries the progress stamp.
    assert any(
        line.startswith("[") and "poll" in line and "open]" in line for line in text.splitlines()
    )


async def test_colour_when_asked() -> None:
    out = io.StringIO()
    await run_demo(out=out, speed=10, colour=True)
    assert "\033[32mPAID" in out.getvalue()


@pytest.mark.parametrize("speed", [0, -1, 50, True, "fast"])
async def test_speed_is_checked(speed: object) -> None:
    with pytest.raises(ValueError, match="speed"):
        await run_demo(out=io.StringIO(), speed=speed)  # type: ignore[arg-type]


def test_result_ok_needs_the_expected_outcomes() -> None:
    base = {
        "counts": {},
        "expected": {"Ani": ("paid",)},
        "payments": 1,
        "polls": 2,
        "failures": 0,
        "elapsed": 1.0,
    }
    assert DemoResult(outcomes={"Ani": ("paid",)}, complete=True, **base).ok  # type: ignore[arg-type]
    assert not DemoResult(outcomes={"Ani": ("late",)}, complete=True, **base).ok  # type: ignore[arg-type]
    assert not DemoResult(outcomes={"Ani": ("paid",)}, complete=False, **base).ok  # type: ignore[arg-type]
