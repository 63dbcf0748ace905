"""Capacity planning before a build: which prefix dim and precision to keep in RAM for N vectors.

Each option (prefix dim x precision of the RAM tier) costs ``bytes_per_vector`` x N; its expected
recall@k is *measured* on a sample of real vectors: the sample's first ``QUERY_ROWS`` rows query the
rest, the RAM tier ranks every row and keeps ``shortlist_factor`` x k, then full-dim float vectors
(mapped from disk) re-rank the shortlist. Recall is against exact full-dim search on the sample, so it
describes a corpus of the sample's size; a larger corpus crowds the shortlist and recall drops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.search import exact_search, top_k
from matryoshka.quantize import PRECISIONS, bytes_per_vector, score, to_binary, to_int8

QUERY_ROWS = 200
DEFAULT_DIMS = (32, 64, 128, 256)


@dataclass
class CapacityOption:
    dim: int
    precision: str
    bytes_per_vector: float
    total_bytes: float
    tier_recall: float  # the RAM tier's own top-k
    recall: float  # after re-ranking its shortlist at full dim
    fits: bool


def capacity_options(
    vectors: int,
    memory_gb: float,
    sample: np.ndarray,
    k: int = 10,
    shortlist_factor: int = 10,
    dims: tuple[int, ...] = DEFAULT_DIMS,
) -> list[CapacityOption]:
    """Every (dim, precision) RAM tier with its bytes, total memory for ``vectors`` rows and the recall
    measured on ``sample`` (full-dim unit vectors, at least ``QUERY_ROWS + 10 * k`` rows)."""
    if vectors < 1 or memory_gb <= 0:
        raise MatryoshkaError("capacity planning needs a positive vector count and memory budget")
    sample = truncate(np.asarray(sample, np.float32))
    if len(sample) < QUERY_ROWS + 10 * k:
        raise MatryoshkaError(f"the sample needs at least {QUERY_ROWS + 10 * k} vectors, got {len(sample)}")
    queries, corpus = sample[:QUERY_ROWS], sample[QUERY_ROWS:]
    _, truth = exact_search(queries, corpus, k)
    full = sample.shape[1]
    options = []
    for dim in [d for d in dims if d < full] + [full]:
        query_prefix, corpus_prefix = truncate(queries, dim), truncate(corpus, dim)
        for precision in PRECISIONS:
            if precision == "int8":
                scores = score(query_prefix, to_int8(corpus_prefix))
            elif precision == "binary":
                scores = score(query_prefix, to_binary(corpus_prefix))
            else:
                scores = query_prefix @ corpus_prefix.astype(precision).astype(np.float32).T
            _, ranked = top_k(scores, k * shortlist_factor)
            rescored = np.take_along_axis(queries @ corpus.T, ranked, 1)
            _, order = top_k(rescored, k)
            reranked = np.take_along_axis(ranked, order, 1)
            per_vector = bytes_per_vector(dim, precision)
            options.append(
                CapacityOption(
                    dim,
                    precision,
                    per_vector,
                    per_vector * vectors,
                    recall_at_k(ranked[:, :k], truth, k),
                    recall_at_k(reranked, truth, k),
                    per_vector * vectors <= memory_gb * 1e9,
                )
            )
    return options


def best_option(options: list[CapacityOption], memory_gb: float) -> CapacityOption:
    """Highest recall that fits (fewer bytes on ties); a clear error naming the smallest option if none."""
    fitting = [o for o in options if o.fits]
    if not fitting:
        smallest = min(options, key=lambda o: o.total_bytes)
        raise MatryoshkaError(
            f"nothing fits in {memory_gb} GB: the smallest RAM tier ({smallest.precision}@{smallest.dim}) "
            f"needs {smallest.total_bytes / 1e9:.2f} GB"
        )
    return max(fitting, key=lambda o: (round(o.recall, 3), -o.total_bytes))
