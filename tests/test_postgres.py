"""PostgresStore: the several-workers part of the store contract on every store,
then what only PostgreSQL does here, against a real server (QRISPAY_TEST_POSTGRES;
without one these skip, and fail on CI): claims and leases raced from several
pools, a fenced commit racing a takeover, migration between processes, schemas
that are not ours or are newer, the DSN's password kept secret, and the
message when the extra is missing."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import qrispay
from qrispay.errors import InvoiceStateConflictError, LeaseLostError
from qrispay.store import (
    Changes,
    PostgresStore,
    Store,
    StoreError,
    StoreSchemaError,
    _postgres_schema,
)
from qrispay.store._base import micros

from .conftest import POSTGRES_ENV, postgres_dsn
from .test_store import at, ev, make_store, rec, sorted_state

pytestmark = pytest.mark.anyio

PASSWORD = "pg-S3cr3t/pa:ss@word"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with make_store(request.param, request) as opened:
        yield opened


@pytest.fixture
def pg(pg_schema: tuple[str, str]) -> Iterator[Any]:
    """A plain psycopg connection to the test server, for looking under the store."""
    import psycopg

    with psycopg.connect(pg_schema[0], autocommit=True) as conn:
        yield conn


def closed(invoice_id: str, until: int, total: int = 10_000) -> tuple[str, int, str, str, int]:
    return (invoice_id, total, "paid", json.dumps({"id": invoice_id, "closed": True}), until)


# -- the several-workers contract, on every store -----------------------------------


async def test_lease_claim_renew_takeover_release(store: Store) -> None:
    first = await store.claim_lease("m", "a", None, now=at(0), ttl=60)
    assert first is not None
    assert (first.holder, first.epoch, first.expires_at) == ("a", 1, at(1))
    # Another holder waits while the lease is live; the holder renews at its epoch.
    assert await store.claim_lease("m", "b", None, now=at(0.5), ttl=60) is None
    renewed = await store.claim_lease("m", "a", 1, now=at(0.5), ttl=60)
    assert renewed is not None
    assert (renewed.epoch, renewed.expires_at) == (1, at(1.5))
    # The same name at another epoch is an earlier incarnation: a new epoch.
    again = await store.claim_lease("m", "a", None, now=at(0.6), ttl=60)
    assert again is not None
    assert again.epoch == 2
    # Lapsed: anyone takes it.
    taken = await store.claim_lease("m", "b", None, now=at(2), ttl=60)
    assert taken is not None
    assert (taken.holder, taken.epoch) == ("b", 3)
    # Releasing by a former holder changes nothing; by the holder, frees it now.
    await store.release_lease("m", "a", 2)
    assert await store.claim_lease("m", "c", None, now=at(2.1), ttl=60) is None
    await store.release_lease("m", "b", 3)
    freed = await store.claim_lease("m", "c", None, now=at(2.1), ttl=60)
    assert freed is not None
    assert (freed.holder, freed.epoch) == ("c", 4)
    # Leases are per merchant.
    other = await store.claim_lease("m2", "a", None, now=at(2.1), ttl=60)
    assert other is not None
    assert other.epoch == 1


async def test_fenced_commit_refused_after_takeover(store: Store) -> None:
    lease = await store.claim_lease("m", "a", None, now=at(0), ttl=60)
    assert lease is not None
    await store.commit("m", Changes(meta={"v": 1}, records=[rec("a")], fence=("a", 1)))
    before = sorted_state(await store.load("m"))
    assert await store.claim_lease("m", "b", None, now=at(5), ttl=60) is not None
    with pytest.raises(LeaseLostError):
        await store.commit(
            "m",
            Changes(
                meta={"v": 2},
                records=[rec("a", 2), rec("b", total=20_000)],
                seen=[("k", 1)],
                events=[ev("e1")],
                fence=("a", 1),
            ),
        )
    assert sorted_state(await store.load("m")) == before
    assert await store.events_after("m", 0, 10) == []
    # No lease at all: refused too, and nothing is created.
    with pytest.raises(LeaseLostError):
        await store.commit("new", Changes(meta={"v": 1}, fence=("a", 1)))
    assert await store.load("new") is None


async def test_close_only_over_an_open_invoice(store: Store) -> None:
    await store.commit("m", Changes(meta={}, records=[rec("a"), rec("b", total=2)]))
    # The poller pays "a" first.
    await store.commit("m", Changes(meta={}, records=[closed("a", micros(at(60)))]))
    state_before = sorted_state(await store.load("m"))
    with pytest.raises(InvoiceStateConflictError, match="'a'"):
        await store.commit(
            "m",
            Changes(
                meta={"x": 1},
                records=[closed("a", 5), closed("b", 5, total=2)],
                events=[ev("cancelled:a")],
                if_open=frozenset({"a", "b"}),
            ),
        )
    assert sorted_state(await store.load("m")) == state_before
    # "b" is open: its close goes through; an unknown id is no conflict.
    await store.commit(
        "m", Changes(meta={}, records=[closed("b", 5, total=2)], if_open=frozenset({"b", "zz"}))
    )


async def test_claim_invoices(store: Store) -> None:
    refused = await store.claim_invoices(
        "m", [rec("a", total=100), rec("b", total=200), rec("c", total=100)], now=at(0)
    )
    assert refused == {"c": "a"}
    _, version = await store.records_since("m", 0)
    # Stored already (its own id), total held (the holder's id), fine.
    refused = await store.claim_invoices(
        "m", [rec("a", total=300), rec("d", total=200), rec("e", total=300)], now=at(0)
    )
    assert refused == {"a": "a", "d": "b"}
    records, now_version = await store.records_since("m", version)
    assert records == [rec("e", total=300)[3]]
    assert now_version > version
    # Closed, holding until minute 10: refused until then, then free.
    await store.commit("m", Changes(meta={}, records=[closed("a", micros(at(10)), total=100)]))
    assert await store.claim_invoices("m", [rec("f", total=100)], now=at(10)) == {"f": "a"}
    assert await store.claim_invoices("m", [rec("f", total=100)], now=at(11)) == {}
    # Once "f" holds it, a write to the old holder does not free it.
    await store.commit("m", Changes(meta={}, records=[closed("a", micros(at(12)), total=100)]))
    assert await store.claim_invoices("m", [rec("g", total=100)], now=at(13)) == {"g": "f"}
    # Forgetting the holder frees the total.
    await store.commit("m", Changes(meta={}, forgotten=["f"]))
    assert await store.claim_invoices("m", [rec("g", total=100)], now=at(13)) == {}
    state = await store.load("m")
    assert state is not None
    assert state.records == [
        closed("a", micros(at(12)), total=100)[3],
        rec("b", total=200)[3],
        rec("e", total=300)[3],
        rec("g", total=100)[3],
    ]
    # Merchants are apart; a bad total is refused before anything.
    assert await store.claim_invoices("m2", [rec("x", total=100)], now=at(13)) == {}
    with pytest.raises(ValueError, match="positive"):
        await store.claim_invoices("m", [rec("h", total=7), rec("i", total=0)], now=at(13))
    assert await store.claim_invoices("m", [rec("h", total=7)], now=at(13)) == {}


async def test_records_since_and_version(store: Store) -> None:
    assert await store.records_since("m", 0) == ([], 0)
    await store.commit("m", Changes(meta={}, records=[rec("a"), rec("b", total=2)]))
    records, first = await store.records_since("m", 0)
    assert records == [rec("a")[3], rec("b", total=2)[3]]
    assert first >= 1
    await store.commit("m", Changes(meta={}, records=[rec("b", 2, total=2)]))
    records, second = await store.records_since("m", first)
    assert (records, second > first) == ([rec("b", 2, total=2)[3]], True)
    assert await store.records_since("m", second) == ([], second)
    assert (await store.records_since("m", 2**62))[1] == second


# -- only PostgreSQL ----------------------------------------------------------------


def pg_store(pg_schema: tuple[str, str], **options: Any) -> PostgresStore:
    dsn, schema = pg_schema
    return PostgresStore(dsn, schema=schema, **options)


async def at_once(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """The results of ``calls``, started together (as near as threads allow)."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    async def run(i: int, call: Callable[[], Awaitable[Any]]) -> None:
        await anyio.to_thread.run_sync(start.wait)
        results[i] = await call()

    async with anyio.create_task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(run, i, call)
    return results


