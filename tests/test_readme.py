"""The documentation's FastAPI snippet (docs/guides/fastapi.md) runs as
printed, against a sandbox on loopback with the settings in the environment
variables it reads: its imports, its
clients' base URLs and its routes (the snippets a newcomer copied first failed
on a missing import and a feed client without ``base_url``)."""

from __future__ import annotations

import json
import logging
import logging.config
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from qrispay.sandbox import Sandbox

from .conftest import sandbox_env

ROOT = Path(__file__).resolve().parent.parent
#: The README and every page of the documentation site.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def docs_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def readme_block(containing: str) -> str:
    """The one python block of the README or the docs that contains ``containing``."""
    blocks = [b for b in BLOCK.findall(docs_text()) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks in the docs contain {containing!r}"
    return blocks[0]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    sandbox = Sandbox(ttl=0.5)
    with sandbox.serve(port=0) as url:
        for name, value in sandbox_env(sandbox, url).items():
            monkeypatch.setenv(name, value)
        yield sandbox


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_the_fastapi_snippet_creates_reports_and_tells_its_health(served: Sandbox) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_fastapi"}
    exec(compile(readme_block('@app.get("/health")'), "docs", "exec"), namespace)
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


LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) +([\w.]+): (.*)$")
NAMES = ("qrispay", "qrispay.reconciler", "uvicorn", "uvicorn.access")


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """dictConfig changes process-wide state: put every touched logger back."""
    loggers = [logging.getLogger(name) for name in NAMES] + [logging.getLogger()]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, level, handlers, propagate, disabled in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.disabled = disabled


def lines(err: str) -> list[tuple[str, str, str]]:
    found = []
    for line in err.splitlines():
        match = LINE.match(line)
        assert match, f"not time, level, logger, message: {line!r}"
        found.append((match[1], match[2], match[3]))
    return found


def test_the_script_logging_config_shows_qrispay_info_once(
    capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    exec(compile(readme_block("logging.config.dictConfig("), "docs", "exec"), {})
    logging.getLogger("qrispay.store").debug("not shown: below INFO")
    logging.getLogger("elsewhere").info("not shown: the root stays at WARNING")
    assert lines(capsys.readouterr().err) == [
        ("INFO", "qrispay.reconciler", "qrispay's INFO lines now show")
    ]


def test_the_uvicorn_log_config_keeps_uvicorn_and_adds_qrispay(
    capsys: pytest.CaptureFixture[str], logging_restored: None
) -> None:
    blocks = re.findall(r"```json\n(.*?)```", docs_text(), re.S)
    config = [json.loads(b) for b in blocks if '"uvicorn.access"' in b]
    assert len(config) == 1
    logging.config.dictConfig(config[0])
    logging.getLogger("qrispay.reconciler").info("a retry")
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info("GET /health 200")
    assert lines(capsys.readouterr().err) == [
        ("INFO", "qrispay.reconciler", "a retry"),
        ("INFO", "uvicorn.error", "Started server process"),
        ("INFO", "uvicorn.access", "GET /health 200"),
    ]
