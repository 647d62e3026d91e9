"""The store contract, run against MemoryStore, SQLiteStore and PostgresStore
alike (PostgreSQL when QRISPAY_TEST_POSTGRES names a server), then what
only a file can do: reopening, sharing between processes, refusing files that
are not qrispay stores, and migrating old schemas."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

import qrispay
from qrispay.store import (
    Changes,
    MemoryStore,
    MerchantState,
    PostgresStore,
    SQLiteStore,
    Store,
    StoreError,
    StoreSchemaError,
    _sqlite,
    _sqlite_schema,
)
from qrispay.store._base import HOLDS_FOREVER, micros

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rec(invoice_id: str, version: int = 1, total: int = 10_000) -> tuple[str, int, str, str, int]:
    text = json.dumps({"id": invoice_id, "v": version})
    return (invoice_id, total, "open", text, HOLDS_FOREVER)


def ev(event_id: str, n: int = 0) -> tuple[str, str, str]:
    return (event_id, "invoice_paid", json.dumps({"n": n, "id": event_id}))


def sorted_state(state: MerchantState | None) -> Any:
    """A load with its key lists in one order: the stores return keys in no
    particular order (records keep first-stored order in both)."""
    if state is None:
        return None
    return (state.meta, state.records, sorted(state.seen), sorted(state.rejected), state.last_seq)


def make_store(kind: str, request: pytest.FixtureRequest) -> Store:
    """A new store of ``kind``; the PostgreSQL one in this test's own schema."""
    if kind == "memory":
        return MemoryStore()
    if kind == "postgres":
        dsn, schema = request.getfixturevalue("pg_schema")
        return PostgresStore(dsn, schema=schema)
    return SQLiteStore(request.getfixturevalue("tmp_path") / "store.db")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with make_store(request.param, request) as opened:
        yield opened


# -- the contract -----------------------------------------------------------------


async def test_unknown_merchant(store: Store) -> None:
    assert await store.load("m") is None
    assert await store.events_after("m", 0, 10) == []
    with pytest.raises(KeyError):
        await store.event_seq("m", "e1")


async def test_round_trip(store: Store) -> None:
    await store.commit(
        "m",
        Changes(
            meta={"engine": {"n": 1}, "polled": "x"},
            records=[rec("a"), rec("b"), rec("c")],
            seen=[("k1", 100), ("k2", 200)],
            rejected=[("r1", 150)],
        ),
    )
    state = await store.load("m")
    assert state is not None
    assert state.meta == {"engine": {"n": 1}, "polled": "x"}
    assert state.records == [rec("a")[3], rec("b")[3], rec("c")[3]]
    assert sorted(state.seen) == [("k1", 100), ("k2", 200)]
    assert state.rejected == [("r1", 150)]
    assert state.last_seq == 0

    # Meta replaced; a replaced record keeps its place; forgotten ones go.
    await store.commit(
        "m",
        Changes(meta={"engine": {"n": 2}}, records=[rec("a", 2), rec("d")], forgotten=["b"]),
    )
    state = await store.load("m")
    assert state is not None
    assert state.meta == {"engine": {"n": 2}}
    assert state.records == [rec("a", 2)[3], rec("c")[3], rec("d")[3]]
    assert sorted(state.seen) == [("k1", 100), ("k2", 200)]


async def test_load_is_a_copy(store: Store) -> None:
    meta: dict[str, Any] = {"list": [1]}
    await store.commit("m", Changes(meta=meta))
    meta["list"].append(2)
    state = await store.load("m")
    assert state is not None
    assert state.meta == {"list": [1]}
    state.meta["list"].append(3)
    again = await store.load("m")
    assert again is not None
    assert again.meta == {"list": [1]}


async def test_keys_keep_first_date_and_horizon_drops_older_only(store: Store) -> None:
    await store.commit(
        "m", Changes(meta={}, seen=[("a", 10), ("b", 20), ("c", 30)], rejected=[("a", 15)])
    )
    # A key already remembered keeps its first date.
    await store.commit("m", Changes(meta={}, seen=[("a", 99)]))
    state = await store.load("m")
    assert state is not None
    assert sorted(state.seen) == [("a", 10), ("b", 20), ("c", 30)]
    # Keys added in the same commit are subject to its horizon too.
    await store.commit(
        "m", Changes(meta={}, seen=[("d", 5), ("e", 40)], rejected=[("r", 25)], horizon=20)
    )
    state = await store.load("m")
    assert state is not None
    assert sorted(state.seen) == [("b", 20), ("c", 30), ("e", 40)]
    assert state.rejected == [("r", 25)]
    await store.commit("m", Changes(meta={}, horizon=1_000))
    state = await store.load("m")
    assert state is not None
    assert (state.seen, state.rejected) == ([], [])


