"""How fleets on one store share merchants out (docs/design.md, "A fleet of
merchants"): who the members are, and each member's fair share.

A member is a lease under a reserved name, ``MEMBER_PREFIX`` + capacity +
``/`` + worker id, so every store that keeps leases keeps members too, and a
crashed member drops out when its lease lapses, like its merchants' leases.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._workers import check_follow_interval
from .polling import PollPolicy
from .store._base import Lease

__all__ = [
    "MEMBER_PREFIX",
    "Member",
    "check_reconciler_options",
    "member_key",
    "parse_member",
    "shares",
]

#: Lease names starting with this are fleet members, not merchants.
MEMBER_PREFIX = "qrispay.fleet/"


@attrs.frozen
class Member:
    worker_id: str
    capacity: int


def member_key(worker_id: str, capacity: int) -> str:
    """The lease name a member announces itself under."""
    return f"{MEMBER_PREFIX}{capacity}/{worker_id}"


def parse_member(key: str, lease: Lease) -> Member | None:
    """The member a lease name announces (None for a name this code did not write)."""
    capacity, _, worker_id = key[len(MEMBER_PREFIX) :].partition("/")
    if not capacity.isdigit() or worker_id != lease.holder:
        return None
    return Member(worker_id, int(capacity))


def shares(wanted: int, members: Sequence[Member]) -> dict[str, int]:
    """Each member's share of ``wanted`` merchants: as equal as the capacities
    allow, the smallest capacities filled first, the remainder to the first
    worker ids. Every member computes the same split from the same members."""
    result: dict[str, int] = {}
    left = wanted
    ordered = sorted(members, key=lambda member: (member.capacity, member.worker_id))
    for place, member in enumerate(ordered):
        give = min(member.capacity, math.ceil(left / (len(ordered) - place)))
        result[member.worker_id] = give
        left -= give
    return result


_FLEET_OWNS = ("feed", "store", "lease_ttl", "worker_id", "policy", "clock", "follow_interval")


def check_reconciler_options(
    options: Mapping[str, Any], lease_ttl: float, policy: PollPolicy, follow_interval: float
) -> None:
    """``TypeError``/``ValueError`` now for what every merchant's Reconciler
    would refuse later."""
    from .reconciler import Reconciler

    known = inspect.signature(Reconciler).parameters
    for name in options:
        if name in _FLEET_OWNS or name == "gateway":
            raise TypeError(f"reconciler_options must not set {name!r}: the fleet sets it")
        if name not in known:
            raise TypeError(f"Reconciler takes no option {name!r}")
    if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)):
        raise TypeError("lease_ttl must be a number of seconds")
    if not lease_ttl > policy.interval:
        raise ValueError("lease_ttl must be longer than the poll interval (ttl + margin)")
    check_follow_interval(follow_interval, lease_ttl)
