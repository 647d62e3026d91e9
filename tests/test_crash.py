"""Crash tests with real processes (issues 13 and 14).

``qrispay sandbox`` runs as a subprocess on loopback with a 1 s feed cache;
worker processes (tests/crash_worker.py) run Reconcilers on one store,
create invoices and run durable consumers; this process plays the customers
(``pay TOTAL`` typed into the sandbox: on time, twice, late, never, and
amounts that fit no invoice) and SIGKILLs workers at seeded instants: while
they start, while they run, from inside a store transaction, between a
consumer's handling of an event and its remembering it; with several workers
it also freezes the poller past its lease. Each killed worker is restarted.
After a last clean run has drained everything, the store and the consumers'
logs must show: every payment with exactly one verdict, the one its customer
earned, on its own customer's invoice; no event id twice; every stored event
seen by every consumer (twice after a kill is allowed: delivery is at least
once); and no two fetches inside one cache window but right after a kill.

``QRISPAY_CRASH_SEED`` picks the schedule (the same for a seed);
``QRISPAY_CRASH_POSTGRES=DSN`` runs the same tests on Postgres too (each in a
fresh schema; CI leaves them out for time). The in-process tests at the end pin what these
runs found."""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

import qrispay
import qrispay.store
from qrispay import PollPolicy, Reconciler
from qrispay.events import Event, InvoiceCancelled, InvoiceExpired, InvoicePaid
from qrispay.models import Invoice
from qrispay.sandbox import Sandbox
from qrispay.store import MerchantState, SQLiteStore, Store, StoredEvent

pytestmark = pytest.mark.crash

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("crash_worker.py")
SEED = int(os.environ.get("QRISPAY_CRASH_SEED", "1313"))

TTL = 1.0  # the sandbox's feed cache; the workers poll every TTL + 0.1 s
INVOICE_TTL = 4.0
SKEW = 2.0
LEASE_TTL = 1.5
CLOSES = ("invoice.paid", "invoice.expired", "invoice.cancelled")
VERDICTS = (
    "invoice.paid",
    "payment.late",
    "payment.duplicate",
    "payment.unmatched",
    "payment.ambiguous",
    "feed.unknown_row",
)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The children import this checkout's qrispay, whatever is installed."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        **(extra or {}),
        "PYTHONPATH": str(ROOT) if not path else f"{ROOT}{os.pathsep}{path}",
        "PYTHONUNBUFFERED": "1",
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a log (a kill may leave the last one half written)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


# -- where the workers keep their state ------------------------------------------------


@dataclass
class Target:
    """A store the workers share: the worker's arguments, and how to read it here."""

    name: str
    worker_args: list[str]
    open: Callable[[], Store]


def sqlite_target(tmp: Path) -> Target:
    path = tmp / "crash.db"
    return Target("sqlite", ["--db", str(path)], lambda: SQLiteStore(path))


def _drop_schema(dsn: str, schema: str) -> None:  # pragma: no cover - needs a server
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def postgres_target(dsn: str, schema: str) -> Target:  # pragma: no cover - needs a server
    def open_store() -> Store:
        from qrispay.store import PostgresStore

        store: Store = PostgresStore(dsn, schema=schema)
        return store

    return Target("postgres", ["--postgres", dsn, "--schema", schema], open_store)


STORES = ["sqlite"] + (["postgres"] if os.environ.get("QRISPAY_CRASH_POSTGRES") else [])


