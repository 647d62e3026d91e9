"""The Reconciler's loop on a store, where several workers may share a merchant
(docs/design.md, "Several workers").

One worker holds the merchant's lease and polls; the others follow: every
second they take what was committed (invoices others made, events) and try
the lease, which a crashed poller stops renewing. A poller renews it at each
poll and at least every ``lease_ttl / 3``; a poller whose lease is gone, or
whose commit the store refused, goes back to what the store holds.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from ._keeper import Keeper
from .errors import InvoiceStateConflictError, LeaseLostError
from .events import Event
from .polling import Schedule

if TYPE_CHECKING:
    from .engine import ReconciliationEngine

__all__ = ["FOLLOW_INTERVAL", "StoreLoop", "check_follow_interval"]

logger = logging.getLogger("qrispay.reconciler")

#: Seconds between two looks at the store by a worker that does not poll (and
#: by the poller while it waits): how soon others' events and a lapsed lease show.
FOLLOW_INTERVAL = 1.0


def check_follow_interval(seconds: object, lease_ttl: float) -> None:
    """``follow_interval`` is positive and at most ``lease_ttl / 3``: the lease is
    renewed at the end of a pause at the latest."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("follow_interval must be a number of seconds")
    if not 0 < seconds <= lease_ttl / 3:
        raise ValueError("follow_interval must be positive and at most lease_ttl / 3")


