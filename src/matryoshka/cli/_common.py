"""What every verb shares: turning user errors into one line on stderr and exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import typer

from matryoshka.errors import MatryoshkaError

F = TypeVar("F", bound=Callable)
USAGE_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE_ERROR)


def user_errors(command: F) -> F:
    """Report :class:`MatryoshkaError` (bad files, models, dims) as a message, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MatryoshkaError as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def parse_dims(text: str) -> list[int]:
    """'384,64,8' -> [384, 64, 8]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MatryoshkaError(f"dims must be comma-separated integers, got {text!r}") from None