async def test_events_seq_and_duplicates(store: Store) -> None:
    first = await store.commit(
        "m1", Changes(meta={}, events=[ev("e1"), ev("e2")], committed_at=at(1))
    )
    second = await store.commit("m2", Changes(meta={}, events=[ev("e1")], committed_at=at(2)))
    # Stored before, and twice within one commit: stored once, the first one.
    third = await store.commit(
        "m1",
        Changes(meta={}, events=[ev("e2", 9), ev("e3", 1), ev("e3", 2)], committed_at=at(3)),
    )
    seqs = [e.seq for e in first + second + third]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert [e.id for e in first] == ["e1", "e2"]
    assert [(e.id, e.data["n"]) for e in third] == [("e3", 1)]
    assert third[0].created_at == at(3)
    assert third[0].created_at.utcoffset() == timedelta(0)
    assert third[0].kind == "invoice_paid"
    stored = await store.events_after("m1", 0, 10)
    assert stored == first + third
    assert [e.data for e in stored] == [{"n": 0, "id": "e1"}, {"n": 0, "id": "e2"}, third[0].data]
    state = await store.load("m1")
    assert state is not None
    assert state.last_seq == third[0].seq
    other = await store.load("m2")
    assert other is not None
    assert other.last_seq == second[0].seq
    assert await store.event_seq("m1", "e3") == third[0].seq
    assert await store.event_seq("m2", "e1") == second[0].seq
    with pytest.raises(KeyError):
        await store.event_seq("m2", "e2")
    assert await store.commit("m1", Changes(meta={}, events=[ev("e1")])) == []


async def test_events_after_pages(store: Store) -> None:
    await store.commit("m", Changes(meta={}, events=[ev(f"e{i}") for i in range(5)]))
    await store.commit("other", Changes(meta={}, events=[ev("x")]))
    await store.commit("m", Changes(meta={}, events=[ev("e5")]))
    pages, after = [], 0
    while page := await store.events_after("m", after, 2):
        pages.append([e.id for e in page])
        after = page[-1].seq
    assert pages == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
    assert await store.events_after("m", 0, 0) == []
    assert await store.events_after("m", after, 10) == []


async def test_merchants_are_isolated(store: Store) -> None:
    await store.commit(
        "m1", Changes(meta={"who": 1}, records=[rec("a")], seen=[("k", 1)], events=[ev("e")])
    )
    await store.commit("m2", Changes(meta={"who": 2}, records=[rec("a", 2)], events=[ev("e")]))
    await store.commit("m2", Changes(meta={"who": 2}, forgotten=["a"], horizon=10))
    one, two = await store.load("m1"), await store.load("m2")
    assert one is not None
    assert two is not None
    assert (one.meta, one.records, one.seen) == ({"who": 1}, [rec("a")[3]], [("k", 1)])
    assert (two.meta, two.records, two.seen) == ({"who": 2}, [], [])
    assert [e.id for e in await store.events_after("m2", 0, 10)] == ["e"]


