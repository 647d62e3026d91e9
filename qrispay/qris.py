"""QRIS payloads: parse, check and make dynamic an EMVCo merchant-presented QR string.

A QRIS payload is a flat run of data objects, each a 2-digit tag id, a 2-digit
decimal length and the value, ending in tag 63, a CRC-16/CCITT-FALSE over
everything before it (including the ``6304`` of tag 63 itself)::

    >>> from qrispay import qris
    >>> static = (
    ...     "00020101021126340014ID.CO.QRIS.WWW0212ID10200000015204581253033605802ID"
    ...     "5909TOKO SARI6007JAKARTA61051011063040230"
    ... )
    >>> payload = qris.parse(static)
    >>> payload.merchant_name, payload.is_dynamic, payload.amount
    ('TOKO SARI', False, None)
    >>> dynamic = qris.to_dynamic(static, 25_000)
    >>> dynamic[:20], dynamic[-56:]  # tag 01 is now "12", and tag 54 holds the amount
    ('00020101021226340014', '5405250005802ID5909TOKO SARI6007JAKARTA61051011063043010')
    >>> again = qris.parse(dynamic)
    >>> again.is_dynamic, again.amount, again.get("54")
    (True, 25000, '25000')

Choices where EMVCo leaves room, made so that money is never guessed:

- **ASCII only.** EMVCo allows other alphabets in the language template
  (tag 64), but generators disagree on whether a length counts characters or
  UTF-8 bytes and on the bytes the CRC runs over. Rather than guess, any
  character outside ASCII is refused, so characters, bytes and lengths are
  the same thing everywhere. Positions in error messages are 0-based
  character offsets.
- **Nothing is repaired.** A wrong CRC, a lying length or trailing data is
  refused, never fixed. The CRC is compared ignoring the case of its hex
  digits (``29b1`` and ``29B1`` are the same number); :meth:`Payload.dumps`
  keeps the case it was given.
- **Top-level tags are unique.** Two amounts (two tag 54) in one payload
  cannot both be right, so a repeated top-level tag is refused.
- **Templates are kept raw.** Tags 26-51, 62, 64 and 80-99 keep their value
  as the string it was; :func:`parse_template` reads their sub-tags on
  demand. They are not checked by :func:`parse`: no money rides on them,
  and refusing a payment QR over an issuer's odd private template would
  help nobody.
- **Amounts are whole rupiah.** Tag 54 must look like an EMVCo amount
  (digits, optionally ``.`` and digits, at most 13 characters). ``"10000"``
  and ``"10000.00"`` read as 10000; a non-zero fraction (``"10000.50"``)
  makes :attr:`Payload.amount` raise, rather than return ``None``, which
  would read as "no amount".
"""

from __future__ import annotations

import re
from typing import Final

import attrs

from ._qris_tags import TAG_NAMES, is_template, subtag_name, tag_name
from .errors import QrispayError

__all__ = [
    "TAG_NAMES",
    "Payload",
    "QrisError",
    "crc16",
    "is_template",
    "parse",
    "parse_template",
    "subtag_name",
    "tag_name",
    "to_dynamic",
]


class QrisError(QrispayError, ValueError):
    """A QRIS payload is malformed, its CRC is wrong, or an amount is invalid."""


_TAG_FORMAT: Final = "00"
_TAG_INITIATION: Final = "01"
_TAG_AMOUNT: Final = "54"
_TAG_MERCHANT_NAME: Final = "59"
_TAG_MERCHANT_CITY: Final = "60"
_TAG_CRC: Final = "63"

_STATIC: Final = "11"
_DYNAMIC: Final = "12"

_MAX_VALUE_LENGTH: Final = 99
_MAX_AMOUNT_LENGTH: Final = 13

# `str.isdigit()` and `\d` also accept digits of other scripts, such as Arabic-Indic.
_TWO_DIGITS: Final = re.compile(r"[0-9]{2}")
_EMV_AMOUNT: Final = re.compile(r"([0-9]+)(?:\.([0-9]+))?")


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE: Final = _make_crc_table()


def _first_non_ascii(text: str) -> int | None:
    if text.isascii():
        return None
    return next(i for i, char in enumerate(text) if not char.isascii())


def crc16(data: str) -> str:
    """CRC-16/CCITT-FALSE of ``data`` as 4 uppercase hex digits.

    Polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR:
    ``crc16("123456789") == "29B1"``. ``data`` must be ASCII (see the module
    docstring); anything else raises :class:`QrisError`.
    """
    where = _first_non_ascii(data)
    if where is not None:
        raise QrisError(f"non-ASCII character {data[where]!r} at position {where}")
    crc = 0xFFFF
    for byte in data.encode("ascii"):
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return f"{crc:04X}"