async def test_racing_claims_from_two_pools_one_wins(pg_schema: tuple[str, str]) -> None:
    async with pg_store(pg_schema) as one, pg_store(pg_schema) as two:
        for n in range(1, 31):
            x, y = await at_once(
                partial(one.claim_invoices, "m", [rec(f"x{n}", total=n)], now=at(0)),
                partial(two.claim_invoices, "m", [rec(f"y{n}", total=n)], now=at(0)),
            )
            assert (x, y) in (({}, {f"y{n}": f"x{n}"}), ({f"x{n}": f"y{n}"}, {})), (x, y)
        state = await one.load("m")
        assert state is not None
        assert len(state.records) == 30


async def test_racing_lease_claims_one_holder(pg_schema: tuple[str, str]) -> None:
    stores = [pg_store(pg_schema) for _ in range(5)]
    try:
        for store in stores:
            await store.open()
        for round_ in range(10):
            now = at(round_ * 10)  # each round, the last one's lease has lapsed
            got = await at_once(
                *(
                    partial(store.claim_lease, "m", f"w{i}", None, now=now, ttl=60)
                    for i, store in enumerate(stores)
                )
            )
            leases = [lease for lease in got if lease is not None]
            assert len(leases) == 1, got
            assert leases[0].epoch == round_ + 1
    finally:
        for store in stores:
            await store.aclose()


