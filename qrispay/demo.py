"""``qrispay demo`` from Python: ``await run_demo()`` (it lives in ``qrispay.cli.demo``)."""

from __future__ import annotations

from .cli.demo import PAYERS, VERDICTS, DemoResult, Payer, run_demo

__all__ = ["PAYERS", "VERDICTS", "DemoResult", "Payer", "run_demo"]

if __name__ == "__main__":  # pragma: no cover
    import anyio

    raise SystemExit(0 if anyio.run(lambda: run_demo()).ok else 1)
