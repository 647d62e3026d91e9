"""``qrispay webhooks list [--failed]`` and ``qrispay webhooks replay EVENT_ID``
on an SQLite store, and ``qrispay serve``'s refusals of a bad configuration."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest

from qrispay import cli
from qrispay.store import Changes, SQLiteStore

from .conftest import SECRET

NOW = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)


def seed(path: Path) -> None:
    async def work() -> None:
        async with SQLiteStore(path) as store:
            events = [("e1", "payment.unmatched", "{}"), ("e2", "payment.unmatched", "{}")]
            await store.commit("m", Changes(meta=None, events=events))
            await store.webhook_enqueue("m", "https://r.example/hook #00000000", now=NOW)
            await store.webhook_attempted(
                "m",
                "https://r.example/hook #00000000",
                "e1",
                state="failed",
                status=500,
                error="HTTP 500",
                next_attempt_at=NOW,
                now=NOW,
            )

    anyio.run(work)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_replay_and_an_unknown_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "s.db")
    seed(tmp_path / "s.db")
    code, out, _ = run(capsys, "--json", "webhooks", "list", "--db", db, "--merchant", "m")
    assert code == 0
    assert [(row["event_id"], row["state"]) for row in json.loads(out)] == [
        ("e1", "failed"),
        ("e2", "pending"),
    ]
    code, out, _ = run(
        capsys, "--json", "webhooks", "list", "--failed", "--db", db, "--merchant", "m"
    )
    assert [row["event_id"] for row in json.loads(out)] == ["e1"]
    assert json.loads(out)[0]["last_error"] == "HTTP 500"
    code, out, _ = run(capsys, "webhooks", "replay", "e1", "--db", db, "--merchant", "m")
    assert code == 0
    assert "1 delivery(ies) of e1 pending again" in out
    code, out, _ = run(capsys, "webhooks", "list", "--failed", "--db", db, "--merchant", "m")
    assert "no deliveries" in out
    code, _, err = run(capsys, "webhooks", "replay", "nope", "--db", db, "--merchant", "m")
    assert code == 1
    assert err.strip() == "qrispay: error: no stored event has id 'nope'"


def test_serve_refuses_a_missing_or_short_token_and_a_bad_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QRISPAY_SERVE_TOKEN", "QRISPAY_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(capsys, "serve")
    assert code == 2
    assert "QRISPAY_SERVE_TOKEN is not set" in err
    monkeypatch.setenv("QRISPAY_SERVE_TOKEN", "short")
    code, _, err = run(capsys, "serve")
    assert (code, "at least 16 characters" in err) == (2, True)
    monkeypatch.setenv("QRISPAY_SERVE_TOKEN", "t" * 20 + SECRET)
    code, _, err = run(capsys, "serve", "--webhook", "https://r.example/hook")
    assert code == 2
    assert "QRISPAY_WEBHOOK_SECRET" in err
    monkeypatch.setenv("QRISPAY_WEBHOOK_SECRET", f"whsec_{SECRET}")
    code, _, err = run(capsys, "serve", "--webhook", "https://r.example/hook")
    assert code == 2
    assert "webhook secret" in err
    assert SECRET not in err