async def test_payouts(store: Store) -> None:
    entry, created = await store.payout_claim("acct", "k1", '{"amount": 5}', at(0))
    assert created
    assert (entry.state, entry.request, entry.result, entry.withdraw_id) == (
        "intent",
        '{"amount": 5}',
        None,
        None,
    )
    assert entry.created_at == entry.updated_at == at(0)
    again, created = await store.payout_claim("acct", "k1", '{"amount": 6}', at(1))
    assert not created
    assert again == entry
    await store.payout_claim("acct", "k2", "{}", at(2))
    await store.payout_claim("acct", "k0", "{}", at(-1))
    await store.payout_claim("other", "k1", "{}", at(0))
    assert [e.key for e in await store.payouts_in("acct", "intent")] == ["k0", "k1", "k2"]

    await store.payout_settle(
        "acct", "k1", state="done", result='{"id": "w1"}', withdraw_id="w1", now=at(5)
    )
    # Settling again with the same id is not a conflict.
    await store.payout_settle(
        "acct", "k1", state="done", result='{"id": "w1"}', withdraw_id="w1", now=at(6)
    )
    (done,) = await store.payouts_in("acct", "done")
    assert (done.key, done.result, done.withdraw_id) == ("k1", '{"id": "w1"}', "w1")
    assert (done.created_at, done.updated_at) == (at(0), at(6))
    with pytest.raises(StoreError, match="w1"):
        await store.payout_settle(
            "acct", "k2", state="unknown", result=None, withdraw_id="w1", now=at(7)
        )
    assert [e.key for e in await store.payouts_in("acct", "intent")] == ["k0", "k2"]
    # Another scope may hold the same withdrawal id.
    await store.payout_settle(
        "other", "k1", state="unknown", result=None, withdraw_id="w1", now=at(7)
    )
    assert await store.payout_claimed_ids("acct") == {"w1"}
    assert await store.payout_claimed_ids("other") == {"w1"}
    assert await store.payout_claimed_ids("none") == set()

    with pytest.raises(KeyError):
        await store.payout_settle(
            "acct", "nope", state="done", result=None, withdraw_id=None, now=at(8)
        )
    with pytest.raises(ValueError, match="state"):
        await store.payout_settle(
            "acct", "k2", state="sent", result=None, withdraw_id=None, now=at(8)
        )
    # None deletes: a definite refusal frees the key.
    await store.payout_settle("acct", "k1", state=None, result=None, withdraw_id=None, now=at(9))
    assert await store.payouts_in("acct", "done") == []
    assert await store.payout_claimed_ids("acct") == set()
    fresh, created = await store.payout_claim("acct", "k1", "{}", at(10))
    assert created
    assert fresh.state == "intent"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"records": [rec("new"), rec("zero", total=0)]}, id="total-0"),
        pytest.param({"records": [rec("neg", total=-5)]}, id="total-negative"),
        pytest.param({"events": [ev("fine"), ("bad", "k", "{not json")]}, id="bad-event-json"),
    ],
)
async def test_commit_is_all_or_nothing(store: Store, bad: dict[str, Any]) -> None:
    await store.commit("m", Changes(meta={"v": 1}, records=[rec("a")], seen=[("k", 1)]))
    before = sorted_state(await store.load("m"))
    changes = Changes(
        meta={"v": 2},
        records=bad.get("records", [rec("a", 2)]),
        forgotten=["a"],
        seen=[("k2", 2)],
        horizon=5,
        events=bad.get("events", [ev("e")]),
    )
    with pytest.raises(ValueError):  # noqa: PT011 (either check may be the one)
        await store.commit("m", changes)
    assert sorted_state(await store.load("m")) == before
    assert await store.events_after("m", 0, 10) == []


async def test_meta_not_json_creates_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.commit("m", Changes(meta={"x": object()}))
    assert await store.load("m") is None


async def test_concurrent_commits(store: Store) -> None:
    async def commit(i: int) -> None:
        await store.commit(f"m{i % 3}", Changes(meta={"i": i}, events=[ev(f"e{i}")]))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(commit, i)
    seqs = []
    for m in range(3):
        seqs += [e.seq for e in await store.events_after(f"m{m}", 0, 100)]
    assert sorted(seqs) == list(range(1, 31))