async def test_racing_payout_claims_one_intent(pg_schema: tuple[str, str]) -> None:
    """A withdrawal is sent at most once: of two workers claiming one key at
    once, exactly one gets the new intent, and both see the same entry."""
    async with pg_store(pg_schema) as one, pg_store(pg_schema) as two:
        for n in range(20):
            (a, made_a), (b, made_b) = await at_once(
                partial(one.payout_claim, "acct", f"k{n}", '{"by": 1}', at(0)),
                partial(two.payout_claim, "acct", f"k{n}", '{"by": 2}', at(0)),
            )
            assert sorted([made_a, made_b]) == [False, True]
            assert a == b


async def test_fenced_commit_waits_for_a_takeover_then_is_refused(
    pg_schema: tuple[str, str], pg: Any
) -> None:
    from psycopg import sql

    async with pg_store(pg_schema) as store:
        await store.claim_lease("m", "a", None, now=at(0), ttl=60)
        await store.commit("m", Changes(meta={"v": 1}, fence=("a", 1)))
        table = sql.Identifier(pg_schema[1], "leases")
        # A takeover in flight holds the lease row until it commits.
        pg.execute("BEGIN")
        pg.execute(sql.SQL("UPDATE {} SET holder = 'b', epoch = epoch + 1").format(table))
        outcome: list[BaseException | None] = []

        async def commit() -> None:
            try:
                await store.commit("m", Changes(meta={"v": 2}, events=[ev("e")], fence=("a", 1)))
                outcome.append(None)
            except LeaseLostError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit)
            await anyio.sleep(0.3)
            assert outcome == []  # the fenced commit waits on the lease row
            pg.execute("COMMIT")
        (failure,) = outcome
        assert isinstance(failure, LeaseLostError)
        state = await store.load("m")
        assert state is not None
        assert (state.meta, state.last_seq) == ({"v": 1}, 0)


async def test_cancelled_commit_ends_its_transaction(pg_schema: tuple[str, str]) -> None:
    async with pg_store(pg_schema) as store:
        await store.commit("m", Changes(meta={"v": 0}))
        with anyio.move_on_after(0.001):
            await store.commit(
                "m",
                Changes(meta={"v": 1}, records=[rec(f"i{n}", total=n + 1) for n in range(500)]),
            )
        # Whether it committed or not, it did so whole, and the store goes on.
        state = await store.load("m")
        assert state is not None
        assert (state.meta, len(state.records)) in (({"v": 0}, 0), ({"v": 1}, 500))
        (event,) = await store.commit("m", Changes(meta={"v": 2}, events=[ev("e")]))
        assert event.seq == 1


# -- the schema ---------------------------------------------------------------------


def info(pg: Any, schema: str) -> dict[str, str]:
    from psycopg import sql

    rows = pg.execute(
        sql.SQL("SELECT name, value FROM {}").format(sql.Identifier(schema, "qrispay_info"))
    ).fetchall()
    return dict(rows)


def tables(pg: Any, schema: str) -> set[str]:
    rows = pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {row[0] for row in rows}


async def test_a_new_schema_is_created_and_marked(pg_schema: tuple[str, str], pg: Any) -> None:
    async with pg_store(pg_schema) as store:
        assert store.schema == pg_schema[1]
        await store.commit("m", Changes(meta={}))
    assert info(pg, pg_schema[1]) == {
        "application": "qrispay",
        "version": str(_postgres_schema.VERSION),
    }
    assert {"merchants", "invoices", "totals", "events", "leases", "payouts"} <= tables(
        pg, pg_schema[1]
    )
    # Reopened: the data is there, nothing is migrated again.
    async with pg_store(pg_schema) as again:
        assert await again.load("m") is not None


