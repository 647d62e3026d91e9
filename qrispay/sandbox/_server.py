"""Serving the sandbox's ASGI app with uvicorn on a loopback socket.

Only loopback addresses are ever bound: the sandbox has fixed fake
credentials and must never be reachable from another machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

__all__ = ["check_loopback", "run", "serving"]


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``), else ``ValueError``."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the sandbox serves loopback only; {host!r} is not an IP") from None
    if not address.is_loopback:
        raise ValueError(f"the sandbox serves loopback only, not {host}")
    return host


def _config(app: Any, **kw: Any) -> uvicorn.Config:
    # log_config=None: never reconfigure the user's logging. No lifespan, no
    # websockets: the app needs neither (and importing websockets warns).
    return uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        http="h11",
        loop="asyncio",
        server_header=False,
        proxy_headers=False,
        **kw,
    )


@contextlib.contextmanager
def serving(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` in a background thread; yield its base URL; stop on exit."""
    host = check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every answer on a kept-alive connection waits ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        server = uvicorn.Server(_config(app, timeout_graceful_shutdown=1))
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"qrispay-sandbox-{bound_port}",
            daemon=True,
        )
        thread.start()
        try:
            deadline = time.monotonic() + startup_timeout
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the sandbox server stopped while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError("the sandbox server did not start in time")
                time.sleep(0.005)
            url_host = f"[{host}]" if ":" in host else host
            yield f"http://{url_host}:{bound_port}"
        finally:
            server.should_exit = True
            thread.join(timeout=startup_timeout)
    finally:
        sock.close()


def run(app: Any, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``app`` in the foreground until interrupted (Ctrl-C)."""
    host = check_loopback(host)
    uvicorn.Server(_config(app, host=host, port=port)).run()
