"""Money, times and statuses: what is read, what is refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from qrispay import JAKARTA, Invoice, InvoiceStatus, WithdrawalStatus
from qrispay._convert import parse_datetime, parse_money, structure


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, 0),
        (10000, 10000),
        ("10000", 10000),
        (" 10000 ", 10000),
        ("35.002", 35002),
        ("1.000.000", 1000000),
        ("Rp 10.000", 10000),
        ("Rp10.000", 10000),
        ("Rp. 10.000", 10000),
        ("rp 5000", 5000),
        ("IDR 25.000", 25000),
    ],
)
def test_money_accepted(raw: object, expected: int) -> None:
    assert parse_money(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        10000.0,
        1.5,
        True,
        False,
        None,
        -1,
        "-1",
        "10.000,00",
        "10000.0",
        "10000,5",
        "10,000",
        "1.00",
        "10.0000",
        ".500",
        "abc",
        "",
        "Rp",
        "Rp -5",
        "\u0661\u0660\u0660\u0660",  # Arabic-Indic digits: not ASCII
        "1" * 19,
        [10000],
        {"amount": 1},
    ],
)
def test_money_refused(raw: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the value varies, the class is the contract
        parse_money(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-01 12:00:00", datetime(2025, 1, 1, 12, 0, 0, tzinfo=JAKARTA)),
        ("2025-01-01 12:00", datetime(2025, 1, 1, 12, 0, tzinfo=JAKARTA)),
        ("2025-01-01T12:00:00", datetime(2025, 1, 1, 12, 0, tzinfo=JAKARTA)),
        ("09/07/2025 00:00:05", datetime(2025, 7, 9, 0, 0, 5, tzinfo=JAKARTA)),
        ("09/07/2025 13:45", datetime(2025, 7, 9, 13, 45, tzinfo=JAKARTA)),
        ("2025-01-15T10:30:00.000Z", datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)),
        ("2025-01-15T10:30:00Z", datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)),
        (
            "2025-01-15T10:30:00.123456+07:00",
            datetime(2025, 1, 15, 10, 30, 0, 123456, tzinfo=JAKARTA),
        ),
    ],
)
def test_dates_accepted_and_aware(raw: str, expected: datetime) -> None:
    parsed = parse_datetime(raw)
    assert parsed == expected
    assert parsed.tzinfo is not None


def test_zone_less_times_are_jakarta() -> None:
    parsed = parse_datetime("2025-07-09 00:00:00")
    assert parsed.utcoffset() == timedelta(hours=7)
    assert parsed.astimezone(timezone.utc) == datetime(2025, 7, 8, 17, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "raw",
    [
        "2025-13-01 00:00:00",
        "2025-02-30 00:00:00",
        "2025-01-01",
        "12:00:00",
        "2025/01/01 12:00:00",
        "1/7/2025 12:00",
        "yesterday",
        "",
        1736900000,
        None,
        ["2025-01-01 12:00:00"],
        "2025-01-01 24:00:00",
    ],
)
def test_dates_refused(raw: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_datetime(raw)


def test_statuses_are_enums_or_kept_text() -> None:
    assert InvoiceStatus.parse("PAID") is InvoiceStatus.PAID
    assert InvoiceStatus.parse("on_hold") == "on_hold"
    assert WithdrawalStatus.parse("rejected") is WithdrawalStatus.REJECTED
    assert str(InvoiceStatus.PAID) == "paid"
    assert InvoiceStatus.PAID == "paid"


def test_structure_refuses_a_float_total() -> None:
    body = {
        "invoice_id": "x",
        "amount": 10000,
        "fee": 1,
        "total": 10001.0,
        "status": "pending",
        "qris_image": "",
        "expired_at": "2025-01-01 12:00:00",
        "created_at": None,
    }
    with pytest.raises(ValueError, match="amount"):
        structure(body, Invoice)
    assert structure({**body, "total": "10.001"}, Invoice).total == 10001