async def test_the_database_refuses_what_the_code_must_never_write(
    pg_schema: tuple[str, str], pg: Any
) -> None:
    """The invariants hold even for a writer that skips the store's checks."""
    import psycopg
    from psycopg import sql

    async with pg_store(pg_schema) as store:
        await store.commit("m", Changes(meta={}, records=[rec("a")], seen=[("k", 1)]))
        await store.claim_invoices("m", [rec("b", total=5)], now=at(0))
    table = partial(sql.Identifier, pg_schema[1])
    bad = [
        ("INSERT INTO {} VALUES ('m', 'z', 0, 'open', '{{}}', 1, 1)", "invoices"),
        ("INSERT INTO {} VALUES ('m', 'a', 7, 'open', '{{}}', 1, 1)", "invoices"),
        ("INSERT INTO {} VALUES ('m', 0, 'k', 99)", "seen_rows"),
        ("INSERT INTO {} VALUES ('m', 5, 'c', 1)", "totals"),
    ]
    for statement, name in bad:
        with pytest.raises(psycopg.errors.IntegrityError):
            pg.execute(sql.SQL(statement).format(table(name)))


async def test_newer_schema_is_refused(pg_schema: tuple[str, str], pg: Any) -> None:
    from psycopg import sql

    async with pg_store(pg_schema) as store:
        await store.commit("m", Changes(meta={}))
    newer = _postgres_schema.VERSION + 5
    pg.execute(
        sql.SQL("UPDATE {} SET value = %s WHERE name = 'version'").format(
            sql.Identifier(pg_schema[1], "qrispay_info")
        ),
        (str(newer),),
    )
    store = pg_store(pg_schema)
    for _ in range(2):  # each call says so again: no half-open store
        with pytest.raises(StoreSchemaError) as raised:
            await store.load("m")
        message = str(raised.value)
        assert str(newer) in message
        assert f"version {_postgres_schema.VERSION}" in message
        assert pg_schema[1] in message
    await store.aclose()
    assert info(pg, pg_schema[1])["version"] == str(newer)


async def test_a_schema_that_is_not_ours_is_refused_and_untouched(
    pg_schema: tuple[str, str], pg: Any
) -> None:
    from psycopg import sql

    name = pg_schema[1]
    pg.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    pg.execute(
        sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, body text)").format(
            sql.Identifier(name, "invoices")
        )
    )
    store = pg_store(pg_schema)
    with pytest.raises(StoreError, match="not a qrispay store") as raised:
        await store.open()
    assert not isinstance(raised.value, StoreSchemaError)
    assert name in str(raised.value)
    await store.aclose()
    assert tables(pg, name) == {"invoices"}


async def test_a_failed_migration_leaves_the_old_version(
    pg_schema: tuple[str, str], pg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg_store(pg_schema) as store:
        await store.commit("m", Changes(meta={"kept": True}))
    broken = ("CREATE TABLE half_done (n int)", "SELECT no_such_function()")
    monkeypatch.setattr(_postgres_schema, "STEPS", (*_postgres_schema.STEPS, broken))
    monkeypatch.setattr(_postgres_schema, "VERSION", _postgres_schema.VERSION + 1)
    with pytest.raises(StoreError, match="no_such_function"):
        await pg_store(pg_schema).open()
    assert info(pg, pg_schema[1])["version"] == str(_postgres_schema.VERSION - 1)
    assert "half_done" not in tables(pg, pg_schema[1])


MIGRATE_SCRIPT = """
import sys, anyio
from qrispay.store import PostgresStore, _postgres_schema as schema
if sys.argv[3] == "step":
    # A later release's step, run at most once whoever opens first.
    schema.STEPS = (*schema.STEPS, ("CREATE TABLE step_runs (n int PRIMARY KEY)",
                                    "INSERT INTO step_runs VALUES (1)"))
    schema.VERSION = len(schema.STEPS)
async def main():
    async with PostgresStore(sys.argv[1], schema=sys.argv[2]) as store:
        assert await store.load("m") is None
anyio.run(main)
"""


@pytest.mark.parametrize("step", ["create", "step"])
def test_several_processes_open_at_once_and_migrate_once(
    pg_schema: tuple[str, str], pg: Any, step: str
) -> None:
    dsn, name = pg_schema
    if step == "step":
        run = [sys.executable, "-c", MIGRATE_SCRIPT, dsn, name, "create"]
        subprocess.run(run, check=True, timeout=60)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_SCRIPT, dsn, name, step], stderr=subprocess.PIPE
        )
        for _ in range(6)
    ]
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, errors
    version = _postgres_schema.VERSION + (1 if step == "step" else 0)
    assert info(pg, name)["version"] == str(version)
    if step == "step":
        from psycopg import sql

        rows = pg.execute(
            sql.SQL("SELECT n FROM {}").format(sql.Identifier(name, "step_runs"))
        ).fetchall()
        assert rows == [(1,)]


