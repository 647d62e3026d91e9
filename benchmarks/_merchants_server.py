"""The loopback feed for figure 6, run in its own process: one sandbox per merchant.

``python -m benchmarks._merchants_server TTL`` prints its base URL, then serves
until terminated. Merchant ``M`` authenticates as ``auth-M`` / ``token-M``; its
sandbox is made on its first request. A payer thread keeps adding credits,
so the answers keep changing as real feeds do.

In its own process so that the client's CPU and GIL are the client's alone,
as they would be against the real API.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from qrispay.sandbox import Sandbox
from qrispay.sandbox._server import _config

PAYMENTS_PER_SECOND = 20


def credentials(merchant: str) -> tuple[str, str]:
    """``(auth, token)`` of ``merchant``."""
    return f"auth-{merchant}", f"token-{merchant}"


class Router:
    """An ASGI app passing each request to its merchant's sandbox."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.sandboxes: dict[str, Sandbox] = {}
        self.lock = threading.Lock()

    def sandbox(self, merchant: str) -> Sandbox:
        with self.lock:
            found = self.sandboxes.get(merchant)
            if found is None:
                auth, token = credentials(merchant)
                found = Sandbox(
                    ttl=self.ttl,
                    seed=len(self.sandboxes),
                    auth=auth,
                    merchant=merchant,
                    token=token,
                )
                self.sandboxes[merchant] = found
            return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        merchant = query.get("merchant", ["-"])[0]
        await self.sandbox(merchant).app(scope, receive, send)

    def pay_forever(self) -> None:
        rng = random.Random(6)
        while True:
            time.sleep(1 / PAYMENTS_PER_SECOND)
            with self.lock:
                merchants = list(self.sandboxes.values())
            if merchants:
                rng.choice(merchants).pay(rng.randrange(10_000, 1_000_000))


def main() -> None:
    router = Router(float(sys.argv[1]))
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that
    # say so, and without it every keep-alive answer waits out a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)  # before the URL is printed, so the first connection finds it
    config = _config(router, backlog=4096)  # the sandbox server's own settings
    threading.Thread(target=router.pay_forever, daemon=True).start()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
