"""Fitting post-hoc Matryoshka adapters (the map itself, and applying it, is :mod:`matryoshka.adapter`)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import numpy as np

from matryoshka.adapter import KINDS, Adapter, check_vectors, data_hash, pca_rotation
from matryoshka.dims import validate_dim
from matryoshka.errors import MatryoshkaError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
DEFAULT_DIMS = (384, 256, 128, 64, 32, 16, 8)


def sentence_queries(texts: Sequence[str], per_text: int = 1, min_words: int = 6, seed: int = 0) -> list[str]:
    """Query-like texts from a corpus alone: up to ``per_text`` sentences of each text, drawn at random.

    A document's own sentences are short, self-contained statements about it, as users' queries are;
    their full-dim neighbours show the adapter what query-to-document rankings to keep.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for text in texts:
        sentences = [s for s in SENTENCE_END.split(text) if len(s.split()) >= min_words]
        if len(sentences) > per_text:
            sentences = [sentences[i] for i in sorted(rng.choice(len(sentences), per_text, replace=False))]
        chosen.extend(sentences)
    return chosen


def fit_adapter(
    vectors: np.ndarray,
    kind: str = "linear",
    dims: Sequence[int] = DEFAULT_DIMS,
    queries: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    source: dict | None = None,
    progress: bool = False,
    threads: int = 1,
    **options,
) -> Adapter:
    """Fit an adapter of ``kind`` on frozen full-dim ``vectors`` (a corpus, from any model or provider).

    ``queries``: optional query-like vectors (e.g. sentences of the corpus documents) whose full-dim
    neighbours in ``vectors`` every prefix should keep; ``pairs``: optional (query, positive) vectors
    for the supervised in-batch-negatives term. ``threads``: BLAS and torch threads (one is fastest on
    a shared machine: these matrices are small and oversubscribed threads spin). ``options`` go to
    :func:`matryoshka.train.adapter_objective.train`.
    """
    if kind not in KINDS:
        raise MatryoshkaError(f"unknown adapter kind {kind!r}: use one of {', '.join(KINDS)}")
    vectors = check_vectors(vectors)
    if len(vectors) < 2:
        raise MatryoshkaError(f"need at least 2 vectors to fit an adapter, got {len(vectors)}")
    full_dim = vectors.shape[1]
    dims = sorted({validate_dim(int(d), full_dim) for d in dims} | {full_dim}, reverse=True)
    if queries is not None:
        queries = check_vectors(queries, full_dim, "query vectors")
    if pairs is not None:
        first, second = (check_vectors(side, full_dim, "pair vectors") for side in pairs)
        if len(first) != len(second) or not len(first):
            raise MatryoshkaError(f"pairs need as many queries as positives, got {len(first)}, {len(second)}")
        pairs = (first, second)
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(limits=threads):
        adapter, objective = _fit(vectors, kind, dims, queries, pairs, progress, threads, options)
    adapter.meta = {
        "source": source or {},
        "input_dim": full_dim,
        "dims": dims,
        "objective": objective,
        "kind": kind,
        "data_hash": data_hash(vectors),
        "fitted_on": len(vectors),
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    return adapter


def _fit(vectors, kind, dims, queries, pairs, progress, threads, options) -> tuple[Adapter, str]:
    full_dim = vectors.shape[1]
    objective = "none"
    if kind == "raw":
        adapter = Adapter(kind, np.zeros(full_dim, np.float32), np.eye(full_dim, dtype=np.float32))
    elif kind == "pca":
        mean, rotation = pca_rotation(vectors)
        adapter, objective = Adapter(kind, mean, rotation), "variance"
    else:
        import torch

        from matryoshka.train.adapter_objective import train

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            adapter, objective = train(vectors, kind, dims, queries, pairs, progress=progress, **options)
        finally:
            torch.set_num_threads(previous)
    return adapter, objective
