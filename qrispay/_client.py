"""What both SDK clients share around their ``HTTPCore``: how they reach their
server (``Connection``), the checks of their arguments, and the lifecycle."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TypeVar

from ._http import Connection, HTTPCore

__all__ = ["ClientBase", "check_client_args"]


def check_client_args(
    credentials: Mapping[str, object], connection: Connection, paths: Mapping[str, str]
) -> None:
    """What every client checks before it is made, in this order."""
    for name, value in credentials.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str")
    base_url: object = connection.base_url
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError("base_url must be an http:// or https:// URL")
    for name, path in paths.items():
        if not path.startswith("/"):
            raise ValueError(f"{name} must start with '/'")
    max_retries: object = connection.max_retries
    if type(max_retries) is not int or max_retries < 0:
        raise ValueError("max_retries must be a non-negative int")
    if connection.deadline is not None and not connection.deadline > 0:
        raise ValueError("deadline must be positive seconds or None")
    if connection.http_client is not None and connection.transport is not None:
        raise ValueError("pass http_client or transport, not both")


class ClientBase:
    """What both SDK clients share around their ``HTTPCore``: the checks of
    their arguments, and the lifecycle."""

    _core: HTTPCore

    def __init__(
        self,
        connection: Connection,
        *,
        credentials: Mapping[str, object],
        secrets: Mapping[str, str],
        paths: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
    ):
        check_client_args(credentials, connection, paths or {})
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError("rng must be a random.Random")
        self._core = HTTPCore(connection, secrets, rng=rng)

    @property
    def base_url(self) -> str:
        return self._core.base_url

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client this object made (never one passed in)."""
        await self._core.aclose()


_C = TypeVar("_C", bound=ClientBase)
