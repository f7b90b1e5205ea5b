"""The API's outermost layer, as plain ASGI (Starlette's ``BaseHTTPMiddleware`` runs each request in a task of
its own and copies the response through a stream: it cost more than scoring a transaction): a body-size limit
by ``Content-Length``, a 500 with an incident id instead of a stack trace, and the latency histogram by route
and status."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("serving.api")


class Guard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, observe: Callable[[str, str, int, float], None]):
        self.app, self.max_body_bytes, self.observe = app, max_body_bytes, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        sent = {"status": 0}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            detail = {"detail": f"request body over {self.max_body_bytes} bytes"}
            await JSONResponse(detail, status.HTTP_413_CONTENT_TOO_LARGE)(scope, receive, sending)
        else:
            try:
                await self.app(scope, receive, sending)
            except Exception:  # never a stack trace to the caller: an id to find it in the log
                incident = uuid.uuid4().hex[:12]
                log.exception("unhandled error %s on %s %s", incident, scope["method"], scope["path"])
                if not sent["status"]:
                    await JSONResponse({"detail": "internal error", "incident": incident}, 500)(scope, receive, sending)
                sent["status"] = 500
        route = getattr(scope.get("route"), "path", "unmatched")
        self.observe(scope["method"], route, sent["status"], time.perf_counter() - t0)