@pytest.fixture(params=STORES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param != "postgres":
        yield sqlite_target(tmp_path)
        return
    # A fresh schema, each time: the sandbox's merchant is always the same one,
    # and an earlier run's rows would be read as this run's.
    dsn = os.environ["QRISPAY_CRASH_POSTGRES"]
    schema = f"qrispay_crash_{uuid.uuid4().hex[:12]}"
    yield postgres_target(dsn, schema)
    _drop_schema(dsn, schema)


def stored_events(target: Target, merchant: str) -> list[StoredEvent]:
    async def read() -> list[StoredEvent]:
        async with target.open() as store:
            return await store.events_after(merchant, 0, 10**9)

    return anyio.run(read)


# -- the sandbox and its customers -----------------------------------------------------


class SandboxProcess:
    """``qrispay sandbox`` as a child; ``pay`` types into it as a customer would."""

    def __init__(self, seed: int, logs: Path) -> None:
        argv = [sys.executable, "-m", "qrispay", "--json", "sandbox", "--port", "0"]
        argv += ["--ttl", str(TTL), "--invoice-ttl", str(INVOICE_TTL), "--seed", str(seed)]
        # stderr to a file: a pipe nobody reads could fill and stall the server.
        with (logs / "stderr-sandbox.txt").open("ab") as stderr:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=child_env(),
            )
        assert self.process.stdout is not None
        self.config = json.loads(self.process.stdout.readline())
        self.env: dict[str, str] = self.config["env"]
        assert self.env["QRISPAY_FEED_URL"].startswith("http://127.0.0.1:")

    def pay(self, total: int) -> tuple[str, str | None]:
        """(the row's reference, the invoice the sandbox marked paid, if any)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"pay {total}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        found = re.search(r"ref (\S+): (?:invoice (\S+) is now paid)?", answer)
        assert found is not None, answer
        return found[1], found[2]

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.communicate(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()


@dataclass
class Payment:
    intent: str  # ontime, duplicate, late or unmatched
    invoice: str | None  # the customer's invoice
    total: int
    ref: str = ""
    paid_at_gateway: str | None = None


class Customers(threading.Thread):
    """Reads the invoices the workers made and pays them: on time, twice, late
    (after expiry and skew, so the verdict is certain), never; and now and then
    an amount that is no invoice's total. Each plan is drawn from the seed and
    the invoice's id (the sandbox is seeded too, so ids repeat for a seed)."""

    def __init__(self, sandbox: SandboxProcess, logs: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.sandbox, self.logs, self.seed = sandbox, logs, seed
        self.payments: list[Payment] = []
        self.invoices: dict[str, dict[str, Any]] = {}
        self.closing = threading.Event()  # no more invoices come
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._due: list[tuple[float, int, Payment]] = []
        self._order = 0
        self._stray = 0

    def plan(self, invoice: dict[str, Any]) -> None:
        rng = random.Random(f"{self.seed}:{invoice['invoice']}")
        expires, total, invoice_id = invoice["expired_at"], invoice["total"], invoice["invoice"]
        choice = rng.random()
        if choice < 0.5:
            # Dates are whole seconds: paid a clear second before expiry.
            at = max(time.time(), invoice["at"] + rng.uniform(0.1, 2.0))
            if at < expires - 1.0:
                self._add(at, Payment("ontime", invoice_id, total))
                if rng.random() < 0.35:
                    self._add(at + rng.uniform(0.3, 2.0), Payment("duplicate", invoice_id, total))
        elif choice < 0.7:
            # After the window's end (expiry + skew) even with the seconds dropped.
            self._add(
                expires + 1.0 + SKEW + rng.uniform(1.0, 2.0), Payment("late", invoice_id, total)
            )

    def _add(self, at: float, payment: Payment) -> None:
        self._order += 1
        heapq.heappush(self._due, (at, self._order, payment))

    def _read_invoices(self) -> None:
        for path in sorted(self.logs.glob("invoices-*.jsonl")):
            for invoice in read_lines(path):
                if invoice["invoice"] not in self.invoices:
                    self.invoices[invoice["invoice"]] = invoice
                    self.plan(invoice)

    def run(self) -> None:
        try:
            stray_at = time.time() + 1.0
            while True:
                self._read_invoices()
                now = time.time()
                if not self.closing.is_set() and now >= stray_at:
                    # Below every invoice amount (10 000 and up): it fits no invoice.
                    self._stray += 1
                    self._pay(Payment("unmatched", None, 1_000 + self._stray))
                    stray_at = now + random.Random(f"{self.seed}:{self._stray}").uniform(2, 5)
                while self._due and self._due[0][0] <= now:
                    self._pay(heapq.heappop(self._due)[2])
                if self.closing.is_set() and not self._due:
                    self._read_invoices()
                    if not self._due:
                        return
                time.sleep(0.02)
        except BaseException as error:  # pragma: no cover - reported by the test
            self.error = error
        finally:
            self.finished.set()

    def _pay(self, payment: Payment) -> None:
        payment.ref, payment.paid_at_gateway = self.sandbox.pay(payment.total)
        self.payments.append(payment)


# -- the workers --------------------------------------------------------------------


@dataclass
class Worker:
    worker_id: str
    argv: list[str]
    logs: Path
    env: dict[str, str]
    lives: int = 0
    started_at: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    crashed: list[str] = field(default_factory=list)

    def start(self) -> None:
        argv = [*self.argv, "--worker-id", self.worker_id, "--life", str(self.lives)]
        # stderr to a file: a pipe nobody reads could fill and stall the worker.
        stderr = (self.logs / f"stderr-{self.worker_id}.txt").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), *argv], env=self.env, stderr=stderr
        )
        stderr.close()
        self.started_at = time.monotonic()
        self.lives += 1

    def ready(self) -> bool:
        status = read_lines(self.logs / f"status-{self.worker_id}.jsonl")
        return any(line.get("ready") == self.lives - 1 for line in status)

    def check_alive(self) -> None:
        """A worker must only die when killed: anything else is a crash loop."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            stderr = (self.logs / f"stderr-{self.worker_id}.txt").read_text()
            self.crashed.append(f"life {self.lives - 1} exited with {code}: {stderr[-2000:]}")
            self.start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def arm(self, order: str) -> None:
        (self.logs / f"arm-{self.worker_id}").write_text(order)
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)


@dataclass
class Figures:
    seed: int
    workers: int
    payments: int = 0
    kills: int = 0
    kills_in_commit: int = 0
    kills_in_consumer: int = 0
    freezes: int = 0
    handovers: int = 0
    lost: int = 0
    doubled: int = 0
    misattributed: int = 0
    wrong_verdict: int = 0
    redelivered: int = 0
    unseen: int = 0
    fetches: int = 0
    close_fetches: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return "crash figures: " + " ".join(f"{k}={v}" for k, v in vars(self).items())


@dataclass
class CrashRun:
    tmp: Path
    target: Target
    worker_ids: list[str]
    kills: int
    restart_delays: tuple[float, ...] = (0.0,)
    create_every: float = 0.8
    seed: int = SEED
    problems: list[str] = field(default_factory=list)
    disruptions: list[float] = field(default_factory=list)

    def go(self) -> Figures:
        started = time.monotonic()
        logs = self.tmp / "logs"
        logs.mkdir()
        figures = Figures(self.seed, len(self.worker_ids))
        sandbox = SandboxProcess(self.seed, logs)
        try:
            customers = Customers(sandbox, logs, self.seed)
            workers = self._start_workers(sandbox, logs)
            customers.start()
            try:
                self._kill_and_restart(workers, figures)
                (logs / "no-create").touch()
                customers.closing.set()
                self._drain(workers, customers, logs)
            finally:
                for worker in workers:
                    if worker.process is not None and worker.process.poll() is None:
                        worker.kill()
            assert customers.error is None, customers.error
            for worker in workers:
                self.problems += [f"{worker.worker_id}: {text}" for text in worker.crashed]
                for line in read_lines(logs / f"status-{worker.worker_id}.jsonl"):
                    imported = Path(line.get("qrispay", ROOT)).resolve()
                    if not imported.is_relative_to(ROOT):
                        self.problems.append(f"{worker.worker_id} imported {imported}")
            merchant = sandbox.env["QRISPAY_MERCHANT"]
            self._judge(figures, customers, stored_events(self.target, merchant), logs)
        finally:
            sandbox.close()
        figures.seconds = round(time.monotonic() - started, 1)
        return figures

    def _start_workers(self, sandbox: SandboxProcess, logs: Path) -> list[Worker]:
        argv = [*self.target.worker_args, "--dir", str(logs), "--seed", str(self.seed)]
        argv += ["--ttl", str(TTL), "--skew", str(SKEW), "--lease-ttl", str(LEASE_TTL)]
        argv += ["--create-every", str(self.create_every * len(self.worker_ids))]
        env = child_env(sandbox.env)
        workers = [Worker(worker_id, argv, logs, env) for worker_id in self.worker_ids]
        # The first one alone seeds the empty store; the others then join it.
        for worker in workers:
            worker.start()
            self._wait(worker.ready, 20, f"{worker.worker_id} ready")
        return workers

    @staticmethod
    def _all_alive(workers: list[Worker]) -> bool:
        for worker in workers:
            worker.check_alive()
        return True

    def _until_ready(self, workers: list[Worker], victim: Worker) -> None:
        deadline = time.monotonic() + 30
        while not victim.ready():
            if time.monotonic() > deadline:
                self.problems.append(f"{victim.worker_id} not ready after 30 s")
                return
            self._all_alive(workers)
            time.sleep(0.02)

    def _pause(self, workers: list[Worker], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._all_alive(workers)
            time.sleep(0.02)

    def _wait(self, done: Callable[[], bool], seconds: float, what: str) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.02)
        self.problems.append(f"timed out waiting for {what}")
        return False

    def _kill_and_restart(self, workers: list[Worker], figures: Figures) -> None:
        """Each round kills one worker: while it starts (any stage: imports, opening
        the store, the first poll), at a random instant once it runs, from inside
        a store transaction, or between its consumer's handling of an event and
        remembering it. The instants after it runs count from its first poll, so
        that a slow machine still sees every life do some work. With several
        workers a round may instead freeze the poller (SIGSTOP) for longer than
        its lease: another takes over, and the frozen one, thawed, must not
        commit what it fetched before.

        The schedule is the seed's; "the poller" is whoever fetched last."""
        rng = random.Random(self.seed)
        marker = workers[0].logs / "in-commit.jsonl"
        kinds = ("starting", "running", "in commit", "consumer", "freeze")
        weights = (2, 4, 4, 1, 1 if len(workers) > 1 else 0)
        by_id = {worker.worker_id: worker for worker in workers}
        while figures.kills < self.kills:
            pick = rng.choice(["poller", *by_id])
            how = rng.choices(kinds, weights)[0]
            wait = rng.uniform(0.05, 1.0) if how == "starting" else rng.uniform(0.1, 2.0)
            after, steps = rng.randint(1, 3), rng.randint(1, 400)
            delay = rng.choice(self.restart_delays)
            fetches = read_lines(workers[0].logs / "fetches.jsonl")
            if pick == "poller" or how == "freeze":
                pick = fetches[-1]["worker"] if fetches else workers[0].worker_id
            victim = by_id[pick]
            if how == "starting":
                self._pause(workers, victim.started_at + wait - time.monotonic())
            else:
                self._until_ready(workers, victim)
                self._pause(workers, wait)
            assert victim.process is not None
            # For whoever reads a failure: what was done to whom, and when.
            with (victim.logs / "actions.jsonl").open("a") as actions:
                line = {"at": time.time(), "worker": victim.worker_id, "how": how}
                actions.write(json.dumps(line) + "\n")
            if how == "freeze":
                victim.process.send_signal(signal.SIGSTOP)
                self._pause([w for w in workers if w is not victim], LEASE_TTL + 1.0)
                victim.process.send_signal(signal.SIGCONT)
                # Thawed, it may send the fetch it was about to send (it cannot commit it).
                self.disruptions.append(time.time())
                figures.freezes += 1
                continue
            before = len(read_lines(marker))
            # The SIGUSR1 handler is installed before the worker says it is ready.
            if how in ("in commit", "consumer") and victim.ready():
                victim.arm("consumer" if how == "consumer" else f"{after}:{steps}")
                try:
                    victim.process.wait(timeout=6)
                except subprocess.TimeoutExpired:
                    victim.kill()
            else:
                victim.kill()
            self.disruptions.append(time.time())
            figures.kills_in_consumer = len(read_lines(victim.logs / "between.jsonl"))
            if victim.process.returncode != -signal.SIGKILL:
                victim.crashed.append(f"died with {victim.process.returncode} when armed")
            figures.kills += 1
            figures.kills_in_commit += len(read_lines(marker)) - before
            time.sleep(delay)
            victim.start()

    def _drain(self, workers: list[Worker], customers: Customers, logs: Path) -> None:
        """Let the workers run cleanly until every payment and every invoice has its
        verdict in every consumer's log, then stop them."""
        for worker in workers:
            if worker.process is None or worker.process.poll() is not None:
                worker.start()
        customers.finished.wait(60)

        def drained() -> bool:
            for worker in workers:
                worker.check_alive()
            keys = {p.ref for p in customers.payments}
            closed = set(customers.invoices)
            for worker in workers:
                seen = read_lines(logs / f"events-{worker.worker_id}.jsonl")
                if not keys <= {e["key"] for e in seen} | self._paired(seen, customers):
                    return False
                if not closed <= {e["invoice"] for e in seen if e["kind"] in CLOSES}:
                    return False
            return True

        self._wait(drained, 40, "every verdict")
        # One more poll after the last verdict: nothing new may come of it.
        time.sleep(TTL * 2)
        (logs / "stop").touch()
        for worker in workers:
            assert worker.process is not None
            try:
                code = worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                stderr = (logs / f"stderr-{worker.worker_id}.txt").read_text()
                self.problems.append(
                    f"{worker.worker_id}: clean stop gave {code}: {stderr[-2000:]}"
                )

    @staticmethod
    def _paired(seen: list[dict[str, Any]], customers: Customers) -> set[str]:
        """Refs of payments paired silently with a gateway-reported payment."""
        by_gateway = {e["invoice"] for e in seen if e["kind"] == "invoice.paid" and not e["key"]}
        return {
            p.ref for p in customers.payments if p.intent == "ontime" and p.invoice in by_gateway
        }

    def _judge(
        self,
        figures: Figures,
        customers: Customers,
        stored: list[StoredEvent],
        logs: Path,
    ) -> None:
        payments = customers.payments
        figures.payments = len(payments)
        ids = Counter(e.id for e in stored)
        self.problems += [f"event id stored {n} times: {i}" for i, n in ids.items() if n > 1]
        events: list[Event] = [e.event() for e in stored]
        by_key: defaultdict[str, list[Event]] = defaultdict(list)
        closes: defaultdict[str, list[Event]] = defaultdict(list)
        for event in events:
            mutation = getattr(event, "mutation", None)
            if event.kind in VERDICTS and mutation is not None:
                by_key[mutation.key].append(event)
            if isinstance(event, (InvoicePaid, InvoiceExpired, InvoiceCancelled)):
                closes[event.invoice.invoice_id].append(event)
        by_invoice = {p.invoice: p for p in payments if p.intent == "ontime"}
        for payment in payments:
            verdicts = by_key.get(payment.ref, [])
            if not verdicts:
                paid = closes.get(payment.invoice or "", [])
                # Reported paid by the gateway: the row is paired silently with it.
                if payment.intent == "ontime" and any(
                    isinstance(e, InvoicePaid) and e.mutation is None for e in paid
                ):
                    continue
                figures.lost += 1
                self.problems.append(f"no verdict: {payment}")
                continue
            if len(verdicts) > 1:
                figures.doubled += 1
                self.problems.append(f"{len(verdicts)} verdicts for {payment}: {verdicts}")
            verdict = verdicts[0]
            named = getattr(verdict, "invoice", None)
            if (None if named is None else named.invoice_id) != payment.invoice:
                figures.misattributed += 1
                self.problems.append(f"{payment} judged on another invoice: {verdict}")
            if verdict.kind not in self._expected(payment, by_invoice):
                figures.wrong_verdict += 1
                self.problems.append(f"{payment} got {verdict.kind}")
        customers_of = defaultdict(set)
        for payment in payments:
            customers_of[payment.invoice].add(payment.ref)
        for invoice_id in customers.invoices:
            closed = closes.get(invoice_id, [])
            if len(closed) != 1:
                figures.doubled += len(closed) > 1
                self.problems.append(f"invoice {invoice_id} closed {len(closed)} times: {closed}")
        for invoice_id, closed in closes.items():
            for event in closed:
                if isinstance(event, InvoicePaid):
                    ref = None if event.mutation is None else event.mutation.key
                    # Paid by a row of another customer, or with no customer at all.
                    if ref is not None and ref not in customers_of[invoice_id]:
                        figures.misattributed += 1
                        self.problems.append(f"{invoice_id} paid by another's row: {event}")
                    if ref is None and invoice_id not in by_invoice:
                        figures.misattributed += 1
                        self.problems.append(f"{invoice_id} paid though no one paid it")
        stored_ids = set(ids)
        for path in sorted(logs.glob("events-*.jsonl")):
            seen = [e["id"] for e in read_lines(path)]
            figures.redelivered += len(seen) - len(set(seen))
            missed = stored_ids - set(seen)
            figures.unseen += len(missed)
            if missed:
                self.problems.append(f"{path.name} never saw {sorted(missed)[:10]}")
            if set(seen) - stored_ids:
                self.problems.append(f"{path.name} saw events not stored: {set(seen) - stored_ids}")
        # The sandbox does not tell its request counts over the command line: the
        # workers note the start of each fetch instead.
        fetches = sorted(f["at"] for f in read_lines(logs / "fetches.jsonl"))
        figures.fetches = len(fetches)
        pollers = [f["worker"] for f in sorted(read_lines(logs / "fetches.jsonl"), key=_at)]
        figures.handovers = sum(a != b for a, b in itertools.pairwise(pollers))
        for before, after in itertools.pairwise(fetches):
            if after - before < TTL - 0.05:
                figures.close_fetches += 1
                # Allowed only when a kill came between the two (it lost the commit
                # that would have recorded the first fetch's time), or a thaw.
                if not any(before <= kill <= after for kill in self.disruptions):
                    self.problems.append(
                        f"two fetches {after - before:.2f} s apart, no kill between"
                    )

    @staticmethod
    def _expected(payment: Payment, by_invoice: dict[str | None, Payment]) -> set[str]:
        if payment.intent == "unmatched":
            return {"payment.unmatched"}
        if payment.intent == "late":
            return {"payment.late"}
        if payment.intent == "duplicate":
            twin = by_invoice.get(payment.invoice)
            if twin is None or twin.paid_at_gateway != payment.invoice:
                # The first came too late (a loaded machine): both are late ones.
                return {"payment.duplicate", "invoice.paid", "payment.late"}
            # Two payments close together: either row may be the one that pays.
            return {"payment.duplicate", "invoice.paid"}
        if payment.paid_at_gateway == payment.invoice:
            # Its twin, if it has one, may have been taken as the paying row.
            return {"invoice.paid", "payment.duplicate"}
        return {"invoice.paid", "payment.late"}


