"""Safe defaults: loopback unless told otherwise, bearer keys, and request size limits.

A server reachable from other machines must have an API key; binding a non-loopback address without
one is refused unless the operator says ``--insecure``.
"""

from __future__ import annotations

import ipaddress
import json
import secrets

from matryoshka.errors import MatryoshkaError

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
