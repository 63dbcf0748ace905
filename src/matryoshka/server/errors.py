"""Errors and limits of the API: OpenAI's error body, and checking a request's input before any work.

Bad input becomes a 4xx with ``{"error": {"message", "type", "param", "code"}}``, whichever layer
refuses it (our handlers, pydantic, FastAPI's body parser, the router); anything unexpected becomes a
500 with the same body and no stack trace (the trace goes to the server's log only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match

from matryoshka.datasets import lone_surrogate
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.server.schemas import ErrorBody

log = logging.getLogger("matryoshka.server")


@dataclass(frozen=True)
class Limits:
    """Per-request limits; beyond them a request is refused with a message, before any work."""

    max_items: int = 256
    max_chars: int = 8192
    max_body_bytes: int = 1 << 20
    max_header_bytes: int = 32 * 1024  # request line plus headers; beyond: 431 and the connection closed
    body_timeout_s: float = 30.0  # a body not fully received this long after its headers: 408
    keep_alive_s: float = 30.0  # idle keep-alive connections live this long (uvicorn's 5 s races clients)


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
    headers: dict | None = None,
) -> JSONResponse:
    body = ErrorBody(error={"message": message, "type": kind, "param": param, "code": code})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def texts_from_input(value: Any, limits: Limits) -> list[str]:
    """The request's ``input`` as a list of non-empty strings within the limits, or a 400 saying why."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise ApiError(
            400, "'input' must be a string, a list of strings, or token arrays (lists of ints)", "input"
        )
    if not texts:
        raise ApiError(400, "'input' must not be empty", "input")
    if len(texts) > limits.max_items:
        raise ApiError(
            400,
            f"'input' has {len(texts)} items; at most {limits.max_items} per request",
            "input",
            "too_many_inputs",
        )
    for position, text in enumerate(texts):
        if not text.strip():
            raise ApiError(400, f"'input[{position}]' is empty", "input")
        if len(text) > limits.max_chars:
            raise ApiError(
                400,
                f"'input[{position}]' has {len(text)} characters; at most {limits.max_chars}",
                "input",
                "input_too_long",
            )
        surrogate = lone_surrogate(text)
        if surrogate is not None:
            raise ApiError(
                400,
                f"'input[{position}]' is not valid Unicode: lone surrogate U+{ord(text[surrogate]):04X} "
                f"at character {surrogate} (JSON's \\uD800-\\uDFFF escapes must come in pairs)",
                "input",
                "invalid_unicode",
            )
    return texts


def install_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI or Starlette raises leaves as OpenAI's error body (unexpected ones: see
    :class:`CatchUnexpected`, which must wrap the app, so that a 500 keeps the connection usable)."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.kind, exc.headers)

    @app.exception_handler(MatryoshkaError)
    async def user_error(_: Request, exc: MatryoshkaError) -> JSONResponse:
        param = "dimensions" if isinstance(exc, DimensionError) else None
        return error_response(400, str(exc), param, "invalid_value")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", None, "invalid_json")
        content_type = request.headers.get("content-type", "")
        if tuple(first.get("loc", ())) == ("body",) and content_type and not is_json(content_type):
            return error_response(
                415,
                f"the request body must be JSON sent as 'Content-Type: application/json', "
                f"not {content_type!r}",
                None,
                "unsupported_content_type",
            )
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        where = f"'{param}': " if param else ""
        return error_response(400, f"invalid request: {where}{first.get('msg')}", param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """The router's 404 and 405, and FastAPI's "error parsing the body", said precisely."""
        cause = exc.__cause__
        headers = dict(exc.headers or {})
        status = exc.status_code
        allowed = methods_of(request) if status == 404 else None
        if allowed:  # an API route of another method: the page's mount at "/" answered 404 for it
            status, headers = 405, {"Allow": ", ".join(allowed)}
        if status == 404:
            message, code = f"no such route: {request.method} {request.url.path}", "not_found"
        elif status == 405:
            allowed_text = headers.get("allow") or headers.get("Allow")
            message = f"method {request.method} is not allowed on {request.url.path}"
            message += f" (allowed: {allowed_text})" if allowed_text else ""
            code = "method_not_allowed"
        elif isinstance(cause, RecursionError):
            message, code = "the request body is nested too deeply to parse", "invalid_json"
        elif isinstance(cause, UnicodeDecodeError):
            message = f"the request body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
            code = "invalid_json"
        else:
            message, code = str(exc.detail), None
        kind = "invalid_request_error" if status < 500 else "server_error"
        return error_response(status, message, None, code, kind, headers or None)


def methods_of(request: Request) -> list[str]:
    """The methods of the app's routes whose path matches ``request``'s (none: the path is unknown)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] == Match.PARTIAL:
            methods |= route.methods
    return sorted(methods)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class CatchUnexpected:
    """ASGI middleware: an unexpected exception becomes a 500 with OpenAI's error body, and the
    exception stops here (logged with its trace) instead of reaching the server.

    Starlette's own handler answers and then re-raises, and uvicorn drops a connection whose app raised
    after answering, without ``Connection: close``: a keep-alive client's next request then fails with
    "connection reset". Stopping the exception keeps the connection as good as after any 4xx.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half an answer went out: only closing the connection is honest now
            response = error_response(500, "internal server error", None, "internal_error", "server_error")
            await response(scope, receive, send)