def _at(line: dict[str, Any]) -> float:
    return float(line["at"])


def check(run: CrashRun, figures: Figures) -> None:
    print(figures.line())
    assert figures.kills >= 20
    if run.target.name == "sqlite":
        # Aimed through SQLite's progress handler; on PostgreSQL a kill inside a
        # transaction is left to chance (the server rolls it back).
        assert figures.kills_in_commit > 0, "no kill landed inside a transaction"
    assert run.problems == [], "\n".join(run.problems)
    assert (figures.lost, figures.doubled, figures.misattributed) == (0, 0, 0)
    assert (figures.wrong_verdict, figures.unseen) == (0, 0)
    # Killed between handling and remembering: that event comes again.
    assert figures.redelivered >= figures.kills_in_consumer


@pytest.fixture
def qrispay_is_this_checkout() -> None:
    # The children import it from ROOT: so must this process, or they test other code.
    assert Path(qrispay.__file__).resolve().is_relative_to(ROOT), qrispay.__file__


POSIX = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, SIGSTOP and SIGUSR1")


@POSIX
@pytest.mark.usefixtures("qrispay_is_this_checkout")
def test_one_worker_killed_again_and_again(tmp_path: Path, target: Target) -> None:
    run = CrashRun(tmp_path, target, ["w1"], kills=22)
    check(run, run.go())


