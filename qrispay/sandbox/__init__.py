"""A stateful, deterministic simulator of the gateway API and the check-payment
feed, for demos, end-to-end tests and benchmarks.

    from qrispay.sandbox import Sandbox, ManualClock

    clock = ManualClock()
    sandbox = Sandbox(clock=clock, seed=1)
    async with sandbox.gateway_client() as gw, sandbox.mutation_client() as feed:
        invoice = await gw.create_invoice(10_000)
        sandbox.pay(invoice.total)          # a customer pays
        clock.advance(30)                   # past the feed's 30 s cache
        rows = await feed.fetch()

Needs the ``sandbox`` extra: ``pip install 'qrispay[sandbox]'``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a test with the modules hidden
    raise ImportError(
        "qrispay.sandbox needs Starlette and uvicorn: pip install 'qrispay[sandbox]'"
    ) from exc

from ._clock import LoopClock, ManualClock, utc_now
from ._errors import SandboxRejection
from ._faults import FAULT_KINDS, Fault, Faults
from ._sandbox import SANDBOX_URL, Sandbox
from ._shared import Stats

__all__ = [
    "FAULT_KINDS",
    "SANDBOX_URL",
    "Fault",
    "Faults",
    "LoopClock",
    "ManualClock",
    "Sandbox",
    "SandboxRejection",
    "Stats",
    "utc_now",
]
