from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from qrispay import Invoice, InvoiceStatus, _http

if TYPE_CHECKING:
    from qrispay.sandbox import Sandbox

#: A fake credential that every leak test searches for, raw and URL-encoded.
SECRET = "s3cr3t+K3y/=&Zgekx7"


def pending_invoice(invoice_id: str, amount: int, fee: int, now: datetime) -> Invoice:
    """A pending invoice made elsewhere at ``now``, open for 15 minutes (for ``track``)."""
    return Invoice(
        invoice_id=invoice_id,
        amount=amount,
        fee=fee,
        total=amount + fee,
        status=InvoiceStatus.PENDING,
        qris_image="",
        expired_at=now + timedelta(minutes=15),
        created_at=now,
    )


def sandbox_env(sandbox: Sandbox, url: str) -> dict[str, str]:
    """The ``QRISPAY_*`` settings a user would export for a sandbox served at ``url``."""
    return {
        "QRISPAY_API_KEY": sandbox.api_key,
        "QRISPAY_GATEWAY_URL": url,
        "QRISPAY_AUTH": sandbox.auth,
        "QRISPAY_MERCHANT": sandbox.merchant,
        "QRISPAY_TOKEN": sandbox.token,
        "QRISPAY_FEED_URL": url,
    }


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every ``@pytest.mark.anyio`` test runs once on asyncio and once on trio."""
    return str(request.param)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the HTTP core's backoff sleeps instead of waiting them out."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(_http, "_sleep", fake_sleep)
    return recorded


# -- PostgreSQL ---------------------------------------------------------------------

#: The environment variable naming the PostgreSQL server the tests may use (a DSN).
POSTGRES_ENV = "QRISPAY_TEST_POSTGRES"


def postgres_dsn() -> str:
    """The DSN of the test server; skips the test without one, except on CI,
    where a PostgreSQL test that cannot run fails (.ci/run starts a server)."""
    dsn = os.environ.get(POSTGRES_ENV, "")
    if not dsn:
        message = f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI must run the PostgreSQL tests)")
        pytest.skip(message)
    return dsn


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A DSN and a fresh schema name on the test server, dropped afterwards, so
    every test starts from an empty store and no two tests share one."""
    dsn = postgres_dsn()
    name = f"qrispay_test_{uuid.uuid4().hex[:12]}"
    yield dsn, name
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
