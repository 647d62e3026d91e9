"""The webhook verification snippets of docs/serve.md, run: the Python one
always, the Node and PHP ones when ``node`` / ``php`` are installed. Each must
accept a delivery signed by qrispay (with one secret or during a rotation) and
refuse a changed body, another secret and a stale timestamp."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from qrispay.webhooks import WebhookSigner

DOC = Path(__file__).parent.parent / "docs" / "serve.md"
SECRET = "whsec_" + base64.b64encode(b"docs-snippet-key-0123456").decode()
OTHER = "whsec_" + base64.b64encode(b"another-key-for-rotation").decode()


def snippet(language: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"<!-- verify:{language} -->\n```\w+\n(.*?)```", text, re.S)
    assert found, f"no {language} snippet in {DOC.name}"
    return found.group(1)


def cases() -> list[tuple[str, dict[str, str], str, bool]]:
    """(secret, headers, body, expected)."""
    body = json.dumps({"id": "paid:INV1", "type": "invoice.paid", "data": {"n": "é"}})
    now = int(time.time())
    signed = WebhookSigner([SECRET]).headers("paid:INV1", now, body.encode())
    rotated = WebhookSigner([OTHER, SECRET]).headers("paid:INV1", now, body.encode())
    stale = WebhookSigner([SECRET]).headers("paid:INV1", now - 600, body.encode())
    third = "whsec_" + base64.b64encode(b"a-third-key-never-used!!").decode()
    return [
        (SECRET, signed, body, True),
        (SECRET, rotated, body, True),
        (OTHER, rotated, body, True),
        (SECRET, signed, body + " ", False),
        (third, signed, body, False),
        (SECRET, stale, body, False),
        (SECRET, {**signed, "webhook-id": "paid:INV2"}, body, False),
    ]


def test_the_python_snippet() -> None:
    scope: dict[str, Any] = {}
    exec(compile(snippet("python"), "docs/serve.md", "exec"), scope)
    verify = scope["verify_webhook"]
    results = [verify(s, h, b.encode()) for s, h, b, _ in cases()]
    assert results == [expected for *_, expected in cases()]


def run_cases(command: list[str], program: Path) -> list[bool]:
    payload = json.dumps([{"secret": s, "headers": h, "body": b} for s, h, b, _ in cases()])
    done = subprocess.run(
        [*command, str(program)], input=payload, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [bool(value) for value in json.loads(done.stdout)]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_snippet(tmp_path: Path) -> None:
    program = tmp_path / "verify.js"
    program.write_text(
        snippet("node")
        + """
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const results = JSON.parse(input).map((c) =>
    verifyWebhook(c.secret, c.headers, Buffer.from(c.body, "utf8")));
  process.stdout.write(JSON.stringify(results));
});
""",
        encoding="utf-8",
    )
    assert run_cases(["node"], program) == [expected for *_, expected in cases()]


@pytest.mark.skipif(shutil.which("php") is None, reason="php is not installed")
def test_the_php_snippet(tmp_path: Path) -> None:
    program = tmp_path / "verify.php"
    program.write_text(
        snippet("php")
        + """
$results = [];
foreach (json_decode(stream_get_contents(STDIN), true) as $c) {
    $results[] = verify_webhook($c['secret'], $c['headers'], $c['body']);
}
echo json_encode($results);
""",
        encoding="utf-8",
    )
    assert run_cases(["php"], program) == [expected for *_, expected in cases()]
