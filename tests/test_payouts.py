"""Payouts: a withdrawal is sent at most once per idempotency key (respx for
the gateway's answers, then the sandbox end to end)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import httpx
import pytest
import respx

from qrispay import (
    APIConnectionError,
    BadRequestError,
    GatewayClient,
    MemoryStore,
    OutcomeUnknownError,
    Payouts,
    Store,
    Withdrawal,
    WithdrawalStatus,
)
from qrispay._codec import dump_withdrawal, load_withdrawal
from qrispay.payouts import CLOCK_SKEW
from qrispay.sandbox import Sandbox
from qrispay.store import PostgresStore, SQLiteStore, StoreError
from qrispay.store._base import PAYOUT_STATES, PayoutEntry

from .conftest import SECRET

pytestmark = pytest.mark.anyio

BASE = "https://gw.test"
T0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)
NUMBER = "081234567890"
NAME = "John Doe"
ARGS = (100_000, NUMBER, NAME)

#: The stores the contract runs on.
STORES: dict[str, Callable[[pytest.FixtureRequest], Store]] = {
    "memory": lambda request: MemoryStore(),
    "sqlite": lambda request: SQLiteStore(request.getfixturevalue("tmp_path") / "store.db"),
    "postgres": lambda request: _postgres(request),
}


def _postgres(request: pytest.FixtureRequest) -> Store:
    # In this test's own schema of the server QRISPAY_TEST_POSTGRES names.
    dsn, schema = request.getfixturevalue("pg_schema")
    return PostgresStore(dsn, schema=schema)


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with STORES[request.param](request) as opened:
        yield opened


def answer(withdraw_id: str = "w1", amount: int = 100_000, at: datetime = T0) -> dict[str, Any]:
    """The gateway's answer to a withdrawal request."""
    return {
        "success": True,
        "message": "Permintaan penarikan berhasil diajukan",
        "withdraw_id": withdraw_id,
        "amount": amount,
        "fee": 1000,
        "total_deduct": amount + 1000,
        "new_balance": 899_000,
        "status": "pending",
        "created_at": at.isoformat(),
    }


def row(
    withdraw_id: str,
    amount: int = 100_000,
    number: str = NUMBER,
    name: str = NAME,
    at: datetime = T0,
) -> dict[str, Any]:
    """One withdrawal of the history."""
    return {
        "withdraw_id": withdraw_id,
        "amount": amount,
        "fee": 1000,
        "total_deduct": amount + 1000,
        "status": "pending",
        "method": "dana",
        "account_number": number,
        "account_name": name,
        "admin_note": None,
        "created_at": at.isoformat(),
        "processed_at": None,
    }


