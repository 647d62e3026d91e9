"""Many merchants spread over processes and hosts: a ``Fleet`` per process runs
the Reconcilers of the merchants whose poll lease it holds (docs/design.md,
"A fleet of merchants").

Every fleet on a store announces itself with a member row (a lease under a
reserved name, renewed like any lease, carrying its capacity), so each one can
work out the same fair split: merchants are shared out over the live members,
none given more than its capacity. A fleet takes free merchants (no live lease)
up to its share, and gives back what it holds above its share while another
member has room; a merchant given back is released cleanly, so the next holder
waits only for the feed's cache window. A crashed fleet stops renewing, its
leases lapse after ``lease_ttl``, and the others take its merchants at their
next look. Credentials never reach the store: ``feed_for`` makes each
merchant's client when this process takes the merchant.
"""

from __future__ import annotations

import inspect
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.abc
import attrs
from anyio.abc import TaskStatus

from ._checks import require_positive_int
from ._fleet_share import (
    MEMBER_PREFIX,
    Member,
    check_reconciler_options,
    member_key,
    parse_member,
    shares,
)
from ._fleet_stream import FleetEvent, FleetSubscription, FleetTap
from .gateway import GatewayClient
from .mutations import MutationClient
from .polling import PollPolicy
from .reconciler import Reconciler
from .store._base import Lease, Store

__all__ = ["Fleet", "FleetEvent", "FleetStatus", "FleetSubscription"]

logger = logging.getLogger("qrispay.fleet")

#: Seconds between two looks at the store's leases.
SCAN_INTERVAL = 1.0
#: How long a merchant whose Reconciler failed to start is left alone.
RETRY_AFTER_FAILURE = 300.0
#: Scans a started Reconciler gets to take its lease before it is stopped.
GRACE_SCANS = 3

Merchants = Iterable[str] | Callable[[], Iterable[str] | Awaitable[Iterable[str]]]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@attrs.frozen
class FleetStatus:
    """What one look at the store found: this fleet's ``worker_id``, the
    merchants it ``held`` (their Reconcilers run here), its ``share`` of the
    ``wanted`` merchants, the live ``members`` (worker id -> capacity), and the
    wanted merchants no live lease covered (``unheld``: more merchants than the
    members' capacities, or hand-overs under way)."""

    worker_id: str
    held: frozenset[str]
    share: int
    wanted: int
    members: Mapping[str, int]
    unheld: int


class _Slot:
    """One merchant run here: its Reconciler, the scope that stops it, and how
    many scans it has run without holding the lease."""

    __slots__ = ("idle_scans", "reconciler", "scope")

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.scope = anyio.CancelScope()
        self.idle_scans = 0


