"""Fitting post-hoc Matryoshka adapters (the map itself, and applying it, is :mod:`matryoshka.adapter`).

A trained kind (``linear``, ``mlp``) is affine and chosen honestly: it centres on the fitting mean
and starts from the centred PCA rotation; part of the fitting vectors is held out (no labels needed),
the candidates (centred PCA, the trained map) are fitted on the rest, and the one whose prefixes keep
most of the held-out rows' full-dim neighbours (of the centred vectors: the frame both work in),
averaged over the dims, is kept; so a fitted adapter is never worse than its own starting point on the
objective it optimises. One map is chosen for all dims: every prefix of one output vector must come
from the same map, and the prefixes of different maps do not nest. An uncentred fit (``init="mean-last"``,
a pure rotation, which folds into a model) is judged on the input's own neighbours.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import numpy as np

from matryoshka.adapter import KINDS, Adapter, check_vectors, data_hash, mean_last_rotation, pca_rotation
from matryoshka.dims import truncate, validate_dim
from matryoshka.errors import MatryoshkaError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
DEFAULT_DIMS = (384, 256, 128, 64, 32, 16, 8)
HOLDOUT = 0.1  # share of the fitting vectors held out to choose among the candidate maps
HOLDOUT_MAX = 2000  # held-out rows at most (the criterion's cost grows with them)
HOLDOUT_MIN_VECTORS = 100  # below this many vectors, no hold-out: the trained map is kept as it is
SELECTION_NEIGHBOURS = 10
SELECTED_KINDS = ("linear", "mlp")  # the kinds whose fit chooses among candidates on held-out rows
CANDIDATES = ("start", "pca", "trained")  # in order of preference on a tie: the simplest first
DEFAULT_CANDIDATES = ("pca", "trained")  # the default start is centred PCA itself
DEFAULT_INIT = "pca"  # centred, unless the pseudo-queries find their documents worse centred (source_mrr)


def sentence_queries(texts: Sequence[str], per_text: int = 1, min_words: int = 6, seed: int = 0) -> list[str]:
    """Query-like texts from a corpus alone: up to ``per_text`` sentences of each text, drawn at random.

    A document's own sentences are short, self-contained statements about it, as users' queries are;
    their full-dim neighbours show the adapter what query-to-document rankings to keep.
    """
    return sentence_sources(texts, per_text, min_words, seed)[0]


def sentence_sources(
    texts: Sequence[str], per_text: int = 1, min_words: int = 6, seed: int = 0
) -> tuple[list[str], list[int]]:
    """:func:`sentence_queries` and, for each, the index of the text it came from."""
    rng = np.random.default_rng(seed)
    chosen, sources = [], []
    for number, text in enumerate(texts):
        sentences = [s for s in SENTENCE_END.split(text) if len(s.split()) >= min_words]
        if len(sentences) == 1 and sentences[0].strip() == text.strip():
            continue  # a one-sentence text (a caption, an STS sentence) is its own vector, not a query
        if len(sentences) > per_text:
            sentences = [sentences[i] for i in sorted(rng.choice(len(sentences), per_text, replace=False))]
        chosen.extend(sentences)
        sources.extend([number] * len(sentences))
    return chosen, sources


def source_mrr(
    vectors: np.ndarray, queries: np.ndarray, sources: Sequence[int], mean: np.ndarray
) -> dict[str, float]:
    """Mean reciprocal rank of each pseudo-query's own text among ``vectors`` at the full dim, as given
    and centred on ``mean`` (queries alike): a label-free check that centring on the corpus mean does not
    move queries of another kind (a claim, a question) away from their documents."""
    rows = np.asarray(sources)[:HOLDOUT_MAX]
    queries = queries[: len(rows)]
    mrr = {}
    for frame, (docs, asked) in {
        "input": (vectors, queries),
        "centred": (truncate(vectors - mean), truncate(queries - mean)),
    }.items():
        scores = asked @ docs.T
        ranks = (scores > scores[np.arange(len(rows)), rows][:, None]).sum(axis=1)
        mrr[frame] = round(float(np.mean(1 / (ranks + 1))), 4)
    return mrr


def fit_adapter(
    vectors: np.ndarray,
    kind: str = "linear",
    dims: Sequence[int] = DEFAULT_DIMS,
    queries: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    source: dict | None = None,
    query_sources: Sequence[int] | None = None,
    progress: bool = False,
    threads: int = 1,
    holdout: float = HOLDOUT,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    seed: int = 0,
    **options,
) -> Adapter:
    """Fit an adapter of ``kind`` on frozen full-dim ``vectors`` (a corpus, from any model or provider).

    ``queries``: optional query-like vectors (e.g. sentences of the corpus documents) whose full-dim
    neighbours in ``vectors`` every prefix should keep; ``query_sources``: the row of ``vectors`` each
    query came from (:func:`sentence_sources`): the fit centres only if the queries find their rows no
    worse centred (:func:`source_mrr`; claims and questions over abstracts may not); ``pairs``:
    optional (query, positive) vectors for the supervised in-batch-negatives term. ``threads``: BLAS
    and torch threads (one is fastest on a shared machine: these matrices are small and oversubscribed
    threads spin). ``holdout``: share of ``vectors`` held out to choose among the candidates of a
    ``linear``/``mlp`` fit (0: keep the trained map unchecked; with ``pairs`` there is no choice
    either, since their supervised signal is what the unsupervised criterion cannot judge); the choice
    and its held-out figures are in ``meta["selection"]``. ``candidates``: a subset of
    :data:`CANDIDATES` (e.g. the uncentred rotations alone, to fold into a model). ``options`` go to
    :func:`matryoshka.train.adapter_objective.train`.
    """
    if kind not in KINDS:
        raise MatryoshkaError(f"unknown adapter kind {kind!r}: use one of {', '.join(KINDS)}")
    if not candidates or not set(candidates) <= set(CANDIDATES):
        raise MatryoshkaError(f"adapter candidates must be among {', '.join(CANDIDATES)}: {list(candidates)}")
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
    options["seed"] = seed
    selection = None
    with threadpool_limits(limits=threads):
        if kind in SELECTED_KINDS and holdout > 0 and pairs is None and len(vectors) >= HOLDOUT_MIN_VECTORS:
            sources = query_sources if queries is not None else None
            adapter, objective, selection = _fit_selected(
                vectors, kind, dims, queries, sources, progress, threads, holdout, candidates, options
            )
        else:
            adapter, objective = _fit(vectors, kind, dims, queries, pairs, progress, threads, options)
    adapter.meta = {
        "source": source or {},
        "input_dim": full_dim,
        "dims": dims,
        "objective": objective,
        "kind": adapter.kind,
        "data_hash": data_hash(vectors),
        "fitted_on": len(vectors),
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    if selection is not None:
        adapter.meta["selection"] = selection
    return adapter


def held_out_split(count: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (fit, held out): a random ``share`` of ``count`` rows (at most ``HOLDOUT_MAX``) held out."""
    rng = np.random.default_rng(seed)
    held = min(HOLDOUT_MAX, max(1, round(share * count)), count - 2)
    order = rng.permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def neighbour_recall_by_dim(
    adapter: Adapter,
    corpus: np.ndarray,
    rows: np.ndarray,
    dims: Sequence[int],
    k: int = SELECTION_NEIGHBOURS,
    mean: np.ndarray | None = None,
) -> dict[int, float]:
    """How many of each ``rows``' ``k`` full-dim neighbours in ``corpus`` (itself excluded) a search over
    ``adapter``'s prefixes finds, at every dim: the unsupervised criterion the adapter is chosen by.
    ``mean``: the neighbours are those of the corpus centred on it (the frame of a centred adapter)."""
    from matryoshka.eval.metrics import recall_at_k
    from matryoshka.index.search import exact_search

    k = min(k, len(corpus) - 1)
    anchors = corpus[rows]
    frame = corpus if mean is None else truncate(corpus - mean)
    _, exact = exact_search(frame[rows], frame, k + 1)
    adapted, adapted_anchors = adapter.transform(corpus), adapter.transform(anchors)
    recalls = {}
    for dim in dims:
        _, found = exact_search(truncate(adapted_anchors, dim), truncate(adapted, dim), k + 1)
        recalls[int(dim)] = recall_at_k(_without(found, rows, k), _without(exact, rows, k))
    return recalls


