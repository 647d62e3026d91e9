"""The HTTP core's retry, error-mapping and never-twice rules, through the gateway client."""

from __future__ import annotations

import httpx
import pytest
import respx

from qrispay import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GatewayClient,
    InvoiceNotCancellableError,
    NotFoundError,
    OutcomeUnknownError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

pytestmark = pytest.mark.anyio

BASE = "https://gw.test"
KEY = "test-key"
CREATED = {
    "invoice_id": "inv1",
    "amount": 10000,
    "fee": 1,
    "total": 10001,
    "qris_image": "https://img",
    "expired_at": "2025-01-01 12:00:00",
}


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.mark.parametrize(
    ("status", "body", "error_class", "message"),
    [
        (400, {"error": "amount wajib diisi"}, BadRequestError, "amount wajib diisi"),
        (401, {"error": "Invalid API key"}, AuthenticationError, "Invalid API key"),
        (404, {"error": "Invoice not found"}, NotFoundError, "Invoice not found"),
        (409, {"success": False, "message": "conflict"}, APIStatusError, "conflict"),
        (400, {"success": False, "message": "bad"}, BadRequestError, "bad"),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    api: respx.MockRouter,
    sleeps: list[float],
    status: int,
    body: dict[str, object],
    error_class: type[APIStatusError],
    message: str,
) -> None:
    api.get("/api/v1/balance").respond(status, json=body)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(error_class) as caught:
            await gw.get_balance()
    error = caught.value
    assert type(error) is error_class
    assert error.status_code == status
    assert message in str(error)
    assert (error.method, error.path) == ("GET", "/api/v1/balance")
    assert error.body == body
    # 4xx answers are final: not retried.
    assert len(api.calls) == 1
    assert sleeps == []


async def test_error_body_with_http_200_is_an_error(api: respx.MockRouter) -> None:
    api.get("/api/v1/balance").respond(200, json={"success": False, "error": "Invalid apikey"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(AuthenticationError, match="Invalid apikey") as caught:
            await gw.get_balance()
    assert caught.value.status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_reads_retry_server_errors_then_raise(
    api: respx.MockRouter, sleeps: list[float], status: int
) -> None:
    api.get("/api/v1/balance").respond(status, json={"error": "boom"})
    async with GatewayClient(KEY, base_url=BASE, max_retries=2) as gw:
        with pytest.raises(APIStatusError, match="boom") as caught:
            await gw.get_balance()
    assert caught.value.status_code == status
    assert isinstance(caught.value, ServerError) == (status >= 500)
    assert len(api.calls) == 3
    assert len(sleeps) == 2


async def test_backoff_grows_exponentially_with_jitter(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    api.get("/api/v1/balance").respond(503)
    async with GatewayClient(KEY, base_url=BASE, max_retries=4) as gw:
        with pytest.raises(ServerError):
            await gw.get_balance()
    assert len(sleeps) == 4
    # Attempt n waits within [base * 2**n / 2, base * 2**n], base 0.5 s.
    for attempt, slept in enumerate(sleeps):
        ceiling = 0.5 * 2**attempt
        assert ceiling / 2 <= slept <= ceiling


async def test_read_recovers_after_transient_failures(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    api.get("/api/v1/balance").mock(
        side_effect=[
            httpx.ConnectError("refused"),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json={"balance": 7}),
        ]
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        assert (await gw.get_balance()).balance == 7
    assert len(api.calls) == 3
    assert len(sleeps) == 2


async def test_max_retries_zero_sends_once(api: respx.MockRouter, sleeps: list[float]) -> None:
    api.get("/api/v1/balance").mock(side_effect=httpx.ConnectError("refused"))
    async with GatewayClient(KEY, base_url=BASE, max_retries=0) as gw:
        with pytest.raises(APIConnectionError) as caught:
            await gw.get_balance()
    assert not isinstance(caught.value, APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(api.calls) == 1
    assert sleeps == []


async def test_timeout_raises_api_timeout_error(api: respx.MockRouter, sleeps: list[float]) -> None:
    api.get("/api/v1/balance").mock(side_effect=httpx.ReadTimeout("slow"))
    async with GatewayClient(KEY, base_url=BASE, max_retries=1) as gw:
        with pytest.raises(APITimeoutError):
            await gw.get_balance()
    assert len(api.calls) == 2


async def test_a_transport_error_names_the_host_the_attempts_and_itself_once(
    sleeps: list[float],
) -> None:
    # A base URL with a user part, a path and a secret in the query: only the
    # scheme, host and port may be shown.
    base = "https://user:pw@gw.test/prefix"
    with respx.mock(assert_all_called=False) as router:
        route = router.get("https://gw.test/prefix/api/v1/balance")
        route.mock(side_effect=httpx.ReadTimeout("ReadTimeout"))
        async with GatewayClient(KEY, base_url=base, max_retries=2) as gw:
            with pytest.raises(APITimeoutError) as caught:
                await gw.get_balance()
    said = str(caught.value)
    assert said == "ReadTimeout at https://gw.test:443; 3 attempts (GET /api/v1/balance)"


async def test_a_connect_error_keeps_httpx_words_and_one_attempt_says_no_count() -> None:
    refused = httpx.ConnectError("All connection attempts failed")
    with respx.mock(assert_all_called=False) as router:
        router.get("http://gw.test:8080/api/v1/balance").mock(side_effect=refused)
        async with GatewayClient(KEY, base_url="http://gw.test:8080", max_retries=0) as gw:
            with pytest.raises(APIConnectionError) as caught:
                await gw.get_balance()
    assert caught.value.message == (
        "ConnectError at http://gw.test:8080: All connection attempts failed"
    )


async def test_retry_after_is_honoured(api: respx.MockRouter, sleeps: list[float]) -> None:
    api.get("/api/v1/balance").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "Hit limit"}),
            httpx.Response(200, json={"balance": 1}),
        ]
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        assert (await gw.get_balance()).balance == 1
    assert sleeps == [7.0]


async def test_retry_after_beyond_the_cap_raises_at_once(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    api.get("/api/v1/balance").respond(
        429, headers={"Retry-After": "3600"}, json={"error": "Hit limit"}
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(RateLimitError) as caught:
            await gw.get_balance()
    assert caught.value.retry_after == 3600.0
    assert len(api.calls) == 1
    assert sleeps == []


async def test_rate_limit_without_retry_after_uses_backoff(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    api.get("/api/v1/balance").respond(429, json={"error": "Hit limit"})
    async with GatewayClient(KEY, base_url=BASE, max_retries=1) as gw:
        with pytest.raises(RateLimitError) as caught:
            await gw.get_balance()
    assert caught.value.retry_after is None
    assert len(api.calls) == 2
    assert len(sleeps) == 1


async def test_retry_after_http_date_is_read(api: respx.MockRouter, sleeps: list[float]) -> None:
    api.get("/api/v1/balance").respond(
        429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={"error": "x"}
    )
    async with GatewayClient(KEY, base_url=BASE, max_retries=1) as gw:
        with pytest.raises(RateLimitError) as caught:
            await gw.get_balance()
    # A date in the past means "now".
    assert caught.value.retry_after == 0.0
    assert sleeps == [0.0]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("closed"),
        httpx.Response(500, json={"error": "oops"}),
        httpx.Response(502, text="<html>Bad gateway</html>"),
        httpx.Response(408),
        httpx.Response(200, text="<html>ok?</html>"),
        httpx.Response(200, json=["not", "an", "invoice"]),
        httpx.Response(200, json={"invoice_id": "x"}),
    ],
    ids=lambda f: type(f).__name__ if isinstance(f, Exception) else f"HTTP{f.status_code}",
)
async def test_create_invoice_is_never_sent_twice(
    api: respx.MockRouter, sleeps: list[float], failure: object
) -> None:
    route = api.get("/api/v1/invoice/create").mock(side_effect=[failure, httpx.Response(200)])
    async with GatewayClient(KEY, base_url=BASE, max_retries=5) as gw:
        with pytest.raises(OutcomeUnknownError) as caught:
            await gw.create_invoice(10000)
    assert route.call_count == 1
    error = caught.value
    assert error.operation == "create_invoice"
    assert error.params == {"amount": 10000}
    assert error.__cause__ is not None
    assert sleeps == []


async def test_create_withdrawal_after_read_timeout_is_sent_once(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    route = api.post("/api/v1/withdraw").mock(side_effect=httpx.ReadTimeout("slow"))
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(OutcomeUnknownError) as caught:
            await gw.create_withdrawal(50000, "081234567890", "John Doe")
    assert route.call_count == 1
    assert caught.value.operation == "create_withdrawal"
    assert caught.value.params == {
        "amount": 50000,
        "account_number": "081234567890",
        "account_name": "John Doe",
    }
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert "apikey" not in repr(caught.value.params)


async def test_cancel_after_server_error_is_sent_once(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    route = api.post("/api/v1/invoice/cancel").respond(503, json={"error": "down"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(OutcomeUnknownError) as caught:
            await gw.cancel_invoice("inv1")
    assert route.call_count == 1
    assert caught.value.operation == "cancel_invoice"
    assert isinstance(caught.value.__cause__, ServerError)


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")],
    ids=lambda e: type(e).__name__,
)
async def test_create_is_retried_when_it_never_left(
    api: respx.MockRouter, sleeps: list[float], failure: Exception
) -> None:
    route = api.get("/api/v1/invoice/create").mock(
        side_effect=[failure, httpx.Response(200, json=CREATED)]
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        invoice = await gw.create_invoice(10000)
    assert invoice.invoice_id == "inv1"
    assert route.call_count == 2


async def test_create_refused_by_rate_limit_is_retried(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    route = api.get("/api/v1/invoice/create").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"}),
            httpx.Response(200, json=CREATED),
        ]
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        await gw.create_invoice(10000)
    assert route.call_count == 2
    assert sleeps == [1.0]


async def test_create_refused_with_4xx_raises_its_typed_error(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    route = api.get("/api/v1/invoice/create").respond(400, json={"error": "Minimal 1000"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(BadRequestError, match="Minimal 1000"):
            await gw.create_invoice(10000)
    assert route.call_count == 1


@pytest.mark.parametrize("status", [400, 200])
async def test_cancelling_a_paid_invoice(api: respx.MockRouter, status: int) -> None:
    api.post("/api/v1/invoice/cancel").respond(
        status, json={"error": "Invoice tidak bisa dibatalkan, status saat ini: paid"}
    )
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(InvoiceNotCancellableError) as caught:
            await gw.cancel_invoice("inv1")
    assert caught.value.status == "paid"
    assert "tidak bisa dibatalkan" in str(caught.value)
    assert caught.value.status_code == status


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="{not json"),
        httpx.Response(200, text="<html><body>502 Bad Gateway</body></html>"),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(200, json={"balance": 1.5}),
        httpx.Response(200, json={"balance": "lots"}),
    ],
)
async def test_unreadable_answers_raise_response_decode_error(
    api: respx.MockRouter, response: httpx.Response
) -> None:
    api.get("/api/v1/balance").mock(return_value=response)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(ResponseDecodeError) as caught:
            await gw.get_balance()
    assert caught.value.path == "/api/v1/balance"
    assert caught.value.excerpt


async def test_html_error_page_keeps_its_status_class(
    api: respx.MockRouter, sleeps: list[float]
) -> None:
    api.get("/api/v1/balance").respond(500, text="<html><h1>Internal Server Error</h1></html>")
    async with GatewayClient(KEY, base_url=BASE, max_retries=0) as gw:
        with pytest.raises(ServerError, match="Internal Server Error"):
            await gw.get_balance()


async def test_total_deadline_stops_retrying(api: respx.MockRouter, sleeps: list[float]) -> None:
    api.get("/api/v1/balance").respond(
        429, headers={"Retry-After": "30"}, json={"error": "Hit limit"}
    )
    async with GatewayClient(KEY, base_url=BASE, max_retries=5, deadline=10.0) as gw:
        with pytest.raises(RateLimitError):
            await gw.get_balance()
    # Waiting 30 s would pass the 10 s deadline, so it gives up without waiting.
    assert len(api.calls) == 1
    assert sleeps == []


async def test_caller_http_client_is_used_and_not_closed(api: respx.MockRouter) -> None:
    api.get("/api/v1/balance").respond(json={"balance": 3})
    async with httpx.AsyncClient(headers={"X-Mine": "1"}) as mine:
        async with GatewayClient(KEY, base_url=BASE, http_client=mine) as gw:
            await gw.get_balance()
        assert not mine.is_closed
        assert api.calls.last.request.headers["X-Mine"] == "1"


async def test_closed_client_refuses_calls(api: respx.MockRouter) -> None:
    gw = GatewayClient(KEY, base_url=BASE)
    await gw.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await gw.get_balance()
    await gw.aclose()  # closing twice is harmless


class _CountingTransport(httpx.AsyncBaseTransport):
    """Answers 503 then 200 and records whether every response stream was closed."""

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []
        self.streams: list[_TrackedStream] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        status = 503 if len(self.responses) < 2 else 200
        stream = _TrackedStream(b'{"balance": 9}' if status == 200 else b'{"error": "busy"}')
        self.streams.append(stream)
        response = httpx.Response(status, stream=stream)
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True


class _TrackedStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    async def __aiter__(self):  # type: ignore[override]
        yield self.data

    async def aclose(self) -> None:
        self.closed = True


async def test_no_response_left_open_after_retries(sleeps: list[float]) -> None:
    transport = _CountingTransport()
    async with GatewayClient(KEY, base_url=BASE, transport=transport) as gw:
        assert (await gw.get_balance()).balance == 9
    assert len(transport.responses) == 3
    assert all(stream.closed for stream in transport.streams)
    assert transport.closed


@pytest.mark.parametrize(
    "body",
    [{"error": "Internal server error"}, {"success": False, "message": "terjadi kesalahan"}],
)
async def test_create_with_an_unplaceable_error_inside_a_200_is_ambiguous(
    api: respx.MockRouter, sleeps: list[float], body: dict[str, object]
) -> None:
    # The server may have made the withdrawal and then failed to say so.
    route = api.post("/api/v1/withdraw").respond(200, json=body)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(OutcomeUnknownError) as caught:
            await gw.create_withdrawal(50000, "081234567890", "John Doe")
    assert route.call_count == 1
    assert isinstance(caught.value.__cause__, APIStatusError)


async def test_create_refused_inside_a_200_is_a_definite_refusal(api: respx.MockRouter) -> None:
    api.post("/api/v1/withdraw").respond(200, json={"success": False, "error": "Invalid apikey"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(AuthenticationError):
            await gw.create_withdrawal(50000, "081234567890", "John Doe")


@pytest.mark.parametrize("field", ["invoice_id", None])
async def test_an_invoice_without_an_id_is_refused(
    api: respx.MockRouter, field: str | None
) -> None:
    body = {**CREATED, "invoice_id": "" if field else None}
    api.get("/api/v1/invoice/create").respond(json=body)
    api.get("/api/v1/invoice/status").respond(json={**body, "status": "pending"})
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(OutcomeUnknownError):
            await gw.create_invoice(10000)
        with pytest.raises(ResponseDecodeError, match="invoice_id"):
            await gw.get_invoice("inv1")


# httpx leaves its byte-stream generator unfinished when decoding fails; trio
# reports that when it is collected. The response itself is closed by httpx.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_broken_compressed_body_is_typed(api: respx.MockRouter) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
        )

    api.get("/api/v1/balance").mock(side_effect=broken)
    api.get("/api/v1/invoice/create").mock(side_effect=broken)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(ResponseDecodeError):
            await gw.get_balance()
        with pytest.raises(OutcomeUnknownError):
            await gw.create_invoice(10000)


async def test_absurdly_nested_json_is_typed(api: respx.MockRouter) -> None:
    api.get("/api/v1/balance").respond(200, content=b"[" * 100_000 + b"]" * 100_000)
    async with GatewayClient(KEY, base_url=BASE) as gw:
        with pytest.raises(ResponseDecodeError):
            await gw.get_balance()


@pytest.mark.parametrize(
    "value", ["Wed, 21 Oct 2015 07:28:00 +99999999999999999999", "soon", "-5", "nan", "inf"]
)
async def test_malformed_retry_after_is_ignored(
    api: respx.MockRouter, sleeps: list[float], value: str
) -> None:
    api.get("/api/v1/balance").respond(429, headers={"Retry-After": value}, json={"error": "x"})
    async with GatewayClient(KEY, base_url=BASE, max_retries=1) as gw:
        with pytest.raises(RateLimitError) as caught:
            await gw.get_balance()
    assert caught.value.retry_after in (None, 0.0)
    assert len(sleeps) == 1
