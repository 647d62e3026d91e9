"""The README and the documentation pages, checked as a reader meets them:
the README's example runs as printed; every python block at least compiles
(fragments may use top-level ``await``, as they would inside an async
function); every JSON block parses; every link of the README to a file of the
repository leads to one; the log-field filter of the logging guide prints
the fields of a real record. The site itself is built with
``mkdocs build --strict`` in CI, which fails on a broken link between pages."""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in ``language``."""
    return [
        (str(page.relative_to(ROOT)), code)
        for page in PAGES
        for lang, code in FENCE.findall(page.read_text(encoding="utf-8"))
        if lang == language
    ]


def test_the_readme_opens_with_the_two_set_up_commands() -> None:
    first = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")[:6]
    assert first[0] == "# qrispay"
    assert first[2:6] == [
        "```sh",
        "python3 -m venv .venv && .venv/bin/pip install '.[sandbox]' && .venv/bin/qrispay demo",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest",
        "```",
    ]


def test_the_readme_example_runs_and_reports_the_payment(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## One example.*?```python\n(.*?)```", readme, re.S)
    assert code, "the README has no example"
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    invoice_id, word, total = done.stdout.split()
    assert word == "paid"
    assert int(total) > 25_000  # the amount plus its unique code
    assert len(invoice_id) > 0


@pytest.mark.parametrize(("page", "code"), blocks("python"), ids=lambda v: str(v)[:40])
def test_every_python_block_compiles(page: str, code: str) -> None:
    try:
        compile(code, page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as error:  # pragma: no cover - the assertion names the block
        pytest.fail(f"{page}: {error}\n{code}")


@pytest.mark.parametrize(("page", "code"), blocks("json"), ids=lambda v: str(v)[:40])
def test_every_json_block_parses(page: str, code: str) -> None:
    json.loads(code)


def test_the_pages_have_code_blocks_to_check() -> None:
    # A fence regex that stopped matching would make the tests above vacuous.
    assert len(blocks("python")) >= 20
    assert len(blocks("json")) >= 2


def test_every_readme_link_to_a_file_leads_to_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(targets) >= 15
    missing = [t for t in targets if not (ROOT / t).is_file()]
    assert missing == []


def test_the_log_field_filter_prints_the_fields_of_a_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (code,) = [c for _, c in blocks("python") if "class Fields(logging.Filter)" in c]
    logger = logging.getLogger("qrispay")
    saved = (logger.level, list(logger.handlers))
    try:
        exec(compile(code, "docs/guides/logging.md", "exec"), {})
        logging.getLogger("qrispay.reconciler").info(
            "invoice inv_1 paid (mutation)", extra={"merchant": "OK1", "invoice_id": "inv_1"}
        )
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
    assert capsys.readouterr().err.splitlines() == [
        "INFO qrispay.reconciler invoice inv_1 paid (mutation) merchant=OK1 invoice_id=inv_1"
    ]


def test_the_sandbox_guide_test_passes_under_pytest(tmp_path: Path) -> None:
    (code,) = [c for _, c in blocks("python") if "def test_a_paid_order_is_delivered" in c]
    (tmp_path / "test_shop.py").write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shop.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def test_every_qris_sample_in_the_docs_parses() -> None:
    from qrispay import qris

    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    samples = set(re.findall(r'"(000201[0-9A-Za-z .]{40,})"', text))
    assert samples, "the docs show no QRIS sample"
    for sample in samples:
        assert qris.parse(sample).merchant_name == "TOKO SARI"
