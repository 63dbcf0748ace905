"""Optional approximate first stage: an HNSW graph (faiss) over a short prefix only.

A graph over 32 dims is built and held far more cheaply than one over all 384; the funnel's later
stages re-rank its shortlist at longer prefixes, so recall comes back from the re-ranking.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.index.store import atomic_write

if TYPE_CHECKING:
    from matryoshka.index.stages import Stage


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MatryoshkaError("HNSW search needs faiss: pip install faiss-cpu") from None
    return faiss


def build_graph(prefix: np.ndarray, neighbours: int = 32, ef_construction: int = 40):
    """faiss IndexHNSWFlat (inner product) over the re-normalised prefix rows."""
    faiss = _faiss()
    graph = faiss.IndexHNSWFlat(prefix.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = ef_construction
    graph.add(np.ascontiguousarray(prefix, dtype=np.float32))
    return graph


def save_graph(graph, path: Path) -> None:
    atomic_write(path, _faiss().serialize_index(graph).tobytes())


def load_graph(path: Path, prefix: np.ndarray):
    """Read a saved graph; rows appended since it was built are added to it in memory."""
    faiss = _faiss()
    try:
        graph = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise MatryoshkaError(f"cannot read HNSW graph {path}: {exc}") from None
    if graph.d != prefix.shape[1] or graph.ntotal > len(prefix):
        raise MatryoshkaError(f"HNSW graph {path} does not match the index (rebuild it)")
    if graph.ntotal < len(prefix):
        graph.add(np.ascontiguousarray(prefix[graph.ntotal :]))
    return graph


def graph_candidates(graph, queries: np.ndarray, stage: Stage, deleted: np.ndarray) -> np.ndarray:
    """Approximate top ``stage.keep`` rows at the stage's prefix (``-1`` for deleted or missing rows)."""
    from matryoshka.dims import truncate

    graph.hnsw.efSearch = max(stage.keep, 16)
    _, rows = graph.search(np.ascontiguousarray(truncate(queries, stage.dim)), stage.keep)
    if len(deleted):
        rows = np.where(np.isin(rows, deleted), -1, rows)
    return rows
