"""``GET /v1/events/stream``: the stored events as server-sent events.

Each event is one ``id:`` (the event id) and one ``data:`` line (the event as
JSON, with its ``type`` inside), so ``EventSource.onmessage`` sees them all and
a reconnecting client resumes after the last one with ``Last-Event-ID``.
Without it (or ``?after=``) the stream starts at the first stored event. It
reads the store, so it misses nothing committed by any instance; it ends when
the service stops, so a shutdown never waits on an open stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..webhooks import event_json
from ._routes import seq_after, service

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["stream"]

_BATCH = 100
#: Seconds of silence before a comment line keeps proxies from closing the stream.
KEEPALIVE = 15.0


async def _frames(svc: Service, seq: int) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet_since = anyio.current_time()
    while not svc.stopping and svc.running:
        changed = svc.changed()  # taken before the read, so no commit slips between
        batch = await svc.store.events_after(svc.merchant, seq, _BATCH)
        for event in batch:
            data = json.dumps(event_json(event), separators=(",", ":"), ensure_ascii=False)
            yield f"id: {event.id}\ndata: {data}\n\n".encode()
            seq = event.seq
        if batch:
            quiet_since = anyio.current_time()
        if len(batch) == _BATCH:
            continue
        with anyio.move_on_after(1.0):
            await changed.wait()
        if anyio.current_time() - quiet_since >= KEEPALIVE:
            yield b": keepalive\n\n"
            quiet_since = anyio.current_time()


async def stream(request: Request) -> Response:
    svc = service(request)
    after = request.headers.get("last-event-id") or request.query_params.get("after")
    seq = await seq_after(svc, after)
    return StreamingResponse(
        _frames(svc, seq),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