def _tokenize(text: str, what: str) -> tuple[tuple[str, str], ...]:
    where = _first_non_ascii(text)
    if where is not None:
        raise QrisError(f"{what}: non-ASCII character {text[where]!r} at position {where}")
    items: list[tuple[str, str]] = []
    pos = 0
    end = len(text)
    while pos < end:
        if end - pos < 4:
            raise QrisError(
                f"{what} truncated at position {pos}: {text[pos:]!r} is too short for "
                "a data object (2-digit tag id, 2-digit length, value)"
            )
        tag = text[pos : pos + 2]
        if not _TWO_DIGITS.fullmatch(tag):
            raise QrisError(f"{what}: tag id {tag!r} at position {pos} is not two digits")
        length_text = text[pos + 2 : pos + 4]
        if not _TWO_DIGITS.fullmatch(length_text):
            raise QrisError(
                f"{what}: tag {tag} at position {pos} has a non-digit length {length_text!r}"
            )
        length = int(length_text)
        start = pos + 4
        if start + length > end:
            raise QrisError(
                f"{what} truncated: tag {tag} at position {pos} declares length {length} "
                f"but only {end - start} character(s) follow"
            )
        items.append((tag, text[start : start + length]))
        pos = start + length
    return tuple(items)


def _serialize(tags: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> str:
    return "".join(f"{tag}{len(value):02d}{value}" for tag, value in tags)


def _validate(tags: object) -> None:
    if not isinstance(tags, tuple):
        raise TypeError(f"tags must be a tuple of (tag, value) pairs, got {type(tags).__name__}")
    if not tags:
        raise QrisError("empty payload")
    seen: dict[str, int] = {}
    for index, item in enumerate(tags):
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], str)
        ):
            raise TypeError(f"tags[{index}] must be a (str, str) pair, got {item!r}")
        tag, value = item
        if not _TWO_DIGITS.fullmatch(tag):
            raise QrisError(f"tags[{index}]: tag id {tag!r} is not two digits")
        where = _first_non_ascii(value)
        if where is not None:
            raise QrisError(f"tag {tag}: non-ASCII character {value[where]!r} in its value")
        if len(value) > _MAX_VALUE_LENGTH:
            raise QrisError(f"tag {tag}: value of {len(value)} characters, at most 99 fit")
        if tag in seen:
            raise QrisError(
                f"tag {tag} appears twice at the top level (data objects {seen[tag]} and {index})"
            )
        seen[tag] = index

    first_tag, first_value = tags[0]
    if first_tag != _TAG_FORMAT:
        raise QrisError(
            f"payload must start with tag 00 (payload format indicator), not {first_tag}"
        )
    if first_value != "01":
        raise QrisError(f"tag 00 (payload format indicator) must be '01', not {first_value!r}")

    crc_index = seen.get(_TAG_CRC)
    if crc_index is None:
        raise QrisError("no CRC: tag 63 is missing")
    if crc_index != len(tags) - 1:
        raise QrisError(
            f"tag 63 (CRC) must be the last data object, but {len(tags) - 1 - crc_index} follow it"
        )
    stated = tags[crc_index][1]
    if len(stated) != 4:
        raise QrisError(f"tag 63 (CRC) must have length 04, not {len(stated):02d}")

    initiation = tags[seen[_TAG_INITIATION]][1] if _TAG_INITIATION in seen else None
    if initiation is not None and initiation not in (_STATIC, _DYNAMIC):
        raise QrisError(f"tag 01 (point of initiation) must be '11' or '12', not {initiation!r}")

    amount = tags[seen[_TAG_AMOUNT]][1] if _TAG_AMOUNT in seen else None
    if amount is not None and not (
        len(amount) <= _MAX_AMOUNT_LENGTH and _EMV_AMOUNT.fullmatch(amount)
    ):
        raise QrisError(f"tag 54 (transaction amount) is not a valid amount: {amount!r}")

    expected = crc16(_serialize(tags[:-1]) + _TAG_CRC + "04")
    # Only the case of the hex digits may differ: it is the same number.
    if stated.upper() != expected:
        raise QrisError(
            f"CRC mismatch: the payload says {stated!r}, its content gives {expected!r}"
        )


