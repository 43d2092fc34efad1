"""What the HTTP front refuses before a request reaches a route: slow or oversized headers, too many
connections, a missing bearer token, and errors that would otherwise leave as plain text.

uvicorn bounds a header block only while it is incomplete (h11's `max_incomplete_event_size`) and has
no time limit at all before a request's headers are in: a client that sends one byte a second holds its
connection forever. `GuardedH11Protocol` adds both bounds at the connection, and `HeaderLimit` checks
the complete header block, so one limit holds however the bytes arrive.
"""
from __future__ import annotations

import json

import h11
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.security import http_path_is_open, token_matches

MAX_HEADER_BYTES = 16 * 1024     # request line and headers together (h11's own default for an incomplete block)
HEADER_TIMEOUT_S = 10.0          # from a connection's first byte (or its opening) to the end of its headers
MAX_CONNECTIONS = 1024           # open HTTP connections per server process; more are closed at once


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and a cap on open connections."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_connections = MAX_CONNECTIONS

    @classmethod
    def limited(cls, header_timeout_s: float, max_connections: int) -> type[GuardedH11Protocol]:
        """The protocol class for uvicorn's `http=` setting, with these limits."""
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s, "max_connections": max_connections})

    def connection_made(self, transport) -> None:
        self.header_deadline = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self.arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        self.arm_header_deadline()                # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:     # the headers are in: the request is the app's now
            self.disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_header_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse: 400 as JSON, like every other error (uvicorn sends plain text)."""
        body = json.dumps({"error": f"{msg} (malformed HTTP request line or headers)"}).encode()
        for event in (h11.Response(status_code=400, reason=b"Bad Request", headers=[
                          (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def arm_header_deadline(self) -> None:
        if self.header_deadline is None and self.conn.their_state is h11.IDLE:
            self.header_deadline = self.loop.call_later(self.header_timeout_s, self.headers_too_slow)

    def disarm_header_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class TokenCheck:
    """ASGI middleware: with a token configured, every path `--auth-open` leaves closed needs it (401, JSON)."""

    def __init__(self, app, token: bytes | None, open_names: tuple[str, ...]):
        self.app, self.token, self.open_names = app, token, open_names

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.token and not http_path_is_open(scope["path"], self.open_names):
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not token_matches(authorization, self.token):
                response = JSONResponse({"error": "missing or wrong bearer token (Authorization header)"},
                                        status_code=401)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class HeaderLimit:
    """ASGI middleware: a request whose line and headers pass MAX_HEADER_BYTES gets 431 (JSON), not a route."""

    def __init__(self, app, max_bytes: int = MAX_HEADER_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope["raw_path"]) + len(scope["query_string"]) + \
                sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_bytes:
                response = JSONResponse({"error": f"the request line and headers are over the limit of "
                                                  f"{self.max_bytes:,} bytes"}, status_code=431)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def json_http_error(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own 404 and 405 as `{"error": ...}`, as the KServe v2 protocol answers every error."""
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)