class Fleet:
    """The Reconcilers of up to ``capacity`` merchants in this process, shared
    with every other fleet on ``store``.

    ::

        fleet = Fleet(store, merchant_ids, lambda m: MutationClient(*creds[m], http_client=http))
        async with fleet:
            async for item in fleet.events():
                print(item.merchant, item.event)

    ``merchants``: the merchant ids to serve, or a callable (plain or async)
    returning them, asked at every look so merchants may come and go.
    ``feed_for(merchant)`` makes that merchant's ``MutationClient`` when this
    process takes the merchant (the application keeps the credentials; the
    fleet closes the client when it lets the merchant go, never a shared
    ``http_client``). ``gateway_for`` likewise, for merchants with a gateway.
    ``reconciler_options`` go to every ``Reconciler`` (``invoice_ttl``,
    ``static_qris``, ``event_buffer``, ...). The Reconcilers read the store
    between polls every ``follow_interval`` (default ``lease_ttl / 3``: each
    poll reads it anyway before it judges, so a fleet's pollers need no more).
    """

    def __init__(
        self,
        store: Store,
        merchants: Merchants,
        feed_for: Callable[[str], MutationClient],
        *,
        capacity: int = 1000,
        worker_id: str | None = None,
        lease_ttl: float = 90.0,
        policy: PollPolicy = PollPolicy(),  # noqa: B008 - frozen, shared safely
        clock: Callable[[], datetime] | None = None,
        gateway_for: Callable[[str], GatewayClient | None] | None = None,
        follow_interval: float | None = None,
        reconciler_options: Mapping[str, Any] | None = None,
    ):
        if not isinstance(store, Store):
            raise TypeError(f"store must be a qrispay Store, not {type(store).__name__}")
        require_positive_int(capacity, "capacity")
        if not callable(feed_for):
            raise TypeError("feed_for must be a callable: merchant id -> MutationClient")
        if isinstance(merchants, str):
            raise TypeError("merchants must be merchant ids (an iterable of str), not one str")
        self.store = store
        self.capacity = capacity
        self.worker_id = worker_id or uuid.uuid4().hex[:16]
        if "/" in self.worker_id:
            raise ValueError("worker_id must not contain '/'")
        self.lease_ttl = float(lease_ttl)
        self.policy = policy
        self.follow_interval = self.lease_ttl / 3 if follow_interval is None else follow_interval
        self._merchants = merchants
        self._feed_for = feed_for
        self._gateway_for = gateway_for
        self._clock = clock or _utc_now
        self._options = dict(reconciler_options or {})
        # Checked now rather than at the first merchant, where a mistake would
        # only be logged, merchant after merchant.
        check_reconciler_options(self._options, self.lease_ttl, policy, self.follow_interval)
        self._slots: dict[str, _Slot] = {}
        self._resting: dict[str, float] = {}
        self._tap = FleetTap()
        self._member: Lease | None = None
        self._status: FleetStatus | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._running = False
        self._outer: Any = None

    # -- what the application calls -------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The merchants polled from this process now (their Reconciler runs
        here and holds the merchant's lease)."""
        return frozenset(m for m, slot in self._slots.items() if slot.reconciler.is_polling)

    @property
    def status(self) -> FleetStatus | None:
        """What the last look at the store found (None before the first)."""
        return self._status

    def reconciler(self, merchant: str) -> Reconciler:
        """The Reconciler of ``merchant`` running here (to create invoices, wait
        for payments; it works while it starts or hands over too, as any worker
        on the store does); ``KeyError`` if this process does not run it now."""
        return self._slots[merchant].reconciler

    def events(self, *, buffer: int | None = None) -> FleetSubscription:
        """Every event of every merchant run here, from now on, as ``FleetEvent``
        ``(merchant, event)``; the same overflow rule as ``Reconciler.events``.
        A merchant taken over by another process goes on there: read a
        merchant's events from the store with ``events(after=...)`` for each."""
        return self._tap.subscribe(buffer or 1000)

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self.run)
        except BaseException:
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)
            raise
        self._outer = group
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._outer = self._outer, None
        group.cancel_scope.cancel()
        await group.__aexit__(None, None, None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Look at the store every second and run this process's share of the
        merchants, until cancelled; reports started after the first look.
        Stopping releases every lease held here, so others take over at once."""
        if self._running:
            raise RuntimeError("this Fleet is already running")
        self._running = True
        self._tap.open()
        try:
            await self.store.open()
            async with anyio.create_task_group() as self._group:
                await self._scan()
                task_status.started()
                while True:
                    await anyio.sleep(SCAN_INTERVAL)
                    try:
                        await self._scan()
                    except Exception as error:
                        # The Reconcilers go on (and keep their leases) while the
                        # store cannot be read; the next look tries again.
                        logger.warning(
                            "fleet %s could not read the store: %s", self.worker_id, error
                        )
        finally:
            self._group = None
            self._running = False
            self._tap.close()
            await self._leave()

    # -- one look at the store ----------------------------------------------------------

    async def _scan(self) -> None:
        now = self._clock()
        await self._announce(now)
        wanted = await self._wanted()
        leases = await self.store.leases()
        members = {self.worker_id: self.capacity}
        holders: dict[str, int] = {}
        covered = 0
        for key, lease in leases.items():
            if lease.expires_at < now:
                continue
            if key.startswith(MEMBER_PREFIX):
                member = parse_member(key, lease)
                if member is not None:
                    members[member.worker_id] = member.capacity
            elif key in wanted:
                covered += 1
                holders[lease.holder] = holders.get(lease.holder, 0) + 1
        split = shares(len(wanted), [Member(w, c) for w, c in members.items()])
        share = split[self.worker_id]
        self._stop_strays(wanted, leases, now)
        room = any(
            holders.get(worker, 0) < split[worker] for worker in members if worker != self.worker_id
        )
        if len(self._slots) > share and room:
            self._give_back(len(self._slots) - share)
        elif len(self._slots) < share:
            free = [m for m in wanted if m not in self._slots and self._free(m, leases, now)]
            self._take(free[: share - len(self._slots)])
        self._status = FleetStatus(
            self.worker_id, self.held, share, len(wanted), members, len(wanted) - covered
        )

    async def _announce(self, now: datetime) -> None:
        epoch = None if self._member is None else self._member.epoch
        key = member_key(self.worker_id, self.capacity)
        self._member = await self.store.claim_lease(
            key, self.worker_id, epoch, now=now, ttl=self.lease_ttl
        )

    async def _wanted(self) -> dict[str, None]:
        source = self._merchants
        found: Any = source() if callable(source) else source
        if inspect.isawaitable(found):
            found = await found
        wanted: dict[str, None] = {}
        for merchant in found:
            if not isinstance(merchant, str) or not merchant:
                raise TypeError(f"a merchant id must be a non-empty str, not {merchant!r}")
            if merchant.startswith(MEMBER_PREFIX):
                raise ValueError(f"merchant ids starting with {MEMBER_PREFIX!r} are reserved")
            wanted[merchant] = None
        return wanted

    def _free(self, merchant: str, leases: Mapping[str, Lease], now: datetime) -> bool:
        if self._resting.get(merchant, -math.inf) > anyio.current_time():
            return False
        lease = leases.get(merchant)
        return lease is None or lease.expires_at < now or lease.holder == self.worker_id

    def _stop_strays(
        self, wanted: Mapping[str, None], leases: Mapping[str, Lease], now: datetime
    ) -> None:
        """Stop what should not run here: merchants no longer wanted, and
        Reconcilers that lost the race for a lease to another process."""
        for merchant, slot in list(self._slots.items()):
            if merchant not in wanted:
                slot.scope.cancel()
                continue
            lease = leases.get(merchant)
            taken = lease is not None and lease.holder != self.worker_id and lease.expires_at >= now
            slot.idle_scans = slot.idle_scans + 1 if taken else 0
            if slot.idle_scans >= GRACE_SCANS:
                slot.scope.cancel()
            elif not taken and not slot.reconciler.is_polling:
                # Free now (another process let it go): try the lease at once, not
                # at the end of this follower's pause.
                slot.reconciler._poke()

    def _give_back(self, count: int) -> None:
        # Those not polling yet first (they may have lost a race for the lease
        # anyway), then the most recently taken: the oldest keep their place.
        slots = list(self._slots.items())
        order = [m for m, s in slots if not s.reconciler.is_polling]
        order += [m for m, s in reversed(slots) if s.reconciler.is_polling]
        for merchant in order[:count]:
            logger.info("fleet %s gives merchant %s back", self.worker_id, merchant)
            self._slots[merchant].scope.cancel()

    def _take(self, merchants: list[str]) -> None:
        assert self._group is not None
        for place, merchant in enumerate(merchants):
            try:
                reconciler = self._reconciler(merchant)
            except Exception as error:
                logger.error(
                    "fleet %s could not set up merchant %s: %s", self.worker_id, merchant, error
                )
                self._resting[merchant] = anyio.current_time() + RETRY_AFTER_FAILURE
                continue
            # Spread over one interval: merchants taken together fetch apart.
            reconciler._first_fetch_delay = place * self.policy.interval / len(merchants)
            slot = self._slots[merchant] = _Slot(reconciler)
            self._group.start_soon(self._hold, merchant, slot)

    def _reconciler(self, merchant: str) -> Reconciler:
        feed = self._feed_for(merchant)
        if not isinstance(feed, MutationClient):
            raise TypeError(
                f"feed_for({merchant!r}) gave {type(feed).__name__}, not a MutationClient"
            )
        if feed.merchant != merchant:
            raise ValueError(f"feed_for({merchant!r}) gave the client of another merchant")
        gateway = None if self._gateway_for is None else self._gateway_for(merchant)
        reconciler = Reconciler(
            feed,
            gateway=gateway,
            store=self.store,
            lease_ttl=self.lease_ttl,
            worker_id=self.worker_id,
            policy=self.policy,
            clock=self._clock,
            follow_interval=self.follow_interval,
            **self._options,
        )
        reconciler._tap = self._tap.tap(merchant)
        return reconciler

    async def _hold(self, merchant: str, slot: _Slot) -> None:
        reconciler = slot.reconciler
        try:
            with slot.scope:
                await reconciler.run()
        except Exception as error:
            # One merchant's wrong credentials must not stop the others.
            logger.error(
                "fleet %s stopped merchant %s: %s: %s",
                self.worker_id,
                merchant,
                type(error).__name__,
                error,
            )
            self._resting[merchant] = anyio.current_time() + RETRY_AFTER_FAILURE
        finally:
            if self._slots.get(merchant) is slot:
                del self._slots[merchant]
            with anyio.CancelScope(shield=True):
                await reconciler.feed.aclose()

    async def _leave(self) -> None:
        member, self._member = self._member, None
        if member is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.store.release_lease(
                    member_key(self.worker_id, self.capacity), self.worker_id, member.epoch
                )
            except Exception as error:
                logger.warning(
                    "fleet %s could not leave the store cleanly: %s", self.worker_id, error
                )

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Fleet {state} worker_id={self.worker_id!r} held={len(self._slots)}>"
