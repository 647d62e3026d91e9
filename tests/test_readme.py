"""The README's FastAPI snippet runs as printed, against a sandbox on loopback
with the settings in the environment variables it reads: its imports, its
clients' base URLs and its routes (the snippets a newcomer copied first failed
on a missing import and a feed client without ``base_url``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from qrispay.sandbox import Sandbox

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def readme_block(containing: str) -> str:
    blocks = [b for b in BLOCK.findall(README.read_text()) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} README python blocks contain {containing!r}"
    return blocks[0]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    sandbox = Sandbox(ttl=0.5)
    with sandbox.serve(port=0) as url:
        for name, value in {
            "QRISPAY_API_KEY": sandbox.api_key,
            "QRISPAY_GATEWAY_URL": url,
            "QRISPAY_AUTH": sandbox.auth,
            "QRISPAY_MERCHANT": sandbox.merchant,
            "QRISPAY_TOKEN": sandbox.token,
            "QRISPAY_FEED_URL": url,
        }.items():
            monkeypatch.setenv(name, value)
        yield sandbox


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_the_fastapi_snippet_creates_reports_and_tells_its_health(served: Sandbox) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(readme_block('@app.get("/health")'), "README.md", "exec"), namespace)
    app = namespace["app"]
    with anyio.fail_after(20):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
                created = await c.post("/invoices", json={"amount": 25_000})
                assert created.status_code == 201, created.text
                invoice = created.json()
                assert invoice["total"] >= 25_000
                status = await c.get(f"/invoices/{invoice['invoice_id']}")
                assert status.json() == {"invoice_id": invoice["invoice_id"], "status": "pending"}
                assert (await c.get("/invoices/nope")).status_code == 404
                health = await c.get("/health")
                assert health.status_code == 200, health.text
                assert health.json()["polling"] is True
                assert health.json()["consecutive_failures"] == 0
                assert health.json()["last_success"] is not None
    # The invoice reached the sandbox's gateway through the snippet's own clients.
    assert served.stats.requests["create_invoice"] == 1
    assert served.stats.feed_fetches >= 1
