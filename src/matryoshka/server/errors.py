"""Errors and limits of the API: OpenAI's error body, and checking a request's input before any work.

Bad input becomes a 4xx with ``{"error": {"message", "type", "param", "code"}}``; anything unexpected
becomes a bare 500 without a stack trace (the trace goes to the server's log only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.server.schemas import ErrorBody


@dataclass(frozen=True)
class Limits:
    """Per-request limits; beyond them a request is refused with a message, before any work."""

    max_items: int = 256
    max_chars: int = 8192
    max_body_bytes: int = 1 << 20


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
            400, "'input' must be a string or a list of strings (token arrays are not supported)", "input"
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
    return texts


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI's error body; an unexpected one as a bare 500 without a trace."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.kind, exc.headers)

    @app.exception_handler(MatryoshkaError)
    async def user_error(_: Request, exc: MatryoshkaError) -> JSONResponse:
        param = "dimensions" if isinstance(exc, DimensionError) else None
        return error_response(400, str(exc), param, "invalid_value")

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request body"}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", None, "invalid_json")
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        where = f"'{param}': " if param else ""
        return error_response(400, f"invalid request: {where}{first.get('msg')}", param, "invalid_value")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal server error", kind="server_error", code="internal_error")
