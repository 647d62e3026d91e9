"""A fake credential must appear in no log record, exception text or repr.

Requests go over a real loopback socket so that httpx's and httpcore's own
DEBUG logging runs too, and the server echoes the request target (with the
credentials in it) back in its error bodies.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qrispay import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    GatewayClient,
    MutationClient,
    OutcomeUnknownError,
    ResponseDecodeError,
)
from qrispay._redact import Redactor

from .conftest import SECRET
from .loopback import json_answer, serve

pytestmark = pytest.mark.anyio

TOKEN = "589309:Zgekx7TOUzmB0tEMc6GD8nipaRr"
FORMS = {SECRET, quote(SECRET, safe=""), quote_plus(SECRET), TOKEN, quote_plus(TOKEN)}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    names = ["", "httpx", "httpcore", "qrispay"]
    levels = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


def chain_texts(error: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        for attribute in ("body", "excerpt", "params", "message"):
            texts.append(repr(getattr(current, attribute, "")))
        todo += [current.__cause__, current.__context__]
    return texts


def echo(status: int) -> object:
    def handler(method: str, target: str) -> tuple[int, str, str]:
        return json_answer(status, {"error": f"Invalid apikey in {target}", "echo": target})

    return handler


def assert_clean(captured: _Capture, *errors: BaseException) -> None:
    for record in captured.records:
        assert not leaks(record.getMessage()), record.getMessage()
        assert not leaks(repr(record.args)), record.args
    for error in errors:
        for text in chain_texts(error):
            assert not leaks(text), text


async def test_gateway_secret_leaks_nowhere(captured: _Capture) -> None:
    errors: list[BaseException] = []

    def handler(method: str, target: str) -> tuple[int, str, str]:
        if target.startswith("/api/v1/balance"):
            return json_answer(200, {"balance": 5})
        if target.startswith("/api/v1/invoice/status"):
            return echo(401)(method, target)  # type: ignore[operator,no-any-return]
        if target.startswith("/api/v1/invoice/create"):
            return echo(500)(method, target)  # type: ignore[operator,no-any-return]
        return 200, "text/html", f"<html>{target}</html>"

    async with serve(handler) as base_url:
        gw = GatewayClient(SECRET, base_url=base_url, max_retries=0)
        async with gw:
            assert (await gw.get_balance()).balance == 5
            with pytest.raises(AuthenticationError) as auth:
                await gw.get_invoice("inv1")
            errors.append(auth.value)
            with pytest.raises(OutcomeUnknownError) as unknown:
                await gw.create_invoice(10000)
            errors.append(unknown.value)
            with pytest.raises(ResponseDecodeError) as decode:
                await gw.get_withdrawal("w1")
            errors.append(decode.value)
            assert not leaks(repr(gw))

    # httpx's own request line is still there, with the key masked.
    lines = [r.getMessage() for r in captured.records if r.name == "httpx"]
    assert any("HTTP Request: GET" in line and "apikey=***" in line for line in lines)
    assert any(r.name.startswith("httpcore") for r in captured.records)
    assert "Invalid apikey" in str(auth.value)
    assert_clean(captured, *errors)


async def test_connection_error_carries_no_secret(captured: _Capture) -> None:
    async with serve(echo(200)) as base_url:  # type: ignore[arg-type]
        pass  # the port is now closed
    async with GatewayClient(SECRET, base_url=base_url, max_retries=0) as gw:
        with pytest.raises(APIConnectionError) as caught:
            await gw.get_balance()
    assert_clean(captured, caught.value)


async def test_feed_secrets_leak_nowhere(captured: _Capture) -> None:
    rows_echo: dict[str, str] = {}

    def handler(method: str, target: str) -> tuple[int, str, str]:
        rows_echo["target"] = target
        if "merchant=bad" in target:
            return echo(401)(method, target)  # type: ignore[operator,no-any-return]
        return json_answer(
            200,
            {
                "status": "success",
                "data": [
                    {"date": target, "amount": 1},  # unreadable, echoes the secrets
                    {
                        "date": "2025-07-09 00:00:00",
                        "amount": 10000,
                        "type": "CR",
                        "issuer_reff": "r1",
                        "buyer_reff": f"echo {TOKEN}",
                        "balance": 10000,
                    },
                ],
            },
        )

    async with serve(handler) as base_url:
        async with MutationClient(SECRET, "OK589309", TOKEN, base_url=base_url) as feed:
            batch = await feed.fetch()
            assert not leaks(repr(feed))
        async with MutationClient(SECRET, "bad", TOKEN, base_url=base_url, max_retries=0) as bad:
            with pytest.raises(AuthenticationError) as caught:
                await bad.fetch()

    assert TOKEN in rows_echo["target"] or quote_plus(TOKEN) in rows_echo["target"]
    assert len(batch.rows) == 1
    assert len(batch.rejected) == 1
    assert not leaks(repr(batch))
    # The merchant id is not a secret and stays readable.
    assert "OK589309" in repr(feed)
    assert_clean(captured, caught.value)


async def test_errors_built_from_echoes_are_scrubbed_at_every_level() -> None:
    async with (
        serve(echo(503)) as base_url,  # type: ignore[arg-type]
        GatewayClient(SECRET, base_url=base_url, max_retries=0) as gw,
    ):
        with pytest.raises(OutcomeUnknownError) as caught:
            await gw.cancel_invoice("inv1")
    cause = caught.value.__cause__
    assert isinstance(cause, APIError)
    assert "apikey=***" in str(cause)
    for text in chain_texts(caught.value):
        assert not leaks(text)


@pytest.mark.parametrize("failure", ["connect", "read"])
async def test_transport_errors_that_print_the_url_are_scrubbed(
    sleeps: list[float], failure: str
) -> None:
    import httpx
    import respx

    def fail(request: httpx.Request) -> httpx.Response:
        # Some transports (proxies, custom ones) put the whole URL in the message.
        cls = httpx.ConnectError if failure == "connect" else httpx.ReadError
        try:
            raise OSError(f"low-level failure for {request.url}")
        except OSError as inner:
            raise cls(f"cannot talk to {request.url}", request=request) from inner

    with respx.mock(base_url="https://gw.test") as router:
        router.route().mock(side_effect=fail)
        async with GatewayClient(SECRET, base_url="https://gw.test", max_retries=1) as gw:
            with pytest.raises(APIConnectionError) as read:
                await gw.get_balance()
            with pytest.raises((APIConnectionError, OutcomeUnknownError)) as create:
                await gw.create_invoice(10000)
    assert "apikey=***" in str(read.value)
    for error in (read.value, create.value):
        for text in chain_texts(error):
            assert not leaks(text), text


async def test_escaped_echoes_are_scrubbed(sleeps: list[float]) -> None:
    import html
    import json

    import httpx
    import respx

    def echo_page(request: httpx.Request) -> httpx.Response:
        # A framework's debug page (HTML-escaped) and a JSON echo with "\/".
        if request.url.path == "/api/v1/balance":
            return httpx.Response(500, text=f"<pre>{html.escape(repr(SECRET))}</pre>")
        return httpx.Response(400, text=json.dumps({"apikey": SECRET}).replace("/", "\\/"))

    with respx.mock(base_url="https://gw.test") as router:
        router.route().mock(side_effect=echo_page)
        async with GatewayClient(SECRET, base_url="https://gw.test", max_retries=0) as gw:
            with pytest.raises(APIError) as page:
                await gw.get_balance()
            with pytest.raises(APIError) as echoed:
                await gw.get_invoice("inv1")
    for error in (page.value, echoed.value):
        for text in chain_texts(error):
            assert not leaks(text), text
            assert "Zgekx7" not in text, text


async def test_a_secret_cut_short_in_a_reason_is_not_left_behind() -> None:
    import respx

    token = "k3y'\\" + "Zgekx7TOUzmB0tEMc6GD8nipaRrVeryLongTokenValue"
    row = {"date": "x" * 30 + token, "amount": 1, "issuer_reff": f"'{token}"}
    with respx.mock(base_url="https://mutasiv1.autsc.my.id") as router:
        router.get("/check-payment").respond(json={"status": "success", "data": [row]})
        async with MutationClient(SECRET, "OK1", token) as feed:
            batch = await feed.fetch()
    text = repr(batch) + str(batch.rejected[0].reason)
    assert "Zgekx7TOUz" not in text
    assert "date" in batch.rejected[0].reason


def test_importing_qrispay_installs_no_log_filter() -> None:
    import subprocess
    import sys

    script = (
        "import logging, qrispay\n"
        "names = ('httpx', 'httpcore', 'httpcore.http11')\n"
        "assert not any(logging.getLogger(n).filters for n in names)\n"
        "qrispay.GatewayClient('k', base_url='https://gw.test')\n"
        "qrispay.MutationClient('a', 'm', 't')\n"
        "assert all(len(logging.getLogger(n).filters) == 1 for n in names)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def _scrub_obj_recursively(redactor: Any, value: Any) -> Any:
    # The recursive definition the iterative walk must agree with.
    if isinstance(value, str):
        return redactor.scrub(value)
    if isinstance(value, dict):
        return {
            _scrub_obj_recursively(redactor, k): _scrub_obj_recursively(redactor, v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub_obj_recursively(redactor, v) for v in value]
    return value


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["x", SECRET, f"a{TOKEN}b"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["k", SECRET, "***", "apikey=1"]), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(_JSON)
def test_scrub_obj_agrees_with_the_recursive_definition(value: Any) -> None:
    redactor = Redactor([SECRET, TOKEN])
    assert redactor.scrub_obj(value) == _scrub_obj_recursively(redactor, value)


def test_scrub_obj_neither_recurses_nor_loops() -> None:
    redactor = Redactor([SECRET])
    deep: Any = SECRET
    for _ in range(100_000):
        deep = [{"k": deep}]
    scrubbed = redactor.scrub_obj(deep)
    for _ in range(100_000):
        scrubbed = scrubbed[0]["k"]
    assert scrubbed == "***"
    looped: list[Any] = [SECRET]
    looped.append(looped)
    copy = redactor.scrub_obj(looped)
    assert copy[0] == "***"
    assert copy[1] is copy
    shared = [SECRET]
    twice = redactor.scrub_obj([shared, shared])
    assert twice == [["***"], ["***"]]
    assert twice[0] is not twice[1]
