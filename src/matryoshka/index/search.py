"""Search primitives: pure numpy functions returning ``(D, I)`` like faiss (scores, ids)."""

from __future__ import annotations

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import DimensionError

ROWS_PER_BLOCK = 65536  # bound the (queries x rows) score matrix held at once


def exact_search(
    queries: np.ndarray, vectors: np.ndarray, k: int, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``queries`` over ``vectors``, both cut to ``dim`` first.

    Returns ``(D, I)``: scores and row ids, best first, shape ``(queries, min(k, rows))``.
    """
    queries = np.atleast_2d(queries)
    if queries.shape[1] != vectors.shape[1]:
        raise DimensionError(f"queries have {queries.shape[1]} dims, vectors have {vectors.shape[1]}")
    queries = truncate(queries.astype(np.float32), dim)
    k = min(k, len(vectors))
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), ROWS_PER_BLOCK):
        block = truncate(np.asarray(vectors[start : start + ROWS_PER_BLOCK], dtype=np.float32), dim)
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        ids = np.concatenate(
            [best_ids, np.arange(start, start + len(block))[None].repeat(len(queries), 0)], 1
        )
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores)
        best_scores = np.take_along_axis(scores, top, 1)
        best_ids = np.take_along_axis(ids, top, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)