def _without(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the row itself."""
    keep = ids != rows[:, None]
    return np.array([row_ids[mask][:k] for row_ids, mask in zip(ids, keep, strict=True)])


def _fit_selected(vectors, kind, dims, queries, sources, progress, threads, holdout, names, options):
    """The trained map or its start (centred PCA; the mean-last rotation when the pseudo-queries say
    centring hurts), fitted on the non-held-out rows, whichever keeps most of the held-out rows'
    full-dim neighbours in its frame (mean recall over ``dims``); ties keep the simplest."""
    fit_rows, held_rows = held_out_split(len(vectors), holdout, options.get("seed", 0))
    fit_on = vectors[fit_rows]
    mean, axes = pca_rotation(fit_on)
    zeros = np.zeros(vectors.shape[1], np.float32)
    init = options.setdefault("init", DEFAULT_INIT)
    centring = None
    if init == "pca" and sources is not None:
        centring = source_mrr(vectors, queries, sources, mean)
        if centring["centred"] < centring["input"]:  # keep the input's frame: a rotation, no centring
            init = options["init"] = "mean-last"
            names = ["start" if name == "pca" else name for name in names]
    start = {
        "mean-last": Adapter("linear", zeros, mean_last_rotation(fit_on)),
        "pca": Adapter("linear", mean, axes),
        "identity": Adapter("linear", zeros, np.eye(vectors.shape[1], dtype=np.float32)),
    }[init]
    trained, objective = _fit(fit_on, kind, dims, queries, None, progress, threads, options)
    every = {"start": start, "pca": Adapter("pca", mean, axes), "trained": trained}
    candidates = {name: every[name] for name in CANDIDATES if name in names}
    frame = mean if init == "pca" else None  # neighbours judged in the frame the trained map works in
    recalls = {
        name: neighbour_recall_by_dim(c, vectors, held_rows, dims, mean=frame)
        for name, c in candidates.items()
    }
    means = {name: float(np.mean(list(by_dim.values()))) for name, by_dim in recalls.items()}
    chosen = max(candidates, key=lambda name: (means[name], -list(candidates).index(name)))
    selection = {
        "chosen": chosen,
        "criterion": f"mean over dims of held-out rows' full-dim {SELECTION_NEIGHBOURS}-neighbour recall"
        + (" (centred)" if frame is not None else ""),
        "held_out": len(held_rows),
        "trained_on": len(fit_rows),
        "start": f"{init} rotation",
        "frame": "centred" if frame is not None else "input",
        "source_mrr": centring,
        "mean_recall": {name: round(value, 4) for name, value in means.items()},
        "recall_by_dim": {name: {d: round(r, 4) for d, r in rows.items()} for name, rows in recalls.items()},
    }
    return candidates[chosen], objective, selection


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
