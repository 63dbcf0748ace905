"""Search primitives: pure numpy functions returning ``(D, I)`` like faiss (scores, ids)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate, validate_dim
from matryoshka.errors import DimensionError
from matryoshka.index.stages import Stage, StageStats
from matryoshka.quantize import BinaryCodes, Int8Codes, score

if TYPE_CHECKING:
    from matryoshka.index.store import Store

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

    def score_block(start: int, stop: int) -> np.ndarray:
        return queries @ truncate(np.asarray(vectors[start:stop], dtype=np.float32), dim).T

    return blockwise_top_k(score_block, len(vectors), ROWS_PER_BLOCK, len(queries), k)


def blockwise_top_k(
    score_block: Callable[[int, int], np.ndarray], rows: int, block_rows: int, queries: int, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``keep`` per query over the score blocks ``score_block(start, stop)`` of ``rows`` rows,
    merged as they come, so only one block's score matrix is held at a time."""
    best_scores = np.full((queries, 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((queries, 0), dtype=np.int64)
    for start in range(0, rows, block_rows):
        block_scores, columns = top_k(score_block(start, min(start + block_rows, rows)), keep)
        best_scores = np.concatenate([best_scores, block_scores], axis=1)
        best_rows = np.concatenate([best_rows, columns + start], axis=1)
        if start:
            best_scores, kept = top_k(best_scores, keep)
            best_rows = np.take_along_axis(best_rows, kept, 1)
    return best_scores, best_rows


# ---- funnel search over an index Store ------------------------------------------------------------
# A stage scans every row (the first) or re-scores the previous stage's shortlist (the others) at one
# prefix dim in one precision, and keeps the best ``keep``. Prefix scores follow ``truncate``: the query
# prefix and each row's prefix are re-normalised, so a stage at dim d ranks like exact_search(dim=d).

SCAN_ROWS = 262144  # rows scored per block in a full scan: bounds the (queries x rows) matrix
CODE_SCAN_ROWS = 32768  # int8 and binary blocks are decoded to float32 before scoring


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row of a score matrix, best first: ``(scores, columns)``."""
    k = min(k, scores.shape[1])
    if scores.size >= 1 << 16:
        import torch

        values, columns = torch.topk(torch.from_numpy(np.ascontiguousarray(scores)), k, dim=1)
        return values.numpy(), columns.numpy()
    if scores.shape[1] > k:
        columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        columns = np.broadcast_to(np.arange(k), scores.shape)
    # broadcast row indexing: faster than take_along_axis on these small matrices
    lines = np.arange(len(scores))[:, None]
    picked = scores[lines, columns]
    order = np.argsort(-picked, axis=1, kind="stable")
    return picked[lines, order], columns[lines, order]


def similarities(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``queries @ rows.T``; one query goes through a matrix-vector product, which BLAS runs far faster
    than a one-row matrix product."""
    if len(queries) == 1:
        return (rows @ queries[0])[None]
    return queries @ rows.T


def _prefix_norms(store: Store, rows: np.ndarray | slice, dim: int) -> np.ndarray:
    """Norm of each row's first ``dim`` stored coordinates (from chunk energies when dim ends a chunk)."""
    ends = [end for _, end in store.chunks]
    if dim in ends:
        energy = store.energy()
        energy = energy[rows] if isinstance(rows, slice) else energy.take(rows, axis=0)
        norms = np.sqrt(energy[:, : ends.index(dim) + 1].sum(axis=1))
    else:
        norms = np.linalg.norm(store.read_prefix(rows, dim), axis=1)
    return np.where(norms == 0, 1, norms).astype(np.float32)


def _check_codes(store: Store, stage: Stage) -> None:
    limit = store.manifest["int8_dim"] if stage.precision == "int8" else store.manifest["binary_dim"]
    if stage.dim > limit:
        raise DimensionError(f"{stage.precision} codes cover {limit} dims; stage {stage} needs {stage.dim}")
    if stage.precision == "binary" and stage.dim % 8 and stage.dim != limit:
        raise DimensionError(f"binary stages need a dim that is a multiple of 8, got {stage.dim}")


def score_rows(
    store: Store,
    queries: np.ndarray,
    rows: np.ndarray | slice,
    stage: Stage,
    resident: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Scores ``(queries, rows)`` of full-dim unit ``queries`` against ``rows`` at the stage's dim and
    precision, and the bytes of stored data read."""
    dim = stage.dim
    query_prefix = truncate(queries, dim)
    if stage.precision == "float":
        if resident is not None:
            block = resident[rows]
            return similarities(query_prefix, block), block.nbytes
        block = truncate(store.read_prefix(rows, dim))
        return similarities(query_prefix, block), block.size * np.dtype(store.manifest["dtype"]).itemsize
    _check_codes(store, stage)
    if stage.precision == "int8":
        starts, steps = store.int8_ranges()
        codes = Int8Codes(np.asarray(store.int8_codes()[rows, :dim]), starts[:dim], steps[:dim])
        return score(query_prefix, codes) / _prefix_norms(store, rows, dim), codes.codes.nbytes
    codes = BinaryCodes(np.asarray(store.binary_codes()[rows, : -(-dim // 8)]), dim)
    return score(query_prefix, codes), codes.bits.nbytes


def scan(
    store: Store, queries: np.ndarray, stage: Stage, resident: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """First stage: score every live row in blocks, keep the best ``stage.keep`` per query."""
    if stage.precision == "binary":
        return hamming_scan(store, queries, stage)
    deleted, read = store.deleted_rows(), [0]

    def score_block(start: int, stop: int) -> np.ndarray:
        scores, block_bytes = score_rows(store, queries, slice(start, stop), stage, resident)
        read[0] += block_bytes
        scores[:, deleted[(deleted >= start) & (deleted < stop)] - start] = -np.inf
        return scores

    block_rows = SCAN_ROWS if stage.precision == "float" else CODE_SCAN_ROWS
    best_scores, best_rows = blockwise_top_k(score_block, store.rows, block_rows, len(queries), stage.keep)
    alive = np.isfinite(best_scores)
    return np.where(alive, best_scores, -np.inf), np.where(alive, best_rows, -1), read[0]


def hamming_scan(store: Store, queries: np.ndarray, stage: Stage) -> tuple[np.ndarray, np.ndarray, int]:
    """Binary first stage: every live row ranked by the Hamming distance between its sign code and the
    query's (faiss' popcount kernel, no decoding), scored ``1 - 2 * hamming / dim``: the cosine of the
    two +-1 sign vectors."""
    import faiss

    _check_codes(store, stage)
    codes = store.binary_codes(stage.dim)
    deleted = store.deleted_rows()
    keep = min(stage.keep + len(deleted), store.rows)
    if keep == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), 0
    # the sign of a prefix coordinate does not depend on re-normalisation, so no truncate() here
    query_codes = np.packbits(queries[:, : stage.dim] > 0, axis=1)
    # faiss' counting "mc" kernel in blocks of 8 queries: the fastest variant here (bench/search.py)
    with few_threads(faiss, len(query_codes)):
        found = [
            faiss.knn_hamming(query_codes[start : start + 8], codes, keep, variant="mc")
            for start in range(0, len(query_codes), 8)
        ]
    distances, rows = (np.concatenate(parts) for parts in zip(*found, strict=True))
    scores = 1 - distances.astype(np.float32) * (2 / stage.dim)
    if len(deleted):
        scores[np.isin(rows, deleted)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, : stage.keep]
        scores, rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
        rows[~np.isfinite(scores)] = -1
    return scores, rows, codes.nbytes


@contextmanager
def few_threads(faiss, queries: int) -> Iterator[None]:
    """Run faiss on one thread for a handful of queries: OpenMP threads waking for one scan cost more
    than they share, worst on a loaded machine, while batches keep every thread."""
    if queries >= 16:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def gathered_scores(
    store: Store,
    queries: np.ndarray,
    candidates: np.ndarray,
    stage: Stage,
    resident: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Float or int8 scores ``(queries, shortlist)`` of each query against its own shortlisted rows
    only (gathers and matrix-vector products, never every query against every shortlisted row),
    divided by the rows' prefix norms from the stored chunk energies; and the bytes read. Pads (-1)
    gather the last row; the caller masks them. ``resident``: the in-memory re-normalised float32
    prefix at ``stage.dim`` (``MatryoshkaIndex.load``), gathered instead of the float16 chunks."""
    rows = candidates.ravel()
    query_prefix = truncate(queries, stage.dim)
    shape = candidates.shape
    if resident is not None and stage.precision == "float":
        return _resident_dots(resident, query_prefix, candidates), candidates.size * resident.shape[1] * 4
    if stage.precision == "int8":  # value = start + step * (code + 128), per coordinate
        _check_codes(store, stage)
        starts, steps = (values[: stage.dim] for values in store.int8_ranges())
        codes = store.int8_codes().take(rows, axis=0)[:, : stage.dim].astype(np.float32)
        dots = _row_dots(codes, query_prefix * steps, shape)
        dots += (query_prefix @ (starts + 128 * steps))[:, None]
        read = codes.size
    else:
        dots, start, read = np.zeros(shape, np.float32), 0, 0
        for chunk, used in store.chunk_parts(stage.dim):
            # take() gathers rows faster than fancy indexing
            part = store.to_float32(chunk.take(rows, axis=0)[:, :used])
            dots += _row_dots(part, query_prefix[:, start : start + used], shape)
            start += used
            read += part.size * chunk.itemsize
    return dots / _prefix_norms(store, rows, stage.dim).reshape(shape), read


def _resident_dots(resident: np.ndarray, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each query's dot with its own candidate rows of the unit-norm ``resident`` prefix, read in place
    by faiss (no gathered copy).
    Pads (-1) read row 0; the caller masks them."""
    import faiss

    resident = np.ascontiguousarray(resident, dtype=np.float32)  # load_prefix's arrays already are
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(np.maximum(candidates, 0), dtype=np.int64)
    dots = np.empty(ids.shape, np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(dots),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(resident),
        faiss.swig_ptr(ids),
        resident.shape[1],
        len(queries),
        ids.shape[1],
    )
    return dots


def _row_dots(gathered: np.ndarray, queries: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Dot product of each gathered row (``shape[0] * shape[1]`` rows, query-major) with its query."""
    if shape[0] == 1:
        return (gathered @ queries[0])[None]
    return np.matmul(gathered.reshape(*shape, -1), queries[:, :, None])[..., 0]


def rerank(
    store: Store,
    queries: np.ndarray,
    candidates: np.ndarray,
    stage: Stage,
    resident: dict[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Later stage: re-score only the shortlisted rows (``-1`` pads), keep the best ``stage.keep``;
    from a resident prefix of ``stage.dim`` when one is held (see :func:`funnel_search`)."""
    if not (candidates >= 0).any():
        return np.full(candidates.shape, -np.inf, np.float32), candidates, 0
    if stage.precision != "binary":
        held = (resident or {}).get(stage.dim)
        scores, read = gathered_scores(store, queries, candidates, stage, held)
    else:  # sign codes: score the distinct shortlisted rows once, then pick each query's own
        unique, inverse = np.unique(candidates[candidates >= 0], return_inverse=True)
        positions = np.zeros(candidates.shape, dtype=np.int64)
        positions[candidates >= 0] = inverse
        all_scores, read = score_rows(store, queries, unique, stage)  # (queries, unique rows)
        scores = np.take_along_axis(all_scores, positions, 1)
    scores = scores.astype(np.float32, copy=False)
    scores[candidates < 0] = -np.inf
    best, columns = top_k(scores, stage.keep)
    rows = candidates[np.arange(len(candidates))[:, None], columns]
    rows[~np.isfinite(best)] = -1
    return best, rows, read


def load_prefix(store: Store, dim: int) -> np.ndarray:
    """The ``truncate``d float32 prefix of every row, read chunk by chunk: a float first stage's data."""
    validate_dim(dim, store.full_dim)
    prefix = np.empty((store.rows, dim), dtype=np.float32)
    for start in range(0, store.rows, SCAN_ROWS):
        prefix[start : start + SCAN_ROWS] = truncate(store.read_prefix(slice(start, start + SCAN_ROWS), dim))
    return prefix


def funnel_search(
    store: Store,
    queries: np.ndarray,
    stages: list[Stage],
    resident: dict[int, np.ndarray] | None = None,
    first_candidates: Callable[[np.ndarray, Stage], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[StageStats]]:
    """Run ``stages`` in order over full-dim unit ``queries``; returns the last stage's ``(D, I)`` (row
    numbers, ``-1`` where fewer rows exist) and per-stage stats.

    ``resident`` maps a dim to an in-memory float32 ``truncate``d prefix of every row, used by a float
    stage of that dim instead of the mapped chunks (a first stage scans it, a later one gathers from it:
    holding the full dim trades its RAM for re-ranking without float16 conversion).
    ``first_candidates`` (e.g. an HNSW graph over a prefix) replaces the first stage's full scan with an
    approximate shortlist that is then re-scored.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if queries.shape[1] != store.full_dim:
        raise DimensionError(f"queries have {queries.shape[1]} dims, the index holds {store.full_dim}")
    queries = truncate(queries)
    stats: list[StageStats] = []
    scores = rows = None
    for position, stage in enumerate(stages):
        validate_dim(stage.dim, store.full_dim)
        started = time.perf_counter()
        if position == 0 and first_candidates is not None:
            scores, rows, read = rerank(store, queries, first_candidates(queries, stage), stage, resident)
        elif position == 0:
            dense = (resident or {}).get(stage.dim) if stage.precision == "float" else None
            scores, rows, read = scan(store, queries, stage, dense)
        else:
            scores, rows, read = rerank(store, queries, rows, stage, resident)
        stats.append(StageStats(str(stage), scores.shape[1], time.perf_counter() - started, read))
    return scores, rows, stats