def scripted_changes(rng: random.Random, step: int) -> Changes:
    ids = [f"i{n}" for n in range(8)]
    return Changes(
        meta={"step": step, "x": rng.random()},
        records=[rec(i, step) for i in rng.sample(ids, rng.randint(0, 4))],
        forgotten=rng.sample(ids, rng.randint(0, 2)),
        seen=[(f"s{rng.randint(0, 30)}", rng.randint(0, 100)) for _ in range(rng.randint(0, 5))],
        rejected=[(f"r{rng.randint(0, 9)}", rng.randint(0, 100)) for _ in range(rng.randint(0, 2))],
        horizon=rng.choice([None, rng.randint(0, 60)]),
        events=[ev(f"e{rng.randint(0, 40)}", step) for _ in range(rng.randint(0, 4))],
        committed_at=at(step),
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_durable_store_matches_memory_step_by_step(
    kind: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(13)
    memory, sqlite = MemoryStore(), make_store(kind, request)
    async with memory, sqlite:
        for step in range(60):
            merchant = rng.choice(["m1", "m2"])
            changes = scripted_changes(rng, step)
            assert await memory.commit(merchant, changes) == await sqlite.commit(merchant, changes)
            for m in ("m1", "m2"):
                assert sorted_state(await memory.load(m)) == sorted_state(await sqlite.load(m))
                assert await memory.events_after(m, 3, 5) == await sqlite.events_after(m, 3, 5)


# -- only a file ------------------------------------------------------------------


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    # Used before open(): opens itself.
    await store.commit("m", Changes(meta={"a": 1}, records=[rec("a")], events=[ev("e")]))
    await store.payout_claim("acct", "k", "{}", at(0))
    await store.open()
    await store.aclose()
    await store.aclose()
    # Used after aclose(): opens again.
    assert (await store.load("m")) is not None
    await store.aclose()
    async with SQLiteStore(str(path)) as again:
        await again.open()
        state = await again.load("m")
        assert state is not None
        assert (state.meta, state.records, state.last_seq) == ({"a": 1}, [rec("a")[3]], 1)
        assert [e.id for e in await again.events_after("m", 0, 10)] == ["e"]
        assert [e.key for e in await again.payouts_in("acct", "intent")] == ["k"]
        (new,) = await again.commit("m", Changes(meta={}, events=[ev("e"), ev("f")]))
        assert new.seq == 2


async def test_two_stores_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStore(path) as one, SQLiteStore(path) as two:
        await one.commit("m", Changes(meta={"by": 1}, events=[ev("e1")]))
        state = await two.load("m")
        assert state is not None
        assert (state.meta, state.last_seq) == ({"by": 1}, 1)
        # The other process's commit is already stored: skipped here too.
        assert await two.commit("m", Changes(meta={"by": 2}, events=[ev("e1"), ev("e2")])) == [
            (await two.events_after("m", 1, 1))[0]
        ]
        assert [e.seq for e in await one.events_after("m", 0, 10)] == [1, 2]
        _, created = await one.payout_claim("acct", "k", "{}", at(0))
        _, again = await two.payout_claim("acct", "k", "{}", at(1))
        assert (created, again) == (True, False)


async def test_busy_file_fails_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    async with SQLiteStore(path) as store:
        await store.commit("m", Changes(meta={"v": 1}))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        async with SQLiteStore(path, busy_timeout=0.05) as store:
            with pytest.raises(StoreError, match="locked"):
                await store.commit("m", Changes(meta={"v": 2}))
            blocker.execute("ROLLBACK")
            state = await store.load("m")
            assert state is not None
            assert state.meta == {"v": 1}
    finally:
        blocker.close()


async def test_failure_inside_the_transaction_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the up-front checks switched off, the database's own CHECK fails
    mid-transaction, after the meta and a record were written: none of it stays."""

    def unchecked(changes: Changes) -> tuple[str, list[Any]]:
        return json.dumps(changes.meta), [json.loads(text) for _, _, text in changes.events]

    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.commit("m", Changes(meta={"v": 1}, records=[rec("a")], events=[ev("e0")]))
        before = sorted_state(await store.load("m"))
        monkeypatch.setattr(_sqlite, "prepare", unchecked)
        bad = Changes(
            meta={"v": 2},
            records=[rec("a", 2), rec("b"), rec("zero", total=0)],
            seen=[("k", 1)],
            events=[ev("e1")],
        )
        with pytest.raises(StoreError, match="CHECK"):
            await store.commit("m", bad)
        assert sorted_state(await store.load("m")) == before
        # The failed commit's event seq was never taken.
        (event,) = await store.commit("m", Changes(meta={}, events=[ev("e1")]))
        assert event.seq == 2


async def test_unchanged_rows_are_not_rewritten(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    async with store:
        changes = Changes(meta={"v": 1}, records=[rec("a"), rec("b")], seen=[("k", 1)])
        await store.commit("m", changes)
        conn = store._conn
        assert conn is not None
        before = conn.total_changes
        await store.commit("m", changes)
        assert conn.total_changes == before
        await store.commit("m", Changes(meta={"v": 1}, records=[rec("a"), rec("b", 2)]))
        # The one record that changed, and the merchant's records version with it.
        assert conn.total_changes == before + 2


def plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


async def test_queries_use_their_indexes(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.open()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        forget = plan(conn, _sqlite._FORGET_KEYS, ("m", 0, 5))
        assert "seen_rows_by_date" in forget
        after = plan(
            conn, "SELECT seq FROM events WHERE merchant = ? AND seq > ? ORDER BY seq", ("m", 0)
        )
        assert "events_by_merchant" in after
        assert "TEMP B-TREE" not in after
        claimed = plan(
            conn,
            "SELECT 1 FROM payouts WHERE scope = ? AND withdraw_id = ? AND key <> ?",
            ("a", "w", "k"),
        )
        assert "payouts_by_withdraw_id" in claimed
    finally:
        conn.close()


async def test_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path, busy_timeout=2.5)
    async with store:
        conn = store._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (2500,)
        assert conn.execute("PRAGMA user_version").fetchone() == (_sqlite_schema.VERSION,)
        info = conn.execute("SELECT name, value FROM qrispay_info").fetchall()
        assert info == [("application", "qrispay")]


async def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    async with SQLiteStore(path) as store:
        await store.commit("m", Changes(meta={}))
        assert await store.load("m") is not None


def foreign_db(path: Path, user_version: int = 0) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO invoices (body) VALUES ('theirs')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("user_version", [0, 1, 7])
async def test_foreign_database_is_refused_and_untouched(tmp_path: Path, user_version: int) -> None:
    path = tmp_path / "theirs.db"
    foreign_db(path, user_version)
    content = path.read_bytes()
    store = SQLiteStore(path)
    for _ in range(2):  # each call says so again: no half-open store
        with pytest.raises(StoreError, match="not a qrispay store") as info:
            await store.load("m")
        assert not isinstance(info.value, StoreSchemaError)
        assert str(path) in str(info.value)
    await store.aclose()
    assert path.read_bytes() == content
    assert not (tmp_path / "theirs.db-wal").exists()


async def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all\n" * 200)
    content = path.read_bytes()
    store = SQLiteStore(path)
    for _ in range(2):
        with pytest.raises(StoreError, match="cannot open") as info:
            await store.open()
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == content


async def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        await SQLiteStore(tmp_path / "no" / "such" / "dir.db").open()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    async with SQLiteStore(path) as store:
        await store.commit("m", Changes(meta={}))
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {_sqlite_schema.VERSION + 5}")
    conn.close()
    with pytest.raises(StoreSchemaError) as info:
        await SQLiteStore(path).open()
    message = str(info.value)
    assert str(_sqlite_schema.VERSION + 5) in message
    assert f"version {_sqlite_schema.VERSION}" in message
    assert str(path) in message


async def test_migration_from_v1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    _sqlite_schema.migrate(conn, target=1)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "events_by_merchant" not in indexes
    # Data as the v1 code wrote it.
    conn.execute("INSERT INTO merchants VALUES ('m', '{\"v\": 1}')")
    conn.execute("INSERT INTO invoices VALUES ('m', 'a', 500, 'pending', ?)", (rec("a")[3],))
    conn.execute("INSERT INTO seen_rows VALUES ('m', 0, 'k', 10), ('m', 1, 'r', 20)")
    conn.execute(
        "INSERT INTO events (merchant, id, kind, created_us, data) VALUES (?, ?, ?, ?, ?)",
        ("m", "e1", "invoice_paid", micros(at(1)), '{"n": 1}'),
    )
    conn.execute(
        "INSERT INTO payouts VALUES ('acct', 'k', '{}', 'done', '{}', 'w1', ?, ?)",
        (micros(at(0)), micros(at(2))),
    )
    conn.close()

    async with SQLiteStore(path) as store:
        state = await store.load("m")
        assert state is not None
        assert (state.meta, state.records, state.seen, state.rejected, state.last_seq) == (
            {"v": 1},
            [rec("a")[3]],
            [("k", 10)],
            [("r", 20)],
            1,
        )
        (event,) = await store.events_after("m", 0, 10)
        assert (event.id, event.created_at, event.data) == ("e1", at(1), {"n": 1})
        (payout,) = await store.payouts_in("acct", "done")
        assert (payout.withdraw_id, payout.updated_at) == ("w1", at(2))
        (new,) = await store.commit("m", Changes(meta={}, events=[ev("e1"), ev("e2")]))
        assert new.seq == 2

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (_sqlite_schema.VERSION,)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"events_by_merchant", "payouts_by_state"} <= indexes
    finally:
        conn.close()


async def test_migration_is_idempotent_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    _sqlite_schema.migrate(conn, target=1)
    conn.close()
    stores = [SQLiteStore(path) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    for store in stores:
        await store.aclose()
    async with SQLiteStore(path) as reopened:
        assert await reopened.load("m") is None


async def test_repr_shows_only_the_path(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert repr(store) == f"<SQLiteStore path={str(tmp_path / 's.db')!r}>"
    assert store.path == str(tmp_path / "s.db")


def test_exported() -> None:
    assert qrispay.SQLiteStore is SQLiteStore
    assert "SQLiteStore" in qrispay.__all__


def test_only_store_modules_import_sqlite3() -> None:
    package = Path(qrispay.__file__).parent
    importers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "import sqlite3" in path.read_text(encoding="utf-8")
    }
    assert importers
    assert all(name.startswith("store/_sqlite") for name in importers), importers


def test_a_new_file_opened_by_several_processes_at_once(tmp_path: Path) -> None:
    # The switch to WAL needs the file to itself; SQLite does not wait for it,
    # so without our own wait one of these processes would fail to open.
    path = tmp_path / "new.db"
    script = (
        "import sys, anyio\n"
        "from qrispay import SQLiteStore\n"
        "async def main():\n"
        "    async with SQLiteStore(sys.argv[1]) as store:\n"
        "        assert await store.load('m') is None\n"
        "anyio.run(main)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, errors
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
