"""``PostgresStore``: the store contract in a PostgreSQL database.

It behaves exactly like ``SQLiteStore`` and ``MemoryStore``, method by method,
and lets workers on several hosts share one store. The database itself keeps
the money invariants (docs/design.md, "Stores"): a feed row key, an event id
and an invoice id are stored once per merchant (primary keys), totals are
positive integers (CHECK), one invoice holds a total at a time (the ``totals``
table's primary key), a close by a worker that does not poll is a
compare-and-set from open under row locks, and a commit fenced by a lease
checks the lease in the same transaction, with the lease row locked.

Needs the ``postgres`` extra (psycopg 3 and psycopg-pool), imported only when a
``PostgresStore`` is made. The driver is psycopg's synchronous one with a
``psycopg_pool.ConnectionPool``; every call runs in a worker thread, so asyncio
and trio alike are served, and a call that started a transaction is never
abandoned by a cancellation: the transaction ends (committed or rolled back)
before the caller sees the cancellation.

The DSN may hold a password. It never reaches a repr, a log record of psycopg
(the log scrubber masks it) or an exception's message (every driver error is
re-raised as ``StoreError`` with the password masked, the driver's own error
chained, masked too).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._redact import Redactor, install_log_scrubber, live_secrets, scrub_chain, scrub_dsn
from ..errors import StoreError
from . import _postgres_schema as schema
from . import _postgres_workers as workers
from ._base import (
    Changes,
    Lease,
    MerchantState,
    PayoutEntry,
    Store,
    StoredEvent,
    from_micros,
    micros,
    prepare,
)
from ._serve_sql import SQLServeTables

__all__ = ["INSTALL_HINT", "PostgresStore"]

INSTALL_HINT = "PostgresStore needs psycopg 3 and psycopg-pool: pip install 'qrispay[postgres]'"

_T = TypeVar("_T")

_PAYOUT = "scope, key, request, state, result, withdraw_id, created_us, updated_us"
_EVENT = "seq, id, kind, created_us, data"

#: Pool options unless the caller gives others: a store's calls are short, and
#: each worker process has its own pool, so a few connections serve it.
POOL_DEFAULTS: dict[str, Any] = {"min_size": 1, "max_size": 4, "timeout": 30.0}


def _driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return psycopg, psycopg_pool


def _payout(row: tuple[Any, ...]) -> PayoutEntry:
    scope, key, request, state, result, withdraw_id, created, updated = row
    return PayoutEntry(
        scope, key, request, state, result, withdraw_id, from_micros(created), from_micros(updated)
    )


def _event(row: tuple[Any, ...]) -> StoredEvent:
    seq, event_id, kind, created, data = row
    return StoredEvent(seq, event_id, kind, from_micros(created), json.loads(data))


def _write(conn: Any, work: Callable[[Any], _T]) -> _T:
    """``work(cursor)`` in one READ COMMITTED transaction: committed if it
    returns, rolled back if anything at all raises."""
    with conn.transaction(), conn.cursor() as cur:
        return work(cur)


def _read(conn: Any, work: Callable[[Any], _T]) -> _T:
    """``work(cursor)`` in one read-only snapshot, even while others commit."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return work(cur)