@attrs.define
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@attrs.define
class Gateway:
    """The mocked gateway: what withdrawing answers, and the history it lists."""

    router: respx.MockRouter
    post: respx.Route
    list: respx.Route
    history: list[dict[str, Any]] = attrs.field(factory=list)

    def answers(self, *effects: Any) -> None:
        self.post.side_effect = list(effects)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        post = router.post("/api/v1/withdraw")
        listing = router.get("/api/v1/withdraw/history")
        mocked = Gateway(router, post, listing)

        def history(request: httpx.Request) -> httpx.Response:
            page, limit = int(request.url.params["page"]), int(request.url.params["limit"])
            rows = mocked.history[(page - 1) * limit : page * limit]
            pages = max(1, -(-len(mocked.history) // limit))
            info = {"page": page, "limit": limit, "total": len(mocked.history)}
            return httpx.Response(
                200,
                json={"success": True, "data": rows, "pagination": {**info, "total_pages": pages}},
            )

        listing.side_effect = history
        yield mocked


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def payouts(store: Store, clock: Clock) -> AsyncIterator[Payouts]:
    async with GatewayClient(SECRET, base_url=BASE, max_retries=0) as gw:
        yield Payouts(gw, store=store, clock=clock)


async def entries(store: Store, scope: str) -> dict[str, PayoutEntry]:
    found: dict[str, PayoutEntry] = {}
    for state in PAYOUT_STATES:
        found.update({entry.key: entry for entry in await store.payouts_in(scope, state)})
    return found


async def unknown(payouts: Payouts, gateway: Gateway, key: str = "k1") -> None:
    """Withdraw ``ARGS`` under ``key`` with the answer lost after sending."""
    gateway.answers(httpx.ReadTimeout("read timed out"))
    with pytest.raises(OutcomeUnknownError):
        await payouts.withdraw(*ARGS, key=key)


def request_text(amount: int = 100_000, number: str = NUMBER, name: str = NAME) -> str:
    return json.dumps({"amount": amount, "account_number": number, "account_name": name})


# -- sent once, recorded ------------------------------------------------------------


async def test_first_withdraw_sends_once_and_records(
    payouts: Payouts, gateway: Gateway, store: Store
) -> None:
    gateway.answers(httpx.Response(200, json=answer("w1")))
    withdrawal = await payouts.withdraw(*ARGS, key="k1")
    assert withdrawal.withdraw_id == "w1"
    assert withdrawal.status is WithdrawalStatus.PENDING
    assert gateway.post.call_count == 1
    sent = json.loads(gateway.post.calls.last.request.content)
    assert sent == {"amount": 100_000, "accountNumber": NUMBER, "accountName": NAME}
    entry = (await entries(store, payouts.scope))["k1"]
    assert (entry.state, entry.withdraw_id, entry.created_at) == ("done", "w1", T0)
    assert entry.result is not None
    assert load_withdrawal(json.loads(entry.result)) == withdrawal


async def test_the_same_key_again_returns_the_record_without_sending(
    payouts: Payouts, gateway: Gateway
) -> None:
    gateway.answers(httpx.Response(200, json=answer("w1")))
    first = await payouts.withdraw(*ARGS, key="k1")
    again = await payouts.withdraw(*ARGS, key="k1")
    assert again == first
    assert gateway.post.call_count == 1
    assert gateway.list.call_count == 0


@pytest.mark.parametrize(
    "other",
    [(100_001, NUMBER, NAME), (100_000, "081234567891", NAME), (100_000, NUMBER, "Jane Doe")],
    ids=["amount", "number", "name"],
)
async def test_the_same_key_with_other_arguments_is_refused(
    payouts: Payouts, gateway: Gateway, other: tuple[int, str, str]
) -> None:
    gateway.answers(httpx.Response(200, json=answer("w1")))
    await payouts.withdraw(*ARGS, key="k1")
    with pytest.raises(ValueError, match="another withdrawal"):
        await payouts.withdraw(*other, key="k1")
    assert gateway.post.call_count == 1


async def test_other_arguments_are_refused_for_an_unknown_key_too(
    payouts: Payouts, gateway: Gateway
) -> None:
    await unknown(payouts, gateway)
    with pytest.raises(ValueError, match="another withdrawal"):
        await payouts.withdraw(5_000, NUMBER, NAME, key="k1")
    assert (gateway.post.call_count, gateway.list.call_count) == (1, 0)


@pytest.mark.parametrize(
    "bad",
    [
        ((0, NUMBER, NAME), {"key": "k1"}),
        ((100.0, NUMBER, NAME), {"key": "k1"}),
        ((100, "12345", NAME), {"key": "k1"}),
        ((100, NUMBER, " "), {"key": "k1"}),
        ((100, NUMBER, NAME), {"key": ""}),
    ],
    ids=["zero", "float", "number", "name", "key"],
)
async def test_arguments_are_checked_before_anything_is_committed(
    payouts: Payouts, gateway: Gateway, store: Store, bad: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    args, kw = bad
    with pytest.raises(ValueError, match=r"amount|account_number|account_name|key"):
        await payouts.withdraw(*args, **kw)
    assert await entries(store, payouts.scope) == {}
    assert gateway.post.call_count == 0


async def test_a_closed_client_commits_nothing(store: Store, gateway: Gateway) -> None:
    gw = GatewayClient(SECRET, base_url=BASE)
    await gw.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await Payouts(gw, store=store).withdraw(*ARGS, key="k1")
    assert await entries(store, Payouts(gw, store=store).scope) == {}


# -- a definite refusal frees the key -------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(400, json={"success": False, "message": "Saldo tidak mencukupi"}),
        httpx.ConnectError("connection refused"),
    ],
    ids=["400", "never-sent"],
)
async def test_a_definite_refusal_frees_the_key(
    payouts: Payouts, gateway: Gateway, store: Store, refusal: Any
) -> None:
    gateway.answers(refusal, httpx.Response(200, json=answer("w1")))
    with pytest.raises((BadRequestError, APIConnectionError)):
        await payouts.withdraw(*ARGS, key="k1")
    assert await entries(store, payouts.scope) == {}
    withdrawal = await payouts.withdraw(*ARGS, key="k1")
    assert withdrawal.withdraw_id == "w1"
    assert gateway.post.call_count == 2


# -- an unknown outcome ---------------------------------------------------------------


async def test_a_timeout_after_sending_leaves_the_outcome_unknown(
    payouts: Payouts, gateway: Gateway, store: Store
) -> None:
    await unknown(payouts, gateway)
    assert gateway.post.call_count == 1
    assert (await entries(store, payouts.scope))["k1"].state == "unknown"


async def test_the_same_key_finds_an_unknown_outcome_in_the_history(
    payouts: Payouts, gateway: Gateway, store: Store, clock: Clock
) -> None:
    await unknown(payouts, gateway)
    gateway.history = [
        row("other-amount", amount=100_001),
        row("other-number", number="081234567891"),
        row("other-name", name="Jane Doe"),
        row("too-old", at=T0 - CLOCK_SKEW - timedelta(seconds=1)),
        row("w1", at=T0 + timedelta(seconds=3)),
    ]
    clock.now = T0 + timedelta(hours=1)
    withdrawal = await payouts.withdraw(*ARGS, key="k1")
    assert withdrawal.withdraw_id == "w1"
    entry = (await entries(store, payouts.scope))["k1"]
    assert (entry.state, entry.withdraw_id) == ("done", "w1")
    # Recorded now: a third call reads the store, not the history.
    assert await payouts.withdraw(*ARGS, key="k1") == withdrawal
    assert (gateway.post.call_count, gateway.list.call_count) == (1, 1)


async def test_a_clock_a_little_ahead_is_allowed_for(payouts: Payouts, gateway: Gateway) -> None:
    await unknown(payouts, gateway)
    gateway.history = [row("w1", at=T0 - CLOCK_SKEW + timedelta(seconds=1))]
    assert (await payouts.withdraw(*ARGS, key="k1")).withdraw_id == "w1"


@pytest.mark.parametrize("found", [[], ["w1", "w2"]], ids=["none", "two"])
async def test_no_single_match_stays_unknown_and_sends_nothing(
    payouts: Payouts, gateway: Gateway, store: Store, found: list[str]
) -> None:
    await unknown(payouts, gateway)
    gateway.history = [row(withdraw_id) for withdraw_id in found]
    with pytest.raises(OutcomeUnknownError, match="still unknown") as caught:
        await payouts.withdraw(*ARGS, key="k1")
    assert caught.value.operation == "withdraw"
    assert caught.value.params == {
        "amount": 100_000,
        "account_number": NUMBER,
        "account_name": NAME,
        "key": "k1",
    }
    assert gateway.post.call_count == 1
    assert (await entries(store, payouts.scope))["k1"].state == "unknown"


async def test_an_unknown_request_cannot_be_a_withdrawal_made_after_it_ended(
    payouts: Payouts, gateway: Gateway
) -> None:
    await unknown(payouts, gateway)
    gateway.history = [row("later", at=T0 + CLOCK_SKEW + timedelta(seconds=1))]
    with pytest.raises(OutcomeUnknownError):
        await payouts.withdraw(*ARGS, key="k1")


async def test_a_withdrawal_claimed_by_another_key_is_not_taken(
    payouts: Payouts, gateway: Gateway, store: Store
) -> None:
    gateway.answers(httpx.Response(200, json=answer("w1")))
    await payouts.withdraw(*ARGS, key="k1")
    await unknown(payouts, gateway, key="k2")
    gateway.history = [row("w1")]
    with pytest.raises(OutcomeUnknownError):
        await payouts.withdraw(*ARGS, key="k2")
    # With one more withdrawal of the same kind, that one is k2's.
    gateway.history = [row("w2"), row("w1")]
    assert (await payouts.withdraw(*ARGS, key="k2")).withdraw_id == "w2"
    assert (await entries(store, payouts.scope))["k2"].withdraw_id == "w2"
    assert gateway.post.call_count == 2


async def test_the_store_refuses_one_withdrawal_for_two_keys(
    payouts: Payouts, store: Store
) -> None:
    for key in ("k1", "k2"):
        await store.payout_claim(payouts.scope, key, request_text(), T0)
    await store.payout_settle(
        payouts.scope, "k1", state="done", result="{}", withdraw_id="w1", now=T0
    )
    with pytest.raises(StoreError):
        await store.payout_settle(
            payouts.scope, "k2", state="done", result="{}", withdraw_id="w1", now=T0
        )


# -- a crash between the intent and its outcome ---------------------------------------


async def test_an_intent_left_by_a_crash_is_never_sent(
    payouts: Payouts, gateway: Gateway, store: Store
) -> None:
    await store.payout_claim(payouts.scope, "k1", request_text(), T0)
    with pytest.raises(OutcomeUnknownError):
        await payouts.withdraw(*ARGS, key="k1")
    assert (await entries(store, payouts.scope))["k1"].state == "intent"
    # Sent before the crash after all: it shows up, however late, and is taken.
    gateway.history = [row("w1", at=T0 + timedelta(hours=2))]
    assert (await payouts.withdraw(*ARGS, key="k1")).withdraw_id == "w1"
    assert (await entries(store, payouts.scope))["k1"].state == "done"
    assert gateway.post.call_count == 0


async def test_resolve_unknown_settles_what_it_can(
    payouts: Payouts, gateway: Gateway, store: Store, clock: Clock
) -> None:
    await unknown(payouts, gateway, key="lost")
    clock.now = T0 + timedelta(minutes=1)
    await unknown(payouts, gateway, key="never-found")
    await store.payout_claim(payouts.scope, "crashed", request_text(amount=7_000), T0)
    gateway.answers(httpx.Response(200, json=answer("w-done", amount=9_000)))
    await payouts.withdraw(9_000, NUMBER, NAME, key="done")
    # One withdrawal of ARGS only: the older intent takes it, the other stays unknown.
    gateway.history = [row("w-crashed", amount=7_000), row("w-lost"), row("w-done", amount=9_000)]
    settled = await payouts.resolve_unknown()
    assert [w.withdraw_id for w in settled] == ["w-crashed", "w-lost"]
    states = {key: e.state for key, e in (await entries(store, payouts.scope)).items()}
    assert states == {"lost": "done", "crashed": "done", "never-found": "unknown", "done": "done"}
    assert await payouts.resolve_unknown() == []
    assert gateway.post.call_count == 3
    assert gateway.list.call_count == 2


async def test_resolve_unknown_with_nothing_unknown_asks_nothing(
    payouts: Payouts, gateway: Gateway
) -> None:
    assert await payouts.resolve_unknown() == []
    assert gateway.list.call_count == 0


# -- scopes and secrets ---------------------------------------------------------------


async def test_keys_are_scoped_by_gateway_account(store: Store, gateway: Gateway) -> None:
    gateway.answers(httpx.Response(200, json=answer("w1")), httpx.Response(200, json=answer("w2")))
    async with (
        GatewayClient(SECRET, base_url=BASE) as one,
        GatewayClient("another-key", base_url=BASE) as other,
        GatewayClient(SECRET, base_url=BASE + "/") as same,
    ):
        first = Payouts(one, store=store)
        assert first.scope == Payouts(same, store=store).scope
        assert first.scope != Payouts(other, store=store).scope
        assert (await first.withdraw(*ARGS, key="k1")).withdraw_id == "w1"
        assert (await Payouts(other, store=store).withdraw(*ARGS, key="k1")).withdraw_id == "w2"
        assert (await Payouts(same, store=store).withdraw(*ARGS, key="k1")).withdraw_id == "w1"
    assert gateway.post.call_count == 2


async def test_no_secret_in_reprs_messages_or_stored_entries(
    payouts: Payouts, gateway: Gateway, store: Store
) -> None:
    seen: list[str] = [repr(payouts), payouts.scope]
    gateway.answers(
        httpx.Response(200, json=answer("w1")),
        httpx.Response(400, json={"success": False, "message": "Saldo tidak mencukupi"}),
        httpx.ReadTimeout("read timed out"),
    )
    await payouts.withdraw(*ARGS, key="k1")
    for key in ("k2", "k3", "k3"):
        with pytest.raises((BadRequestError, OutcomeUnknownError)) as caught:
            await payouts.withdraw(*ARGS, key=key)
        error: BaseException | None = caught.value
        while error is not None:
            seen += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    with pytest.raises(ValueError, match="another withdrawal") as refused:
        await payouts.withdraw(1, NUMBER, NAME, key="k1")
    seen += [str(refused.value), repr(refused.value)]
    for entry in (await entries(store, payouts.scope)).values():
        seen += [repr(entry), *map(str, attrs.astuple(entry))]
    text = "\n".join(seen)
    for secret in (SECRET, urllib.parse.quote(SECRET), urllib.parse.quote_plus(SECRET)):
        assert secret not in text


# -- the codec ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [WithdrawalStatus.SUCCESS, "on_hold"])
def test_a_withdrawal_round_trips_through_json(status: WithdrawalStatus | str) -> None:
    withdrawal = Withdrawal(
        withdraw_id="w1",
        amount=100_000,
        fee=1000,
        total_deduct=101_000,
        status=status,
        method=None,
        account_number=NUMBER,
        account_name=NAME,
        admin_note="ok",
        created_at=T0,
        processed_at=T0 + timedelta(hours=1),
        new_balance=None,
    )
    data = json.loads(json.dumps(dump_withdrawal(withdrawal)))
    assert data["created_at"] == "2026-05-01T03:00:00+00:00"
    loaded = load_withdrawal(data)
    assert loaded == withdrawal
    assert type(loaded.status) is type(status)


# -- end to end on the sandbox --------------------------------------------------------


async def test_on_the_sandbox_a_lost_answer_is_found_and_never_sent_again(store: Store) -> None:
    sandbox = Sandbox(gateway_balance=1_000_000)
    async with sandbox.gateway_client() as gw:
        payouts = Payouts(gw, store=store)
        first = await payouts.withdraw(*ARGS, key="k1")
        assert await payouts.withdraw(*ARGS, key="k1") == first
        # Handled, then a 5xx: it happened, and no answer said so.
        sandbox.fail_next("error_after", endpoint="create_withdrawal")
        with pytest.raises(OutcomeUnknownError):
            await payouts.withdraw(*ARGS, key="k2")
        # A 5xx before handling: nothing happened, and the client cannot tell.
        sandbox.fail_next("error", endpoint="create_withdrawal")
        with pytest.raises(OutcomeUnknownError):
            await payouts.withdraw(*ARGS, key="k3")
        settled = await payouts.resolve_unknown()
        assert len(settled) == 1
        assert settled[0].withdraw_id != first.withdraw_id
        with pytest.raises(OutcomeUnknownError):
            await payouts.withdraw(*ARGS, key="k3")
        assert await payouts.withdraw(*ARGS, key="k2") == settled[0]
    assert len(sandbox.withdrawal_ids()) == 2
    assert sandbox.stats.requests["create_withdrawal"] == 3