@POSIX
@pytest.mark.usefixtures("qrispay_is_this_checkout")
def test_three_workers_on_one_store_one_killed_at_a_time(tmp_path: Path, target: Target) -> None:
    # A restart after more than the lease's life lets another worker take over.
    run = CrashRun(
        tmp_path, target, ["w1", "w2", "w3"], kills=20, restart_delays=(0.0, 0.0, 0.0, 2.0)
    )
    check(run, run.go())


# -- found while building these ---------------------------------------------------------


def stored_meta(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        (text,) = conn.execute("SELECT meta FROM merchants").fetchone()
    finally:
        conn.close()
    meta: dict[str, Any] = json.loads(text)
    return meta


@pytest.mark.anyio
async def test_a_second_worker_seeding_an_empty_store_keeps_the_first_ones_state(
    tmp_path: Path,
) -> None:
    path = tmp_path / "race.db"
    sandbox = Sandbox(ttl=0.2, seed=1)
    first, second = SQLiteStore(path), SQLiteStore(path)
    read = second.load
    go_on = anyio.Event()

    async def slow_load(merchant: str) -> MerchantState | None:
        state = await read(merchant)
        await go_on.wait()  # descheduled between its read and its write
        return state

    second.load = slow_load  # type: ignore[method-assign]
    policy = PollPolicy(ttl=0.2, margin=0.05)
    async with sandbox.gateway_client() as gateway, sandbox.mutation_client() as feed:
        a = Reconciler(feed, gateway=gateway, store=first, worker_id="a", policy=policy)
        b = Reconciler(feed, gateway=gateway, store=second, worker_id="b", policy=policy)
        async with first, second, anyio.create_task_group() as tg:
            tg.start_soon(b.load)
            await anyio.sleep(0.1)
            async with a:
                invoice = await a.create_invoice(10_000)
                sandbox.pay(invoice.total)
                await a.wait_for_payment(invoice.invoice_id, timeout=10)
                before = stored_meta(path)
                go_on.set()
                await anyio.sleep(0.1)
                after = stored_meta(path)
    # What A committed: when it started (rows before are history), the last fetch
    # (the cache window after a hand-over) and the balance chain's last row.
    assert {k: after[k] for k in ("started_at", "last_fetch", "chain_last")} == {
        k: before[k] for k in ("started_at", "last_fetch", "chain_last")
    }


@pytest.mark.anyio
async def test_an_invoice_created_while_its_worker_takes_the_lease_over_is_paid(
    tmp_path: Path,
) -> None:
    # The crash run with seed 1313 found it: a worker that took the lease over (or
    # lost it) while create_invoice waited for the gateway tracked the invoice in
    # the engine it had just replaced. create_invoice returned an invoice stored
    # nowhere; its payment was "unmatched", and its total, free again, went to
    # another customer's invoice, which that payment's twin then paid.
    path = tmp_path / "takeover.db"
    sandbox = Sandbox(ttl=0.2, seed=1)
    policy = PollPolicy(ttl=0.2, margin=0.05, idle_interval=0.25)
    async with (
        sandbox.gateway_client() as gateway_a,
        sandbox.gateway_client() as gateway_b,
        sandbox.mutation_client() as feed,
        SQLiteStore(path) as store_a,
        SQLiteStore(path) as store_b,
    ):
        a = Reconciler(feed, gateway=gateway_a, store=store_a, worker_id="a", policy=policy)
        b = Reconciler(feed, gateway=gateway_b, store=store_b, worker_id="b", policy=policy)
        create = gateway_b.create_invoice

        async def answered_after_the_take_over(amount: int) -> Invoice:
            invoice = await create(amount)
            # is_polling is a property with no event to await.
            with anyio.fail_after(10):
                while not b.is_polling:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            return invoice

        gateway_b.create_invoice = answered_after_the_take_over  # type: ignore[method-assign]
        made: list[Invoice] = []
        async with anyio.create_task_group() as tg:
            stop_a = anyio.CancelScope()

            async def run_a(*, task_status: TaskStatus[None]) -> None:
                with stop_a:
                    await a.run(task_status=task_status)

            await tg.start(run_a)
            async with b:
                assert a.is_polling
                assert not b.is_polling
                async with anyio.create_task_group() as creating:
                    creating.start_soon(lambda: _create_into(b, made))
                    await anyio.sleep(0.3)
                    stop_a.cancel()  # a clean stop frees the lease: b takes it
                (invoice,) = made
                assert b.engine.state_of(invoice.invoice_id) is not None
                sandbox.pay(invoice.total)
                paid = await b.wait_for_payment(invoice.invoice_id, timeout=10)
    assert paid.mutation is not None
    assert paid.mutation.amount == invoice.total
    async with SQLiteStore(path) as store:
        ids = [event.id for event in await store.events_after(sandbox.merchant, 0, 100)]
    assert ids == [f"paid:{invoice.invoice_id}"]


async def _create_into(rec: Reconciler, made: list[Invoice]) -> None:
    made.append(await rec.create_invoice(10_000))


@pytest.mark.anyio
async def test_a_refused_poll_is_not_written_later_by_a_flush_during_the_reload(
    tmp_path: Path,
) -> None:
    # Found with the freezes of the crash run: a poller whose lease lapsed during a
    # slow fetch has that poll's commit refused, and reloads. Its engine got the
    # refused changes back, and the lease was already dropped: a commit made during
    # the reload (any create_invoice's flush, a gateway check) wrote them unfenced
    # and without their events. The invoice was stored paid, its row seen, and no
    # InvoicePaid was ever stored: a durable consumer never heard of the payment.
    path = tmp_path / "fenced.db"
    sandbox = Sandbox(ttl=0.2, seed=1)
    policy = PollPolicy(ttl=0.2, margin=0.05, idle_interval=0.25)
    gates = {name: anyio.Event() for name in ("a fetch", "a load", "b fetch")}
    holding: set[str] = set()

    def held(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name in holding:
                await gates[name].wait()
            return await call(*args, **kwargs)

        return wrapper

    async with (
        sandbox.gateway_client() as gateway_a,
        sandbox.gateway_client() as gateway_b,
        sandbox.mutation_client() as feed_a,
        sandbox.mutation_client() as feed_b,
        SQLiteStore(path) as store_a,
        SQLiteStore(path) as store_b,
    ):
        feed_a.fetch = held("a fetch", feed_a.fetch)  # type: ignore[method-assign]
        feed_b.fetch = held("b fetch", feed_b.fetch)  # type: ignore[method-assign]
        store_a.load = held("a load", store_a.load)  # type: ignore[method-assign]
        a = Reconciler(
            feed_a, gateway=gateway_a, store=store_a, worker_id="a", policy=policy, lease_ttl=1
        )
        b = Reconciler(
            feed_b, gateway=gateway_b, store=store_b, worker_id="b", policy=policy, lease_ttl=1
        )
        async with a, b:
            invoice = await a.create_invoice(10_000)
            holding.update({"a fetch", "b fetch"})
            sandbox.pay(invoice.total)
            # a's lease lapses while its fetch hangs; b takes it (and hangs in its own).
            await _until(lambda: b.is_polling)
            holding.add("a load")
            gates["a fetch"].set()  # a judges the payment; its commit is refused
            # Not only past its lease by the clock: its poll's commit refused.
            await _until(
                lambda: not a.is_polling and a._keeper is not None and a._keeper.lease is None
            )
            async with anyio.create_task_group() as flushing:
                # While a reloads (a flush that meets the refusal reloads too, and
                # so waits for the held load).
                flushing.start_soon(a.flush)
                await anyio.sleep(0.5)
                async with SQLiteStore(path) as look:
                    assert (await look.load(sandbox.merchant)) is not None
                    records, _ = await look.records_since(sandbox.merchant, 0)
                assert [json.loads(text)["state"] for text in records] == ["open"]
                gates["a load"].set()
            gates["b fetch"].set()
            paid = await b.wait_for_payment(invoice.invoice_id, timeout=10)
    assert paid.source == "mutation"
    async with SQLiteStore(path) as store:
        ids = [event.id for event in await store.events_after(sandbox.merchant, 0, 100)]
    assert ids == [f"paid:{invoice.invoice_id}"]


async def _until(done: Callable[[], bool]) -> None:
    # Properties with no event to await.
    with anyio.fail_after(10):
        while not done():  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_an_invoice_tracked_during_a_refused_poll_is_not_stored_as_judged(
    tmp_path: Path,
) -> None:
    # track() during the poller's fetch; the fetch brings the invoice's payment; the
    # lease lapsed meanwhile. The commit claims the new invoice first (claims are not
    # fenced) with its record as this poll judged it, then the fenced write is
    # refused. The next poller finds it paid with no InvoicePaid, and calls the
    # customer's payment unmatched.
    path = tmp_path / "claim.db"
    sandbox = Sandbox(ttl=0.2, seed=1)
    policy = PollPolicy(ttl=0.2, margin=0.05, idle_interval=0.25)
    gates = {name: anyio.Event() for name in ("a fetch", "b fetch")}
    holding: set[str] = set()

    def held(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name in holding:
                await gates[name].wait()
            return await call(*args, **kwargs)

        return wrapper

    async with (
        sandbox.gateway_client() as gateway,
        sandbox.mutation_client() as feed_a,
        sandbox.mutation_client() as feed_b,
        SQLiteStore(path) as store_a,
        SQLiteStore(path) as store_b,
    ):
        feed_a.fetch = held("a fetch", feed_a.fetch)  # type: ignore[method-assign]
        feed_b.fetch = held("b fetch", feed_b.fetch)  # type: ignore[method-assign]
        a = Reconciler(
            feed_a, gateway=gateway, store=store_a, worker_id="a", policy=policy, lease_ttl=1
        )
        b = Reconciler(
            feed_b, gateway=gateway, store=store_b, worker_id="b", policy=policy, lease_ttl=1
        )
        async with a, b:
            holding.update({"a fetch", "b fetch"})
            await anyio.sleep(0.5)  # a is inside a held fetch now
            invoice = await gateway.create_invoice(10_000)  # made elsewhere
            a.track(invoice)
            sandbox.pay(invoice.total)
            await _until(lambda: b.is_polling)
            gates["a fetch"].set()
            # Not only past its lease by the clock: its poll's commit refused.
            await _until(
                lambda: not a.is_polling and a._keeper is not None and a._keeper.lease is None
            )
            gates["b fetch"].set()
            paid = await b.wait_for_payment(invoice.invoice_id, timeout=10)
            await anyio.sleep(1)  # b's next polls judge the row
        async with SQLiteStore(path) as store:
            ids = [event.id for event in await store.events_after(sandbox.merchant, 0, 100)]
    assert paid.source == "mutation"
    assert ids == [f"paid:{invoice.invoice_id}"]