class PostgresStore(SQLServeTables, Store):
    """A store in the PostgreSQL database of ``dsn`` (a libpq connection string
    or ``postgresql://`` URL), in the schema ``schema`` (created if missing;
    see the module's docstring). ``pool_options`` go to
    ``psycopg_pool.ConnectionPool`` (``min_size``, ``max_size``, ``timeout``
    ...); ``kwargs`` among them go to every connection."""

    _PG = True

    def __init__(self, dsn: str, *, schema: str = "qrispay", **pool_options: Any) -> None:
        psycopg, _ = _driver()
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
        if not schema:
            raise ValueError("schema must be a non-empty name")
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's message quotes the part it could not parse, which may be
            # the password: it is not shown.
            raise StoreError(
                "PostgresStore: the DSN is not a valid connection string "
                "(not shown, as it may hold a password)"
            ) from None
        self._dsn = dsn
        self._timeout_given = "connect_timeout" in params
        self._schema = schema
        self._host = str(params.get("host") or params.get("hostaddr") or "")
        self._dbname = str(params.get("dbname") or "")
        password = str(params.get("password") or "")
        self._secrets = [password] if password else []
        self._redactor = Redactor(self._secrets)
        self._pool_options = {**POOL_DEFAULTS, **pool_options}
        self._pool: Any = None
        self._open_lock = threading.Lock()
        max_size = self._pool_options.get("max_size") or self._pool_options["min_size"]
        # One thread per pooled connection: more would only queue inside the pool.
        self._limiter = anyio.CapacityLimiter(max(1, int(max_size)))

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store."""
        return self._schema

    def __repr__(self) -> str:
        return f"<PostgresStore host={self._host!r} db={self._dbname!r} schema={self._schema!r}>"

    def _where(self) -> str:
        return f"schema {self._schema!r} of database {self._dbname!r} on {self._host!r}"

    # -- connection -----------------------------------------------------------------

    async def _run(self, work: Callable[[Any], _T]) -> _T:
        # Not abandoned on cancellation: a started transaction always ends
        # (committed or rolled back) before the caller is cancelled.
        return await anyio.to_thread.run_sync(self._call, work, limiter=self._limiter)

    async def _serve_write(self, work: Callable[[Any], _T]) -> _T:
        return await self._run(lambda conn: _write(conn, work))

    async def _serve_read(self, work: Callable[[Any], _T]) -> _T:
        return await self._run(lambda conn: _read(conn, work))

    def _error(self, exc: BaseException, doing: str) -> StoreError:
        scrub_chain(exc, self._redactor)
        message = self._redactor.scrub(scrub_dsn(str(exc).strip()))
        return StoreError(f"PostgreSQL store in {self._where()}: {doing}{message}")

    def _call(self, work: Callable[[Any], _T]) -> _T:
        psycopg, psycopg_pool = _driver()
        pool = self._connect()
        try:
            with pool.connection() as conn:
                return work(conn)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self._error(exc, "") from exc

    def _connect(self) -> Any:
        with self._open_lock:
            if self._pool is not None:
                return self._pool
            psycopg, psycopg_pool = _driver()
            install_log_scrubber()
            live_secrets.add(self._secrets)
            try:
                self._pool = self._open_pool(psycopg, psycopg_pool)
            except BaseException:
                live_secrets.remove(self._secrets)
                raise
            return self._pool

    def _open_pool(self, psycopg: Any, psycopg_pool: Any) -> Any:
        # One connection of our own first: its error says why (the pool's would
        # only say that it timed out), and it identifies and migrates the store
        # before any pooled connection uses it.
        options = dict(self._pool_options)
        kwargs = {**options.pop("kwargs", {}), "autocommit": True}
        if not self._timeout_given and "connect_timeout" not in kwargs:
            # Without one, libpq waits on an unreachable host as long as the OS does.
            kwargs["connect_timeout"] = max(2, int(float(options.get("timeout", 30.0))))
        try:
            conn = psycopg.connect(self._dsn, **kwargs)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot connect: ") from exc
        try:
            version = schema.identify(conn, self._schema, self._where())
            if version < schema.VERSION:
                schema.migrate(conn, self._schema, self._where())
        except psycopg.Error as exc:
            raise self._error(exc, "cannot open as a qrispay store: ") from exc
        finally:
            conn.close()
        pool = psycopg_pool.ConnectionPool(
            self._dsn,
            kwargs=kwargs,
            configure=self._configure,
            open=False,
            name=f"qrispay-{self._schema}",
            **options,
        )
        try:
            pool.open(wait=True, timeout=float(options.get("timeout", 30.0)))
        except BaseException as exc:
            pool.close()
            if isinstance(exc, (psycopg.Error, psycopg_pool.PoolTimeout)):
                raise self._error(exc, "cannot connect: ") from exc
            raise
        return pool

    def _configure(self, conn: Any) -> None:
        from psycopg import sql

        # Every statement names the store's tables unqualified.
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self._schema)))

    def _close(self) -> None:
        with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                try:
                    pool.close()
                finally:
                    live_secrets.remove(self._secrets)

    async def open(self) -> None:
        await self._run(lambda conn: None)

    async def aclose(self) -> None:
        # Shielded: a cancelled shutdown must still close the connections.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._close)

    # -- merchants and events -------------------------------------------------------

    async def load(self, merchant: str) -> MerchantState | None:
        def load(cur: Any) -> MerchantState | None:
            cur.execute("SELECT meta FROM merchants WHERE merchant = %s", (merchant,))
            found = cur.fetchone()
            if found is None:
                return None
            cur.execute("SELECT record FROM invoices WHERE merchant = %s ORDER BY pos", (merchant,))
            records = [text for (text,) in cur.fetchall()]
            memories: tuple[list[tuple[str, int]], ...] = ([], [])
            cur.execute("SELECT kind, key, date_us FROM seen_rows WHERE merchant = %s", (merchant,))
            for kind, key, at in cur.fetchall():
                memories[kind].append((key, at))
            cur.execute("SELECT coalesce(max(seq), 0) FROM events WHERE merchant = %s", (merchant,))
            (last,) = cur.fetchone()
            return MerchantState(
                meta=json.loads(found[0]),
                records=records,
                seen=memories[0],
                rejected=memories[1],
                last_seq=int(last),
            )

        return await self._run(lambda conn: _read(conn, load))

    async def commit(self, merchant: str, changes: Changes) -> list[StoredEvent]:
        meta_text, datas = prepare(changes)
        return await self._run(
            lambda conn: _write(
                conn, lambda cur: workers.apply(cur, merchant, changes, meta_text, datas)
            )
        )

    async def events_after(self, merchant: str, seq: int, limit: int) -> list[StoredEvent]:
        def events_after(cur: Any) -> list[StoredEvent]:
            cur.execute(
                f"SELECT {_EVENT} FROM events WHERE merchant = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (merchant, seq, max(0, limit)),
            )
            return [_event(row) for row in cur.fetchall()]

        return await self._run(lambda conn: _read(conn, events_after))

    async def event_seq(self, merchant: str, event_id: str) -> int:
        def event_seq(cur: Any) -> int:
            cur.execute(
                "SELECT seq FROM events WHERE merchant = %s AND id = %s", (merchant, event_id)
            )
            row = cur.fetchone()
            if row is None:
                raise KeyError(event_id)
            return int(row[0])

        return await self._run(lambda conn: _read(conn, event_seq))

    # -- payouts --------------------------------------------------------------------

    async def payout_claim(
        self, scope: str, key: str, request: str, now: datetime
    ) -> tuple[PayoutEntry, bool]:
        def claim(cur: Any) -> tuple[PayoutEntry, bool]:
            at = micros(now)
            # Another claim of the key in flight: this waits for it, then inserts
            # nothing, and the SELECT (a new snapshot) reads the winner's entry.
            cur.execute(
                "INSERT INTO payouts (scope, key, request, state, created_us, updated_us) "
                "VALUES (%s, %s, %s, 'intent', %s, %s) ON CONFLICT (scope, key) DO NOTHING",
                (scope, key, request, at, at),
            )
            inserted = cur.rowcount
            cur.execute(
                f"SELECT {_PAYOUT} FROM payouts WHERE scope = %s AND key = %s", (scope, key)
            )
            return _payout(cur.fetchone()), inserted == 1

        return await self._run(lambda conn: _write(conn, claim))

    async def payout_settle(
        self,
        scope: str,
        key: str,
        *,
        state: str | None,
        result: str | None,
        withdraw_id: str | None,
        now: datetime,
    ) -> None:
        await self._run(
            lambda conn: _write(
                conn,
                lambda cur: workers.payout_settle(
                    cur, scope, key, state, result, withdraw_id, micros(now)
                ),
            )
        )

    async def payouts_in(self, scope: str, state: str) -> list[PayoutEntry]:
        def payouts_in(cur: Any) -> list[PayoutEntry]:
            # pos breaks ties in claiming order, as MemoryStore's stable sort does.
            cur.execute(
                f"SELECT {_PAYOUT} FROM payouts WHERE scope = %s AND state = %s "
                "ORDER BY created_us, pos",
                (scope, state),
            )
            return [_payout(row) for row in cur.fetchall()]

        return await self._run(lambda conn: _read(conn, payouts_in))

    async def payout_claimed_ids(self, scope: str) -> set[str]:
        def claimed(cur: Any) -> set[str]:
            cur.execute(
                "SELECT withdraw_id FROM payouts WHERE scope = %s AND withdraw_id IS NOT NULL",
                (scope,),
            )
            return {withdraw_id for (withdraw_id,) in cur.fetchall()}

        return await self._run(lambda conn: _read(conn, claimed))

    # -- several workers ------------------------------------------------------------

    async def claim_lease(
        self, merchant: str, holder: str, epoch: int | None, *, now: datetime, ttl: float
    ) -> Lease | None:
        return await self._run(
            lambda conn: _write(
                conn, lambda cur: workers.claim_lease(cur, merchant, holder, epoch, now, ttl)
            )
        )

    async def release_lease(self, merchant: str, holder: str, epoch: int) -> None:
        await self._run(
            lambda conn: _write(
                conn, lambda cur: workers.release_lease(cur, merchant, holder, epoch)
            )
        )

    async def leases(self) -> dict[str, Lease]:
        return await self._run(lambda conn: _read(conn, workers.leases))

    async def claim_invoices(
        self, merchant: str, claims: list[tuple[str, int, str, str, int]], *, now: datetime
    ) -> dict[str, str]:
        for invoice_id, total, _status, _text, _holds in claims:
            if total <= 0:
                raise ValueError(f"invoice {invoice_id!r} has total {total}; a total is positive")
        return await self._run(
            lambda conn: _write(
                conn, lambda cur: workers.claim_invoices(cur, merchant, claims, now)
            )
        )

    async def records_since(self, merchant: str, version: int) -> tuple[list[str], int]:
        return await self._run(
            lambda conn: _read(conn, lambda cur: workers.records_since(cur, merchant, version))
        )
