"""One index protocol, two backends, chosen by the target: a directory is a local index
(:class:`~matryoshka.index.local.MatryoshkaIndex`), a ``.db`` file or an ``http(s)://`` URI is Milvus
(:class:`~matryoshka.index.milvus.MilvusIndex`: Milvus Lite, or a server or cluster)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from matryoshka.errors import MatryoshkaError

if TYPE_CHECKING:
    from matryoshka.index.stages import SearchResult, Stage


class Index(Protocol):
    """What every backend does, with the same signatures and the same :class:`SearchResult`."""

    backend: str

    @classmethod
    def create(
        cls, target: str | os.PathLike, model=None, full_dim: int | None = None, **options
    ) -> Index: ...

    @classmethod
    def open(cls, target: str | os.PathLike, **options) -> Index: ...

    def add(
        self,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
    ) -> int: ...

    def delete(self, ids: Sequence[str]) -> list[str]: ...

    def texts_of(self, ids: Sequence[str]) -> dict[str, str | None]: ...

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        funnel: str | list[Stage] | None = None,
        hnsw: bool = False,
    ) -> SearchResult: ...

    def info(self) -> dict: ...

    def close(self) -> None: ...


def is_milvus(target: str | os.PathLike) -> bool:
    from matryoshka.index.milvus import is_server

    return is_server(target) or str(target).endswith(".db")


def backend_for(target: str | os.PathLike) -> type[Index]:
    if is_milvus(target):
        from matryoshka.index.milvus import MilvusIndex

        return MilvusIndex
    from matryoshka.index.local import MatryoshkaIndex

    return MatryoshkaIndex


def open_index(target: str | os.PathLike, **options) -> Index:
    """Open the index at ``target`` (a directory, a Milvus Lite ``.db`` file or a Milvus URI)."""
    return _checked(backend_for(target).open, target, options)(target, **options)


def create_index(target: str | os.PathLike, model=None, full_dim: int | None = None, **options) -> Index:
    """A new index at ``target`` for ``model``'s vectors (or bare ``full_dim`` vectors); ``options``
    are the backend's (local: chunks, dtype, rotation...; Milvus: prefix_dim, index_type...)."""
    return _checked(backend_for(target).create, target, options)(target, model, full_dim, **options)


def _checked(method: Callable[..., Index], target: str | os.PathLike, options: dict) -> Callable[..., Index]:
    """``method``, or a clear error naming the ``options`` the target's backend does not take."""
    if unknown := sorted(set(options) - set(inspect.signature(method).parameters)):
        kind = "Milvus" if is_milvus(target) else "a local index directory"
        raise MatryoshkaError(f"{', '.join(unknown)}: not an option of {kind} ({target})")
    return method
