"""Decoding JSON answers: orjson when it is installed (the ``speed`` extra),
the standard library otherwise, with the same result either way.

orjson refuses some texts the standard library reads (``NaN``, lone
surrogates, other encodings than UTF-8), and reads integers beyond 64 bits as
floats; the first are read again by the standard library, and a text with a
run of 20 digits anywhere goes to the standard library at once. So which
decoder is installed never changes what an answer means, only how fast it is
read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BODY", "JSONTooDeep", "fast_dumps", "loads"]

#: The largest answer read, in bytes; a longer one is refused unread.
MAX_BODY = 32 * 1024 * 1024


class JSONTooDeep(ValueError):
    """The text nests arrays or objects deeper than a decoder can follow."""


_fast: Callable[[bytes], Any] | None
#: orjson's encoder when it is installed. Two decoded values it writes as the
#: same bytes are the same JSON value, type for type (``1``, ``1.0`` and
#: ``true`` differ), except that it writes NaN and the infinities as ``null``;
#: it raises on integers beyond 64 bits, lone surrogates and deep nesting.
fast_dumps: Callable[[Any], bytes] | None
try:
    import orjson
except ImportError:  # pragma: no cover - depends on the extra being installed
    _fast = fast_dumps = None
else:
    _fast, fast_dumps = orjson.loads, orjson.dumps

# orjson reads an integer beyond 64 bits as a float; a text with 20 digits in a
# row is left to json. Two passes in C (digits to "0", the rest to " ", then a
# search) cost a fraction of what a regular expression does on a large answer.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 20


def _has_long_number(content: bytes) -> bool:
    return _LONG_NUMBER in content.translate(_DIGITS)


def loads(content: bytes, *, fast: bool = True) -> Any:
    """The decoded ``content``; ``ValueError`` if it is not JSON, ``JSONTooDeep``
    if it nests too deeply to decode. ``fast=False`` uses the standard library."""
    if fast and _fast is not None and not _has_long_number(content):
        try:
            return _fast(content)
        except ValueError:
            pass  # read again below: the standard library decides what it means
    try:
        return json.loads(content)
    except RecursionError:
        raise JSONTooDeep("the answer is nested too deeply to read") from None
