"""Argument checks shared by every public entry point, written once.

A wrong type raises ``BadArgument``, which is both a ``TypeError`` (Python's
convention) and a ``ValueError`` (what the client-side validation promises),
so callers may catch either.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ._wire import DANA_NUMBER_RULE, is_dana_number

__all__ = [
    "BadArgument",
    "check_account_name",
    "check_account_number",
    "check_amount",
    "check_at_least",
    "check_id",
    "require_aware",
    "require_duration",
    "require_positive_int",
]


class BadArgument(TypeError, ValueError):
    """An argument of the wrong type."""


def check_amount(amount: object, name: str = "amount") -> int:
    """An amount of rupiah: an ``int`` (not a bool, not a float), above zero."""
    if type(amount) is not int:
        raise BadArgument(f"{name} must be an int of rupiah, not {type(amount).__name__}")
    if amount <= 0:
        raise ValueError(f"{name} must be positive, not {amount}")
    return amount


def check_id(value: object, name: str) -> str:
    """A non-blank string id."""
    if not isinstance(value, str):
        raise BadArgument(f"{name} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def check_account_number(value: object) -> str:
    """A DANA phone number."""
    if not isinstance(value, str):
        raise BadArgument(f"account_number must be a str, not {type(value).__name__}")
    if not is_dana_number(value):
        raise ValueError(f"account_number must be a DANA phone number: {DANA_NUMBER_RULE}")
    return value


def check_account_name(value: object) -> str:
    """A non-blank account holder's name."""
    if not isinstance(value, str):
        raise BadArgument(f"account_name must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError("account_name must not be empty")
    return value


def check_at_least(value: object, name: str, minimum: int) -> int:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if type(value) is not int:
        raise BadArgument(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def require_aware(value: object, name: str) -> None:
    """A timezone-aware ``datetime``."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} is a naive datetime; pass a timezone-aware one (UTC, or qrispay.JAKARTA "
            "for WIB): a naive time compared with WIB feed dates is off by hours"
        )


def require_duration(value: object, name: str) -> None:
    """A ``timedelta`` that is not negative."""
    if not isinstance(value, timedelta):
        raise TypeError(f"{name} must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{name} must not be negative")


def require_positive_int(value: object, name: str) -> None:
    """An ``int`` above zero (a bool is refused); ``ValueError`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