class StoreLoop:
    """The store half of ``Reconciler`` (a mixin: it uses the Reconciler's parts)."""

    _keeper: Keeper | None
    _engine: ReconciliationEngine | None
    _schedule: Schedule
    lease_ttl: float
    follow_interval: float
    _first_fetch_delay: float
    _in_flight: datetime | None
    _wake: anyio.Event

    if TYPE_CHECKING:

        @property
        def engine(self) -> ReconciliationEngine: ...
        def _now(self) -> datetime: ...
        def _publish(self, events: list[tuple[int, Event]]) -> None: ...
        async def _poll(self, *, first: bool = False) -> Exception | None: ...
        def _count_commit_failure(self, error: Exception) -> None: ...

    def _kept(self) -> Keeper:
        assert self._keeper is not None
        return self._keeper

    async def _run_on_store(self, task_status: TaskStatus[None]) -> Exception | None:
        """Follow until the lease is ours, then poll; started once following or
        after the first poll, whichever comes first."""
        keeper = self._kept()
        started = False
        while True:
            if not keeper.polling:
                if await self._try_lease():
                    await self._take_over()
                    # Not a bare sleep: the window or backoff that travels with the
                    # lease may outlast it, and a lease not renewed meanwhile lapses
                    # to a third worker while this one still counts as the poller.
                    await self._wait_polling(busy=True)
                    # Lost meanwhile: follow again, rather than let the poll claim a
                    # fresh lease without the take-over's reload and window.
                    continue
                else:
                    if not started:
                        task_status.started()
                        started = True
                    await self._pause(self.follow_interval)
                    continue
            fatal = await self._poll(first=not started)
            if fatal is not None:
                return fatal
            if not started:
                task_status.started()
                started = True
            await self._wait_polling()

    async def _try_lease(self) -> bool:
        """A follower's round: store its own changes, take what others wrote, try
        the lease. Its changes go first, so a new holder starts from them."""
        keeper = self._kept()
        stored = True
        try:
            await keeper.commit(self.engine, [], self._publish)
        except InvoiceStateConflictError as error:
            # Another worker closed an invoice first; that close stands.
            logger.warning("another worker closed an invoice first; reading the store: %s", error)
            await self._reload()
        except Exception as error:
            logger.warning("could not store this worker's changes: %s", error)
            stored = False
        try:
            # Others' events are taken even while this worker's own changes wait.
            await keeper.catch_up(self.engine, self._publish)
            # Not with changes of its own unstored: a new holder starts from the store.
            return stored and await keeper.claim_lease()
        except Exception as error:
            logger.warning("could not reach the store: %s", error)
            return False

    async def _take_over(self) -> None:
        keeper = self._kept()
        self._engine = await keeper.reload(self._engine)
        keeper.resume(self._schedule, self._now())
        if self._first_fetch_delay and not keeper.poller.get("last_fetch"):
            # A merchant never fetched: its first fetch at the phase its fleet gave
            # it, so merchants taken at once do not all fetch at once.
            interval = self._schedule.policy.interval
            self._schedule.started(anyio.current_time() - interval + self._first_fetch_delay)
        logger.info("worker %s now polls merchant %s", keeper.holder, keeper.merchant)

    async def _wait_polling(self, *, busy: bool = False) -> None:
        """Until the next poll is due (``busy``: as if there were work), renewing
        the lease and taking what others wrote about once a second."""
        keeper = self._kept()
        renewed = anyio.current_time()
        force = busy
        while True:
            busy = force or self.engine.has_work(now=self._now())
            left = self._schedule.next_start(busy=busy) - anyio.current_time()
            if left <= 0:
                return
            await self._pause(min(left, self.follow_interval))
            renew = anyio.current_time() - renewed >= self.lease_ttl / 3
            if not renew and self._schedule.next_start(busy=busy) <= anyio.current_time():
                # The poll due now catches up before it judges, and its commit
                # renews the lease: a read here would only repeat its work.
                return
            try:
                await keeper.catch_up(self.engine, self._publish)
                if renew:
                    renewed = anyio.current_time()
                    if not await keeper.claim_lease():
                        await self._lease_lost()
                        return
            except Exception as error:
                logger.warning("could not reach the store: %s", error)

    async def _pause(self, seconds: float) -> None:
        self._wake = anyio.Event()
        with anyio.move_on_after(seconds if math.isfinite(seconds) else None):
            await self._wake.wait()

    async def _before_poll(self) -> bool:
        """A poller's checks before it fetches: the lease is still its own, the
        last commit is stored, the invoices others made are known. False: do
        not fetch now."""
        keeper = self._kept()
        try:
            # Each poll's commit renews the lease; a store round trip only when
            # that has not happened for a while (commits failing, a long idle).
            # Fresh enough to last through the fetch and its commit, by a margin.
            margin = self._schedule.policy.interval + FOLLOW_INTERVAL
            if not keeper.lease_fresh(margin) and not await keeper.claim_lease():
                await self._lease_lost()
                return False
            if keeper.behind:
                # No new rows until the old ones are stored: a crash loses one poll.
                await self._commit_poll([])
                if keeper.behind:
                    self._schedule.failed()
                    return False
        except Exception as error:
            logger.warning("could not reach the store; not fetching: %s", error)
            self._schedule.failed()
            return False
        return True

    async def _after_fetch(self) -> bool:
        """Take the invoices other workers stored before judging what the fetch
        found: an invoice is stored before its customer can pay it, so every
        invoice a fetched row can pay is then known. False: do not judge now."""
        try:
            await self._kept().catch_up(self.engine, self._publish)
        except Exception as error:
            logger.warning("could not reach the store; the rows wait for the next poll: %s", error)
            self._schedule.failed()
            return False
        return True

    async def _commit_poll(self, events: list[Event]) -> None:
        """Commit what a poll found. Refused (the lease is gone, or another worker
        closed an invoice first): back to what the store holds, so the rows are
        judged again by whoever polls next. Failed otherwise: kept for the next."""
        keeper = self._kept()
        try:
            await keeper.commit(self.engine, events, self._publish)
        except LeaseLostError:
            await self._lease_lost()
        except InvoiceStateConflictError as error:
            logger.warning("another worker closed an invoice first; judging again: %s", error)
            await self._reload()
        except Exception as error:
            self._count_commit_failure(error)

    async def _lease_lost(self) -> None:
        keeper = self._kept()
        logger.warning(
            "worker %s lost the poll lease of merchant %s; following",
            keeper.holder,
            keeper.merchant,
        )
        keeper.lost()
        await self._reload()

    async def _reload(self) -> None:
        try:
            self._engine = await self._kept().reload(self._engine)
        except Exception as error:
            logger.error("could not read the store back: %s", error)

    async def _release(self) -> None:
        keeper = self._keeper
        if keeper is None or not keeper.polling:
            return
        # Shielded: a clean stop hands the lease on at once, not after lease_ttl.
        with anyio.CancelScope(shield=True):
            if self._in_flight is not None:
                # Stopped during a fetch, which may have reached the server: its
                # start is stored first, or the next holder could fetch inside
                # the window it began.
                keeper.fetched(self._in_flight, self._schedule)
                self._in_flight = None
                try:
                    await keeper.commit(self.engine, [], self._publish)
                except Exception as error:
                    logger.warning("could not store the last fetch's time: %s", error)
            if keeper.behind:
                # The last fetch's time is not stored: released now, the next holder
                # could fetch inside the window it began. It lapses after lease_ttl.
                logger.warning("not releasing the poll lease: the last poll is not stored")
                return
            try:
                await keeper.release_lease()
            except Exception as error:
                logger.warning("could not release the poll lease: %s", error)
