"""Synthetic feed answers and invoices, shaped like the sandbox's (and the real feed's)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from qrispay import JAKARTA, Invoice, InvoiceStatus, ReconciliationEngine

#: The newest row is dated one second before this; every figure ingests "now".
NOW = datetime(2025, 1, 1, 5, 0, tzinfo=timezone.utc)
BASE_URL = "http://feed.bench"
AUTH, MERCHANT, TOKEN = "bench-auth", "BENCH0001", "bench-token"
#: What MutationClient asks for, so the baselines fetch the very same URL.
FEED_URL = f"{BASE_URL}/check-payment?merchant={MERCHANT}&auth={AUTH}&token={TOKEN}"

INVOICE_TOTAL_BASE = 100_000  # totals 100_000 + i; other credits and debits are >= 1_000_000
ROW_SPACING = timedelta(seconds=3)


def invoices(count: int) -> list[Invoice]:
    """Open invoices with distinct totals whose windows hold every generated row."""
    created, expires = NOW - timedelta(days=1), NOW + timedelta(hours=1)
    return [
        Invoice(
            invoice_id=f"inv{i:08d}",
            amount=INVOICE_TOTAL_BASE + i - (i % 1000 + 1),
            fee=i % 1000 + 1,
            total=INVOICE_TOTAL_BASE + i,
            status=InvoiceStatus.PENDING,
            qris_image=f"https://qris.example/inv{i:08d}.png",
            expired_at=expires,
            created_at=created,
        )
        for i in range(count)
    ]


def engine_with(open_invoices: Sequence[Invoice]) -> ReconciliationEngine:
    # Started before every row, so every row is judged in full (none is history).
    engine = ReconciliationEngine(started_at=NOW - timedelta(days=1))
    for invoice in open_invoices:
        engine.track(invoice, now=NOW)
    return engine


def _wib(when: datetime) -> str:
    return when.astimezone(JAKARTA).strftime("%Y-%m-%d %H:%M:%S")


def rows(
    count: int,
    *,
    pays: Sequence[int] = (),
    pay_every: int = 4,
    pay_from: int = 0,
    tag: str = "",
) -> list[dict[str, Any]]:
    """``count`` rows, oldest first.

    From row ``pay_from`` on, every ``pay_every``-th row pays the next total of
    ``pays`` (while any are left); every fifth row is a debit; the rest are
    credits that match no invoice. Balances chain; dates are ``ROW_SPACING``
    apart, the last one just before ``NOW``; ``tag`` makes the references of
    one timeline unique to it.
    """
    to_pay = iter(pays)
    balance = 10**9
    out: list[dict[str, Any]] = []
    for i in range(count):
        if i >= pay_from and i % pay_every == 0 and (paid := next(to_pay, None)) is not None:
            kind, amount = "CR", paid
        elif i % 5 == 3:
            kind, amount = "DB", 1_000_000 + (i * 7919) % 500_000
        else:
            kind, amount = "CR", 1_000_000 + (i * 104_729) % 9_000_000
        balance += amount if kind == "CR" else -amount
        brand = ("GOPAY", "OVO", "DANA", "SHOPEEPAY")[i % 4]
        out.append(
            {
                "date": _wib(NOW - (count - i) * ROW_SPACING),
                "amount": amount,
                "type": kind,
                "qris": "dynamic" if kind == "CR" else "static",
                "brand_name": brand,
                "issuer_reff": f"id{tag}{i:09d}",
                "buyer_reff": f"NOBU / {brand}",
                "balance": balance,
            }
        )
    return out


def body(oldest_first: Sequence[dict[str, Any]]) -> bytes:
    """A feed answer: newest first, as the server sends it."""
    answer = {"status": "success", "data": list(reversed(oldest_first)), "creator": "bench"}
    return json.dumps(answer, separators=(",", ":")).encode()


class Answers:
    """An in-process feed serving pre-serialized answers: ``current`` picks which.

    The SDK and the baselines share this one transport, so they pay the same
    transport cost and read the very same bytes.
    """

    def __init__(self, bodies: Sequence[bytes]):
        self.bodies = bodies
        self.current = 0
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=self.bodies[self.current], headers={"content-type": "application/json"}
        )
