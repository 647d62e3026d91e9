from __future__ import annotations

import pytest

from qrispay import _http

#: A fake credential that every leak test searches for, raw and URL-encoded.
SECRET = "s3cr3t+K3y/=&Zgekx7"


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
