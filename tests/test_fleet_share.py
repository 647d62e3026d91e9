"""The fair split of merchants over fleet members (qrispay._fleet_share)."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from qrispay._fleet_share import MEMBER_PREFIX, Member, member_key, parse_member, shares
from qrispay.store._base import Lease

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

members = st.lists(
    st.tuples(st.text("abcdef", min_size=1, max_size=4), st.integers(1, 50)),
    min_size=1,
    max_size=6,
    unique_by=lambda m: m[0],
)


@given(st.integers(0, 300), members)
def test_the_split_covers_what_the_capacities_allow_as_evenly_as_they_allow(
    wanted: int, pairs: list[tuple[str, int]]
) -> None:
    split = shares(wanted, [Member(w, c) for w, c in pairs])
    capacity = dict(pairs)
    assert set(split) == set(capacity)
    assert sum(split.values()) == min(wanted, sum(capacity.values()))
    assert all(0 <= split[w] <= capacity[w] for w in split)
    # Nobody below capacity has two fewer than anyone: the split is as even as can be.
    unfilled = [split[w] for w in split if split[w] < capacity[w]]
    if unfilled:
        assert max(split.values()) - min(unfilled) <= 1


@given(st.integers(0, 300), members)
def test_every_member_computes_the_same_split_whatever_the_order(
    wanted: int, pairs: list[tuple[str, int]]
) -> None:
    forward = shares(wanted, [Member(w, c) for w, c in pairs])
    backward = shares(wanted, [Member(w, c) for w, c in reversed(pairs)])
    assert forward == backward


def test_two_members_split_200_merchants_100_each() -> None:
    assert shares(200, [Member("A", 1000), Member("B", 1000)]) == {"A": 100, "B": 100}
    assert shares(201, [Member("A", 1000), Member("B", 1000)]) == {"A": 101, "B": 100}
    assert shares(200, [Member("A", 50), Member("B", 1000)]) == {"A": 50, "B": 150}


def test_a_member_key_names_its_capacity_and_worker() -> None:
    key = member_key("host-1", 250)
    assert key.startswith(MEMBER_PREFIX)
    assert parse_member(key, Lease("host-1", 1, T0)) == Member("host-1", 250)
    # A name this code did not write, or whose holder differs, is no member.
    assert parse_member(MEMBER_PREFIX + "x/host-1", Lease("host-1", 1, T0)) is None
    assert parse_member(key, Lease("other", 1, T0)) is None