# -- secrets ------------------------------------------------------------------------


def with_password(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**{**conninfo_to_dict(dsn), "password": PASSWORD})


def chain_text(error: BaseException) -> str:
    """Everything a traceback of ``error`` would print."""
    import traceback

    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def assert_secret_kept(text: str) -> None:
    assert PASSWORD not in text
    for part in PASSWORD.split("/") + PASSWORD.split(":"):
        assert part not in text or len(part) < 6, part
    from urllib.parse import quote

    assert quote(PASSWORD, safe="") not in text


def test_repr_shows_host_db_and_schema_only() -> None:
    url = f"postgresql://alice:{quote_pw()}@db.example:5433/shop?sslmode=require"
    store = PostgresStore(url, schema="billing")
    assert repr(store) == "<PostgresStore host='db.example' db='shop' schema='billing'>"
    keywords = PostgresStore(f"host=db.example dbname=shop user=alice password='{PASSWORD}'")
    assert repr(keywords) == "<PostgresStore host='db.example' db='shop' schema='qrispay'>"


def quote_pw() -> str:
    from urllib.parse import quote

    return quote(PASSWORD, safe="")


async def test_a_failed_connection_keeps_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for dsn in (
        f"postgresql://alice:{quote_pw()}@127.0.0.1:1/shop?connect_timeout=5",
        f"host=127.0.0.1 port=1 dbname=shop user=alice password='{PASSWORD}'",
    ):
        store = PostgresStore(dsn)
        with pytest.raises(StoreError, match="cannot connect") as raised:
            await store.open()
        assert "'shop'" in str(raised.value)
        assert_secret_kept(chain_text(raised.value))
        assert_secret_kept(repr(raised.value))
        await store.aclose()
    assert_secret_kept(caplog.text)


def test_a_dsn_that_does_not_parse_is_not_echoed() -> None:
    with pytest.raises(StoreError, match="not shown") as raised:
        PostgresStore(f"host=127.0.0.1 {PASSWORD}")
    assert_secret_kept(chain_text(raised.value))


async def test_errors_and_logs_of_an_open_store_keep_the_password(
    pg_schema: tuple[str, str], pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from psycopg import sql

    caplog.set_level(logging.DEBUG)
    dsn = with_password(pg_schema[0])
    async with PostgresStore(dsn, schema=pg_schema[1]) as store:
        await store.commit("m", Changes(meta={}))
        # The pool says why a connection failed, with whatever libpq said.
        logging.getLogger("psycopg.pool").warning("error connecting in %r: %s", "pool", dsn)
        logging.getLogger("psycopg").warning("dsn was %s", dsn)
        # A driver error mid-use is a StoreError naming the schema, and no password.
        pg.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(pg_schema[1], "events")))
        with pytest.raises(StoreError) as raised:
            await store.events_after("m", 0, 10)
        assert pg_schema[1] in str(raised.value)
        assert_secret_kept(chain_text(raised.value))
        assert_secret_kept(repr(store))
    assert "error connecting" in caplog.text
    assert_secret_kept(caplog.text)


# -- the extra ----------------------------------------------------------------------


def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'qrispay\[postgres\]'"):
        PostgresStore("postgresql://localhost/db")


def test_qrispay_imports_without_the_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "sys.modules['psycopg_pool'] = None\n"
        "import qrispay\n"
        "try:\n"
        "    qrispay.PostgresStore('postgresql://localhost/db')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'qrispay[postgres]'" in done.stdout


def test_exported() -> None:
    assert qrispay.PostgresStore is PostgresStore
    assert "PostgresStore" in qrispay.__all__


def test_only_store_modules_import_psycopg() -> None:
    package = Path(qrispay.__file__).parent
    importers = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "import psycopg" in (text := path.read_text(encoding="utf-8")) or "from psycopg" in text
    }
    assert importers <= {
        "store/_postgres.py",
        "store/_postgres_schema.py",
        "store/_postgres_workers.py",
    }
    assert "store/_postgres.py" in importers


def test_without_a_server_the_tests_skip_except_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        postgres_dsn()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=POSTGRES_ENV):
        postgres_dsn()
