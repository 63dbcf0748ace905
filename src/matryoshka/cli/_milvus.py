"""The ``--backend milvus`` side of `index build|add|info` and `search`: same verbs, a Milvus collection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from matryoshka.errors import MatryoshkaError

BACKENDS = ("local", "milvus")
BACKEND_HELP = "local (an index directory) or milvus (Milvus Lite file or server, see --uri)."
URI_HELP = "Milvus URI: a Milvus Lite file (./vectors.db) or a server http://host:19530."


def check_backend(backend: str, uri: str | None) -> bool:
    """True for milvus (which then needs --uri); refuses unknown backends and a stray --uri."""
    if backend not in BACKENDS:
        raise MatryoshkaError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    if backend == "milvus" and not uri:
        raise MatryoshkaError("--backend milvus needs --uri (a .db file or http://host:19530)")
    if backend == "local" and uri:
        raise MatryoshkaError("--uri is for --backend milvus")
    return backend == "milvus"


def open_milvus(uri: str, collection: str, token: str | None):
    from matryoshka.index import MatryoshkaIndex

    return MatryoshkaIndex.open(uri, backend="milvus", collection=collection, token=token)


def build(
    uri: str,
    collection: str,
    token: str | None,
    model: str | None,
    ids: list[str],
    texts: list[str],
    vectors: np.ndarray | None,
    prefix_dim: int,
    index_type: str,
    batch: int,
) -> None:
    """Create (or reuse, if made for the same model) the collection and insert every row."""
    from matryoshka.index import MatryoshkaIndex

    if vectors is None and model is None:
        from matryoshka.models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    full_dim = None if vectors is None else vectors.shape[1]
    index = MatryoshkaIndex.create(
        uri,
        model if vectors is None else None,
        full_dim,
        backend="milvus",
        collection=collection,
        token=token,
        prefix_dim=prefix_dim,
        index_type=index_type,
    )
    add(index, ids, texts, vectors, batch)
    typer.echo(f"indexed {index.live_rows()} rows -> {uri} collection {collection}", err=True)
    index.close()


def add(index, ids: list[str], texts: list[str], vectors: np.ndarray | None, batch: int) -> None:
    """Insert in slices of ``batch`` texts (encoded with the collection's model when no vectors)."""
    from tqdm import tqdm

    with tqdm(total=len(ids), unit="row", disable=len(ids) < batch) as bar:
        for start in range(0, len(ids), batch):
            stop = min(start + batch, len(ids))
            chunk = None if vectors is None else np.asarray(vectors[start:stop], dtype=np.float32)
            index.add(chunk, texts[start:stop], ids[start:stop])
            bar.update(stop - start)


def shift(first: Path | None, second):
    """With --uri the index path is absent, so the first positional argument is really the second."""
    return (None, str(first)) if second is None and first is not None else (first, second)