@attrs.frozen
class Payload:
    """A parsed, CRC-checked QRIS payload: the top-level data objects in order.

    Build one with :func:`parse`. Constructing one directly runs the same
    checks (tag 00 first, tag 63 last with a matching CRC, ...), so every
    ``Payload`` is a valid payload and :meth:`dumps` gives a valid string.
    """

    tags: tuple[tuple[str, str], ...]

    def __attrs_post_init__(self) -> None:
        _validate(self.tags)

    def get(self, tag: str) -> str | None:
        """The value of top-level ``tag`` (e.g. ``"59"``), or ``None`` if absent."""
        for key, value in self.tags:
            if key == tag:
                return value
        return None

    @property
    def is_dynamic(self) -> bool:
        """True when tag 01 (point of initiation method) is ``"12"``."""
        return self.get(_TAG_INITIATION) == _DYNAMIC

    @property
    def amount(self) -> int | None:
        """Tag 54 in whole rupiah, or ``None`` when the payload has no amount.

        ``"10000.00"`` reads as 10000. A non-zero fraction raises
        :class:`QrisError`: rupiah amounts are whole, and ``None`` would mean
        "no amount", which is not what the payload says.
        """
        value = self.get(_TAG_AMOUNT)
        if value is None:
            return None
        match = _EMV_AMOUNT.fullmatch(value)
        if match is None:  # pragma: no cover - _validate refuses this already
            raise QrisError(f"tag 54 (transaction amount) is not a valid amount: {value!r}")
        whole, fraction = match.groups()
        if fraction is not None and fraction.strip("0"):
            raise QrisError(f"tag 54 (transaction amount) {value!r} is not a whole rupiah amount")
        return int(whole)

    @property
    def merchant_name(self) -> str | None:
        """Tag 59."""
        return self.get(_TAG_MERCHANT_NAME)

    @property
    def merchant_city(self) -> str | None:
        """Tag 60."""
        return self.get(_TAG_MERCHANT_CITY)

    def dumps(self) -> str:
        """The payload string; ``parse(s).dumps() == s`` for every valid ``s``."""
        return _serialize(self.tags)


def parse(payload: str) -> Payload:
    """Parse and check a QRIS payload string.

    Raises :class:`QrisError` (a ``ValueError``) for a malformed data object
    (a non-digit tag id or length, a length running past the end), a payload
    not starting with ``000201``, a missing CRC, a tag 63 that is not last or
    not 4 long, a wrong CRC, a repeated top-level tag, an invalid tag 01 or
    54, or a non-ASCII character.
    """
    if not isinstance(payload, str):
        raise TypeError(f"payload must be a str, got {type(payload).__name__}")
    if not payload:
        raise QrisError("empty payload")
    return Payload(_tokenize(payload, "payload"))


def parse_template(value: str) -> tuple[tuple[str, str], ...]:
    """The sub-tags of a template value (tags 26-51, 62, 64, 80-99), in order.

    Checks the data object structure only, the same way :func:`parse` does;
    templates carry no CRC of their own.
    """
    if not isinstance(value, str):
        raise TypeError(f"template value must be a str, got {type(value).__name__}")
    return _tokenize(value, "template")


_TIP_TAGS = frozenset({"55", "56", "57"})


def to_dynamic(payload: str, amount: int, *, keep_tip: bool = False) -> str:
    """Turn a QRIS payload into a dynamic one for ``amount`` rupiah.

    The payload is parsed and its CRC checked first. Tag 01 becomes ``"12"``
    (inserted after tag 00 if absent), any tag 54 is replaced by ``amount``
    placed before the first top-level tag above 54, and the CRC is computed
    afresh. Every other data object keeps its value and its place; the
    payload is rebuilt from its data objects, never edited as text.

    The tip and convenience-fee tags (55, 56, 57) are dropped unless
    ``keep_tip=True``: they let the payer pay more than ``amount``, and a
    payment is matched on its exact total.

    ``amount`` must be an ``int`` (not a ``bool``) from 1 to 9 999 999 999 999
    (tag 54 holds at most 13 characters); anything else raises
    :class:`QrisError`.
    """
    amount_obj: object = amount
    if isinstance(amount_obj, bool) or not isinstance(amount_obj, int):
        raise QrisError(f"amount must be an int, got {type(amount_obj).__name__}: {amount_obj!r}")
    if amount_obj <= 0:
        raise QrisError(f"amount must be positive, got {amount_obj}")
    amount_text = str(amount_obj)
    if len(amount_text) > _MAX_AMOUNT_LENGTH:
        raise QrisError(f"amount {amount_obj} has more than {_MAX_AMOUNT_LENGTH} digits")

    parsed = parse(payload)
    tags: list[tuple[str, str]] = []
    for tag, value in parsed.tags:
        if tag in (_TAG_AMOUNT, _TAG_CRC) or (tag in _TIP_TAGS and not keep_tip):
            continue
        tags.append((tag, _DYNAMIC) if tag == _TAG_INITIATION else (tag, value))
    if parsed.get(_TAG_INITIATION) is None:
        tags.insert(1, (_TAG_INITIATION, _DYNAMIC))
    position = next(
        (index for index, (tag, _) in enumerate(tags) if int(tag) > int(_TAG_AMOUNT)),
        len(tags),
    )
    tags.insert(position, (_TAG_AMOUNT, amount_text))

    body = _serialize(tags) + _TAG_CRC + "04"
    result = body + crc16(body)
    # Cheap insurance that what we hand out is itself a valid payload.
    parse(result)
    return result
