"""Figure 4: the SDK's HTTP overhead on a real loopback socket.

``GatewayClient.get_invoice`` against a bare ``httpx.AsyncClient`` GET of the
same URL (query included), both to the sandbox served by ``sandbox.serve()``
in a thread of this process. Each repetition is a block of calls; SDK and
bare blocks are interleaved, and the figure is the median block.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import attrs
import httpx

from qrispay.sandbox import Sandbox

from ._harness import Figure, Timer, Variant, figure, interleaved

CONCURRENCY = 50

Call = Callable[[], Coroutine[Any, Any, object]]


@attrs.frozen
class Config:
    repeats: int
    sequential_block: int


def _sequential(call: Call, count: int) -> Variant:
    async def block(rep: int) -> float:
        with Timer() as t:
            for _ in range(count):
                await call()
        return t.elapsed / count

    return block


def _concurrent(call: Call, count: int) -> Variant:
    async def block(rep: int) -> float:
        with Timer() as t:
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(call)
        return t.elapsed

    return block


async def run(cfg: Config) -> list[Figure]:
    sandbox = Sandbox(seed=7)
    invoice_id = sandbox.create_invoice(25_000)["invoice_id"]
    with sandbox.serve(port=0) as base_url:
        url = f"{base_url}/api/v1/invoice/status"
        query = {"invoice_id": invoice_id, "apikey": sandbox.api_key}
        async with sandbox.gateway_client(base_url=base_url) as gw, httpx.AsyncClient() as bare:

            async def sdk_call() -> object:
                return await gw.get_invoice(invoice_id)

            async def bare_call() -> object:
                return (await bare.get(url, params=query)).raise_for_status()

            seq = await interleaved(
                {
                    "sdk": _sequential(sdk_call, cfg.sequential_block),
                    "bare": _sequential(bare_call, cfg.sequential_block),
                },
                repeats=cfg.repeats,
                warmup=1,
            )
            conc = await interleaved(
                {
                    "sdk": _concurrent(sdk_call, CONCURRENCY),
                    "bare": _concurrent(bare_call, CONCURRENCY),
                },
                repeats=cfg.repeats,
                warmup=1,
            )
    sequential_name = "get_invoice vs bare GET, sequential"
    concurrent_name = f"get_invoice vs bare GET, {CONCURRENCY} concurrent"
    return [
        figure(sequential_name, seq["sdk"] * 1e6, "us/call", seq["bare"] * 1e6, max_ratio=1.2),
        figure(concurrent_name, conc["sdk"] * 1e3, "ms/batch", conc["bare"] * 1e3, max_ratio=1.2),
    ]


def main(cfg: Config) -> list[Figure]:
    figures: list[Figure] = anyio.run(run, cfg)
    return figures
