"""Facts of the two APIs, written once: the gateway's endpoint table, the feed's
address and path, and the shape of a DANA account number.

The gateway document only gives the cancel path; the other defaults are our
best reading and every one can be overridden through ``GatewayEndpoints``.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = [
    "DANA_NUMBER_RULE",
    "DEFAULT_FEED_URL",
    "FEED_ENDPOINT",
    "FEED_PATH",
    "GATEWAY_ENDPOINTS",
    "GATEWAY_PATHS",
    "is_dana_number",
]

Method = Literal["GET", "POST"]

#: The gateway's calls, named as the fields of ``GatewayEndpoints``, with their
#: method and default path, in the order the document lists them.
GATEWAY_PATHS: Final[dict[str, tuple[Method, str]]] = {
    "balance": ("GET", "/api/v1/balance"),
    "create_invoice": ("GET", "/api/v1/invoice/create"),
    "invoice_status": ("GET", "/api/v1/invoice/status"),
    "cancel_invoice": ("POST", "/api/v1/invoice/cancel"),
    "create_withdrawal": ("POST", "/api/v1/withdraw"),
    "withdrawal_status": ("GET", "/api/v1/withdraw/status"),
    "withdrawal_history": ("GET", "/api/v1/withdraw/history"),
}
GATEWAY_ENDPOINTS: Final[tuple[str, ...]] = tuple(GATEWAY_PATHS)

#: The check-payment feed: its public host, its path and its endpoint name.
DEFAULT_FEED_URL: Final = "https://mutasiv1.autsc.my.id"
FEED_PATH: Final = "/check-payment"
FEED_ENDPOINT: Final = "check_payment"

# A DANA account is a phone number: 10 to 15 digits, starting 08 or 628.
_DANA_NUMBER = re.compile(r"(?=[0-9]{10,15}\Z)(?:08|628)[0-9]*", re.ASCII)
DANA_NUMBER_RULE: Final = "digits only, 10 to 15 long, starting 08 or 628"


def is_dana_number(value: object) -> bool:
    """Whether ``value`` is a DANA phone number (see ``DANA_NUMBER_RULE``)."""
    return isinstance(value, str) and _DANA_NUMBER.match(value) is not None
