"""Safe defaults: loopback unless told otherwise, bearer keys, and request size and time limits.

A server reachable from other machines must have an API key; binding a non-loopback address without
one is refused unless the operator says ``--insecure``. Headers are bounded in bytes, bodies in bytes
and in time, idle connections in time, so no client holds the server's memory or sockets for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from matryoshka.errors import MatryoshkaError
from matryoshka.server.errors import Limits

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None, insecure: bool = False) -> None:
    """Refuse to expose the server beyond this machine without a key (unless ``insecure``)."""
    if not is_loopback(host) and not api_key and not insecure:
        raise MatryoshkaError(
            f"refusing to listen on {host} without an API key: pass --api-key (or set "
            "MATRYOSHKA_API_KEY), bind 127.0.0.1, or pass --insecure to allow it anyway"
        )


def check_api_key(api_key: str | None) -> None:
    """Refuse a key that is set but empty or blank (``MATRYOSHKA_API_KEY=`` would otherwise mean "no key")."""
    if api_key is not None and not api_key.strip():
        raise MatryoshkaError("the API key is empty: set MATRYOSHKA_API_KEY to a secret, or leave it unset")
    if api_key is not None and api_key != api_key.strip():
        raise MatryoshkaError("the API key starts or ends with whitespace, which no client can send back")


def uvicorn_options(limits: Limits) -> dict:
    """uvicorn settings enforcing ``limits`` on connections: the serve command and the tests use these."""
    return {
        "http": BoundedH11Protocol,  # httptools has no limit on header size: h11 has one
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_keep_alive": limits.keep_alive_s,
    }


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request head it refuses with OpenAI's error body (431 when
    it is over the size limit, else 400) instead of a plain-text 400."""

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        if len(buffered) > self.config.h11_max_incomplete_event_size:
            status, message, code = (
                431,
                f"request headers are larger than {self.config.h11_max_incomplete_event_size} bytes",
                "headers_too_large",
            )
        else:
            status, message, code = 400, "invalid HTTP request", "invalid_http"
        body = error_json(message, code)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body)):
                self.transport.write(self.conn.send(event))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            pass  # the head was too broken to answer at all: just close
        self.transport.close()


def bearer_ok(header: str | None, api_key: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer KEY`` header."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def error_json(message: str, code: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class BodySizeLimit:
    """ASGI middleware: answer 413 to bodies over ``max_bytes``, declared or streamed, before parsing them."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        received = 0
        over = False  # set once the body passed the limit; whatever the app answers becomes a 413
        replaced = False

        async def limited_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message):
            nonlocal replaced
            if over:
                if not replaced:
                    replaced = True
                    await self._too_large(send)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not replaced:
                await self._too_large(send)

    async def _too_large(self, send) -> None:
        body = error_json(f"request body is larger than {self.max_bytes} bytes", "request_too_large")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyReadTimeout:
    """ASGI middleware: a body not fully received ``timeout_s`` after its headers gets 408, and its
    connection is closed; a client that stops mid-body no longer holds a connection for ever.

    As with :class:`BodySizeLimit`, whatever the app answers once the time is up becomes the 408 (FastAPI
    turns an exception from ``receive`` into its own 400).
    """

    def __init__(self, app, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = False  # the whole body is in: later receives wait for a disconnect, untimed
        expired = False
        replaced = False

        async def timed_receive():
            nonlocal complete, expired
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                expired = True
                raise _BodyTimeout from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        async def guarded_send(message):
            nonlocal replaced
            if expired:
                if not replaced:
                    replaced = True
                    await self._timed_out(send)
                return
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except _BodyTimeout:
            if not replaced:
                await self._timed_out(send)

    async def _timed_out(self, send) -> None:
        body = error_json(f"the request body did not arrive within {self.timeout_s:g}s", "request_timeout")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 408, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTimeout(Exception):
    pass


class LoadShedding:
    """ASGI middleware: while the engine's queue is full, answer encoding routes 503 before reading bodies.

    The engine refuses what does not fit anyway; this makes the refusal cost no parsing, so an
    overloaded server spends its time on the requests it admitted.
    """

    def __init__(self, app, engine, paths: tuple[str, ...] = ("/v1/embeddings", "/v1/search")) -> None:
        self.app = app
        self.engine = engine
        self.paths = paths

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] in self.paths
            and self.engine.admitted >= self.engine.max_queue
        ):
            body = error_json(
                f"the server is busy ({self.engine.admitted} texts queued, limit {self.engine.max_queue})",
                "overloaded",
                "server_busy",
            )
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
