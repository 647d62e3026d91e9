"""Reading API values into models: money, times, statuses, feed rows.

One module-level cattrs converter with its hooks registered once, for the
gateway's models. Feed rows run on every poll, so they have a hand-written
reader (``mutation_from_row``) built on the same value parsers, with a
precise reason for every refusal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import attrs
import cattrs

from .models import (
    JAKARTA,
    InvoiceStatus,
    Mutation,
    MutationType,
    WithdrawalStatus,
)

__all__ = [
    "LIMITS",
    "Limits",
    "converter",
    "limit_row",
    "mutation_from_row",
    "parse_datetime",
    "parse_money",
    "parse_mutation_type",
    "structure",
]

T = TypeVar("T")

# Digits only, or thousands groups of three joined by dots ("35.002", "10.000.000"),
# optionally after "Rp" or "IDR". Anything with a decimal part is refused.
_MONEY = re.compile(
    r"(?:(?:rp|idr)\.?\s*)?([0-9]+|[0-9]{1,3}(?:\.[0-9]{3})+)",
    re.IGNORECASE | re.ASCII,
)
_MAX_MONEY_DIGITS = 18


def parse_money(value: object) -> int:
    """A non-negative whole rupiah amount, or ``ValueError``.

    Accepts an int or a string of digits, with thousands dots and an optional
    ``Rp``/``IDR`` prefix. Refuses floats, bools, None, negatives, decimal parts
    and words: a guess about money is worse than an error.
    """
    if type(value) is int:
        if value < 0:
            raise ValueError(f"negative amount {value}")
        return value
    if isinstance(value, str):
        match = _MONEY.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"not a whole rupiah amount: {value[:40]!r}")
        digits = match.group(1).replace(".", "")
        if len(digits) > _MAX_MONEY_DIGITS:
            raise ValueError(f"amount too large: {value[:40]!r}")
        return int(digits)
    if isinstance(value, bool):
        raise ValueError(f"a bool is not an amount: {value!r}")
    if isinstance(value, int):  # an int subclass other than bool
        return parse_money(int(value))
    raise ValueError(f"not a whole rupiah amount: {type(value).__name__} {value!r:.40}")


_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[ T]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:[.,]([0-9]{1,6})[0-9]*)?)?"
    r"\s*(Z|[+-][0-9]{2}:?[0-9]{2})?",
    re.ASCII | re.IGNORECASE,
)
_DMY = re.compile(
    r"([0-9]{2})/([0-9]{2})/([0-9]{4}) ([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?",
    re.ASCII,
)


def parse_datetime(value: object) -> datetime:
    """An aware datetime, or ``ValueError``.

    ``YYYY-MM-DD HH:MM[:SS[.fff]]`` (also with ``T``), with ``Z`` or an offset,
    or ``DD/MM/YYYY HH:MM[:SS]``. A time without a zone is Asia/Jakarta (WIB).
    """
    if not isinstance(value, str):
        raise ValueError(f"a date must be a string, not {type(value).__name__}")
    text = value.strip()
    match = _ISO.fullmatch(text)
    if match is not None:
        year, month, day, hour, minute, second, frac, zone = match.groups()
        micro = int(frac.ljust(6, "0")) if frac else 0
        tz = JAKARTA if zone is None else _zone(zone)
    else:
        match = _DMY.fullmatch(text)
        if match is None:
            raise ValueError(f"not a date: {value[:40]!r}")
        day, month, year, hour, minute, second = match.groups()
        micro, tz = 0, JAKARTA
    try:
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            micro,
            tzinfo=tz,
        )
        # Year 1 in WIB is before the first representable UTC instant: refuse it
        # here rather than fail later, when it is compared or keyed.
        parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid date: {value[:40]!r} ({exc})") from None
    return parsed


def _zone(text: str) -> timezone:
    if text in ("Z", "z"):
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise ValueError(f"not a valid UTC offset: {text!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


_TYPES: dict[str, MutationType] = {
    "cr": MutationType.CREDIT,
    "credit": MutationType.CREDIT,
    "in": MutationType.CREDIT,
    "payment": MutationType.CREDIT,
    "db": MutationType.DEBIT,
    "debit": MutationType.DEBIT,
    "out": MutationType.DEBIT,
}


def parse_mutation_type(value: object) -> MutationType:
    """CREDIT, DEBIT, or UNKNOWN for anything else (never an error)."""
    if isinstance(value, str):
        return _TYPES.get(value.strip().lower(), MutationType.UNKNOWN)
    return MutationType.UNKNOWN


def _text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if type(value) is int:
        return str(value)
    raise ValueError(f"{name} must be text, not {type(value).__name__}")


@attrs.frozen
class Limits:
    """What one feed row may hold: a row beyond them is refused, never walked
    by recursion. ``max_text``: characters in one string; ``max_depth``:
    arrays and objects nested in one value; ``max_items``: values in a row,
    counted through every nested array and object."""

    max_text: int = 4096
    max_depth: int = 16
    max_items: int = 1000


LIMITS = Limits()
_TOO_DEEP = "<nested too deeply>"


def _over_limits(row: Mapping[Any, Any]) -> str | None:
    """Why ``row`` is beyond ``LIMITS``, or None. Walked with a stack of its own."""
    items = 0
    stack: list[tuple[object, object, int]] = [(key, value, 1) for key, value in row.items()]
    if any(isinstance(key, str) and len(key) > LIMITS.max_text for key in row):
        return f"a key is longer than {LIMITS.max_text} characters"
    while stack:
        key, value, depth = stack.pop()
        items += 1
        if items > LIMITS.max_items:
            return f"the row holds more than {LIMITS.max_items} values"
        if isinstance(value, str) and len(value) > LIMITS.max_text:
            return f"{_name(key)}: text longer than {LIMITS.max_text} characters ({len(value)})"
        if isinstance(value, (dict, list)):
            if depth >= LIMITS.max_depth:
                return f"{_name(key)}: nested deeper than {LIMITS.max_depth} levels"
            if isinstance(value, dict):
                if any(isinstance(k, str) and len(k) > LIMITS.max_text for k in value):
                    return f"{_name(key)}: a key is longer than {LIMITS.max_text} characters"
                stack.extend((key, child, depth + 1) for child in value.values())
            else:
                stack.extend((key, child, depth + 1) for child in value)
    return None


def _name(key: object) -> str:
    return key[:40] if isinstance(key, str) else repr(key)[:40]


def limit_row(raw: object) -> object:
    """``raw`` as it may be kept and shown when it is beyond ``LIMITS``: each
    top-level value that is too deep or too long is replaced by a marker or
    cut short, so the row can be reported, logged and stored safely."""
    if not isinstance(raw, Mapping) or _over_limits(raw) is None:
        return raw
    kept: dict[Any, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and len(value) > LIMITS.max_text:
            kept[key] = f"{value[:200]}... ({len(value)} characters)"
        elif isinstance(value, (dict, list)) and _over_limits({key: value}) is not None:
            kept[key] = _TOO_DEEP
        else:
            kept[key] = value
    if _over_limits(kept) is not None:
        return {"row": _TOO_DEEP}
    return kept


def mutation_from_row(row: object) -> Mutation:
    """Read one feed row, or raise ``ValueError`` saying why it cannot be read."""
    if not isinstance(row, Mapping):
        raise ValueError(f"a row must be an object, not {type(row).__name__}")
    beyond = _over_limits(row)
    if beyond is not None:
        raise ValueError(beyond)
    if "date" not in row:
        raise ValueError("date is missing")
    if "amount" not in row:
        raise ValueError("amount is missing")
    try:
        date = parse_datetime(row["date"])
    except ValueError as exc:
        raise ValueError(f"date: {exc}") from None
    try:
        amount = parse_money(row["amount"])
    except ValueError as exc:
        raise ValueError(f"amount: {exc}") from None
    raw_balance = row.get("balance")
    try:
        balance = None if raw_balance is None else parse_money(raw_balance)
    except ValueError as exc:
        raise ValueError(f"balance: {exc}") from None
    raw_type = row.get("type")
    return Mutation(
        date=date,
        amount=amount,
        type=parse_mutation_type(raw_type),
        qris=_text(row.get("qris"), "qris"),
        brand_name=_text(row.get("brand_name"), "brand_name"),
        issuer_reff=_text(row.get("issuer_reff"), "issuer_reff").strip(),
        buyer_reff=_text(row.get("buyer_reff"), "buyer_reff"),
        balance=balance,
        raw_type=raw_type if isinstance(raw_type, str) or raw_type is None else repr(raw_type),
    )


def _structure_text(value: object, _: object) -> str:
    return _text(value, "value")


def _structure_status(enum_cls: Any) -> Any:
    def hook(value: object, _: object) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"a status must be text, not {type(value).__name__}")
        return enum_cls.parse(value)

    return hook


converter = cattrs.Converter(detailed_validation=False, forbid_extra_keys=False)
converter.register_structure_hook(int, lambda v, _: parse_money(v))
converter.register_structure_hook(str, _structure_text)
converter.register_structure_hook(datetime, lambda v, _: parse_datetime(v))
converter.register_structure_hook(InvoiceStatus | str, _structure_status(InvoiceStatus))
converter.register_structure_hook(WithdrawalStatus | str, _structure_status(WithdrawalStatus))
converter.register_unstructure_hook(datetime, lambda d: d.isoformat())
converter.register_unstructure_hook(
    InvoiceStatus | str, lambda s: s.value if isinstance(s, InvoiceStatus) else s
)
converter.register_unstructure_hook(
    WithdrawalStatus | str, lambda s: s.value if isinstance(s, WithdrawalStatus) else s
)

_OPTIONAL_FIELDS: dict[type, tuple[str, ...]] = {}


def _optional_fields(cls: type) -> tuple[str, ...]:
    names = _OPTIONAL_FIELDS.get(cls)
    if names is None:
        attrs.resolve_types(cls)
        names = tuple(
            f.name
            for f in attrs.fields(cls)
            if f.default is attrs.NOTHING and type(None) in getattr(f.type, "__args__", ())
        )
        _OPTIONAL_FIELDS[cls] = names
    return names


def structure(data: Mapping[str, Any], cls: type[T]) -> T:
    """``data`` as a ``cls``; a missing optional field is None. ``ValueError`` if unreadable."""
    missing = [name for name in _optional_fields(cls) if name not in data]
    if missing:
        data = {**data, **dict.fromkeys(missing)}
    try:
        return converter.structure(data, cls)
    except (ValueError, TypeError, KeyError, cattrs.BaseValidationError) as exc:
        raise ValueError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"field {exc.args[0]!r} is missing"
    return str(exc) or type(exc).__name__
