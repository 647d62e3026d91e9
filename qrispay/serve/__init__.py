"""``qrispay serve``: the Reconciler behind a small authenticated HTTP API with
idempotency keys, an event feed (cursor and server-sent events) and signed
webhooks, for backends in any language. Needs the ``serve`` extra
(Starlette and uvicorn)."""

from ._idempotency import STALE_AFTER
from ._service import Service

__all__ = ["STALE_AFTER", "Service"]
