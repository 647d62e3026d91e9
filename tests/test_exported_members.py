"""Every public name is exported from ``qrispay``, and ``__all__`` says exactly which.

In the style of httpx's ``test_exported_members.py``: a name defined or imported
at the top of the package is either in ``__all__`` or private, so nothing is
public by accident and nothing promised is missing.
"""

from __future__ import annotations
import __future__

import types

import pytest

import qrispay
from qrispay import qris, sandbox

#: The public API, as the contract lists it (docs/design.md, "Layout", and README).
PROMISED = {
    # models
    "Balance",
    "InvoiceStatus",
    "Invoice",
    "CancelResult",
    "WithdrawalStatus",
    "Withdrawal",
    "WithdrawalPage",
    "MutationType",
    "Mutation",
    "MutationBatch",
    "RejectedRow",
    "JAKARTA",
    # stores
    "Store",
    "MemoryStore",
    "SQLiteStore",
    "PostgresStore",
    "StoreError",
    "StoreSchemaError",
    "ReplaySubscription",
    # clients
    "GatewayClient",
    "GatewayEndpoints",
    "MutationClient",
    "Payouts",
    # errors
    "QrispayError",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "InvoiceNotCancellableError",
    "APIConnectionError",
    "APITimeoutError",
    "ResponseDecodeError",
    "OutcomeUnknownError",
    "TotalConflictError",
    "LeaseLostError",
    "InvoiceStateConflictError",
    "AllocationError",
    "InvoiceExpiredError",
    "InvoiceCancelledError",
    # engine and events
    "ReconciliationEngine",
    "Event",
    "EVENT_KINDS",
    "CREDIT_VERDICTS",
    "InvoicePaid",
    "InvoiceExpired",
    "InvoiceCancelled",
    "LatePayment",
    "DuplicatePayment",
    "UnmatchedCredit",
    "AmbiguousCredit",
    "UnknownRow",
    "RejectedRows",
    "BalanceGap",
    # the loop
    "PollPolicy",
    "Reconciler",
}


def _public_members(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


def test_all_imports_are_exported() -> None:
    assert set(qrispay.__all__) - {"__version__"} == _public_members(qrispay)


def test_all_has_no_repeats() -> None:
    assert len(qrispay.__all__) == len(set(qrispay.__all__))


def test_every_promised_name_is_exported() -> None:
    assert set(qrispay.__all__) >= PROMISED


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_exported_name_resolves(name: str) -> None:
    assert getattr(qrispay, name) is not None


def test_version_is_exported() -> None:
    assert "__version__" in qrispay.__all__
    assert isinstance(qrispay.__version__, str)


@pytest.mark.parametrize("module", [sandbox, qris], ids=["sandbox", "qris"])
def test_submodule_all_names_resolve(module: types.ModuleType) -> None:
    names = module.__all__
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), name


def test_sandbox_exports_the_simulator() -> None:
    assert {"Sandbox"} <= set(sandbox.__all__)


def test_qris_exports_the_payload_functions() -> None:
    assert {"crc16", "parse", "to_dynamic", "Payload", "QrisError"} <= set(qris.__all__)


def test_every_event_kind_names_its_class() -> None:
    for kind, cls in qrispay.EVENT_KINDS.items():
        assert cls.kind == kind
        assert getattr(qrispay, cls.__name__) is cls
    assert set(qrispay.CREDIT_VERDICTS) <= set(qrispay.EVENT_KINDS.values())
