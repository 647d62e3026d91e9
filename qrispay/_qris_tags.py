"""The EMVCo names of QRIS tags, for showing a payload to a person.

Re-exported by ``qrispay.qris``; kept apart so the payload module holds only
parsing and building.
"""

from __future__ import annotations

from typing import Final

__all__ = ["TAG_NAMES", "is_template", "subtag_name", "tag_name"]

#: The EMVCo names of the top-level tags that have one of their own.
TAG_NAMES: Final[dict[str, str]] = {
    "00": "Payload format indicator",
    "01": "Point of initiation method",
    "52": "Merchant category code",
    "53": "Transaction currency",
    "54": "Transaction amount",
    "55": "Tip or convenience indicator",
    "56": "Convenience fee, fixed",
    "57": "Convenience fee, percentage",
    "58": "Country code",
    "59": "Merchant name",
    "60": "Merchant city",
    "61": "Postal code",
    "62": "Additional data",
    "63": "CRC",
    "64": "Merchant information, other language",
}
_ACCOUNT_SUBTAGS: Final = {
    "00": "Globally unique identifier",
    "01": "Merchant PAN",
    "02": "Merchant ID",
    "03": "Merchant criteria",
}
_ADDITIONAL_SUBTAGS: Final = {
    "01": "Bill number",
    "02": "Mobile number",
    "03": "Store label",
    "04": "Loyalty number",
    "05": "Reference label",
    "06": "Customer label",
    "07": "Terminal label",
    "08": "Purpose of transaction",
    "09": "Consumer data request",
}
_LANGUAGE_SUBTAGS: Final = {
    "00": "Language preference",
    "01": "Merchant name",
    "02": "Merchant city",
}


def is_template(tag: str) -> bool:
    """Whether the top-level ``tag`` holds sub-tags (26-51, 62, 64, 80-99)."""
    number = int(tag)
    return 26 <= number <= 51 or number in (62, 64) or 80 <= number <= 99


def tag_name(tag: str) -> str:
    """The EMVCo name of a top-level tag id, e.g. ``"Merchant name"`` for ``"59"``."""
    number = int(tag)
    if tag in TAG_NAMES:
        return TAG_NAMES[tag]
    if 2 <= number <= 51:
        return "Merchant account information"
    if 80 <= number <= 99:
        return "Unreserved template"
    return "Reserved"


def subtag_name(parent: str, tag: str) -> str:
    """The EMVCo name of sub-tag ``tag`` inside the template ``parent``."""
    number = int(parent)
    if 26 <= number <= 51:
        return _ACCOUNT_SUBTAGS.get(tag, "Payment network specific")
    if parent == "62":
        return _ADDITIONAL_SUBTAGS.get(tag, "Payment system specific")
    if parent == "64":
        return _LANGUAGE_SUBTAGS.get(tag, "Reserved")
    return "Globally unique identifier" if tag == "00" else "Context specific"
