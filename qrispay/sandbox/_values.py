"""Checks and formats of the values the sandbox's state keeps and shows."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import TypeGuard

from ..models import JAKARTA

__all__ = ["is_int", "iso_z", "rate", "seconds", "wib"]


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` proper: not a bool, not a float, not a subclass."""
    return type(value) is int


def rate(value: float) -> float:
    """A probability, from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a rate is a number from 0 to 1")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a rate is from 0 to 1, not {value}")
    return float(value)


def seconds(value: float) -> float:
    """A finite, non-negative number of seconds, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a duration is a number of seconds")
    if not value >= 0.0 or math.isinf(value):
        raise ValueError(f"a duration is finite and not negative, not {value}")
    return float(value)


def wib(when: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in Asia/Jakarta, without a zone (both APIs' style)."""
    return when.astimezone(JAKARTA).strftime("%Y-%m-%d %H:%M:%S")


def iso_z(when: datetime | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and ``Z`` (the withdrawal style)."""
    if when is None:
        return None
    utc = when.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
