"""Serving a ``Service`` with uvicorn in the foreground, on a socket bound
first (so ``--port 0`` can say which port it got), until SIGINT or SIGTERM.

A signal stops it gracefully within a few seconds: open event streams end at
once (``Service.stopping``), the listening socket closes, requests under way
get ``timeout_graceful_shutdown`` seconds, then the Reconciler stops and
releases its lease. Exiting after a signal is a clean stop, not a re-raised
signal.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator

import anyio
import uvicorn

from ._service import Service

__all__ = ["bind", "serve"]

#: Seconds requests under way get once a stop was asked.
GRACE = 3.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, svc: Service) -> None:
        super().__init__(config)
        self._svc = svc

    def handle_exit(self, sig: int, frame: object) -> None:
        self._svc.stopping = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own re-raises the signal after the shutdown; a stop asked
        # for is a clean exit here.
        before = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


async def serve(svc: Service, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    """Run ``svc`` (its first poll must succeed: wrong credentials raise here),
    then serve its app on ``sock`` until a signal; asyncio only (uvicorn)."""
    config = uvicorn.Config(
        svc.app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        http="auto",  # httptools when installed (faster), else h11
        loop="asyncio",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(GRACE),
    )
    server = _Server(config, svc)
    async with anyio.create_task_group() as tasks:
        await tasks.start(svc.run)

        async def announce() -> None:
            # uvicorn has no event for "started", only the flag.
            while not server.started and not server.should_exit:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            if server.started:
                on_ready()

        tasks.start_soon(announce)
        try:
            await server.serve(sockets=[sock])
        finally:
            svc.stopping = True
            tasks.cancel_scope.cancel()
