"""The per-dimension report: quality, retention and cost of every prefix, beside baselines.

Each model is encoded once at full dim (cached on disk); every dim is a ``truncate`` of that. Baselines
reuse the base model's cached vectors: a baseline is fitted on the task's fit vectors (the STS train
split, or a BEIR corpus) and returns a transform whose output prefixes are then truncated like any
model's. New baselines (e.g. a learned truncation adapter) plug in with :func:`register_baseline`.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.index.search import exact_search
from matryoshka.quantize import bytes_per_vector

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder
    from matryoshka.eval.tasks import Blocks, Task

Transform = Callable[[np.ndarray], np.ndarray]
FitBaseline = Callable[[np.ndarray], Transform]  # fit vectors (n, full_dim) -> transform of full vectors
SEARCH_K = 10
SEARCH_REPEATS = 5


def fit_identity(fit_vectors: np.ndarray) -> Transform:
    """Raw truncation of the base model: its vectors as they are."""
    return lambda vectors: vectors


def fit_pca(fit_vectors: np.ndarray) -> Transform:
    """PCA (as sklearn's): centre on the fit vectors' mean, rotate onto their principal axes by variance.

    The rotation is the adapter module's (one PCA in the toolkit); it keeps every dim even when fitted
    on fewer vectors than dims (the extra axes carry no variance).
    """
    from matryoshka.adapter import pca_rotation

    mean, axes = pca_rotation(np.asarray(fit_vectors, dtype=np.float64))
    return lambda vectors: ((np.asarray(vectors, dtype=np.float64) - mean) @ axes).astype(np.float32)


def _fit_adapter_kind(kind: str) -> FitBaseline:
    """A post-hoc adapter of ``kind`` fitted on the fit vectors (unsupervised), as a baseline."""

    def fit(fit_vectors: np.ndarray) -> Transform:
        from matryoshka.train.adapter import fit_adapter

        full_dim = fit_vectors.shape[1]
        dims = [full_dim, *(d for d in (256, 128, 64, 32, 16, 8) if d < full_dim)]
        return fit_adapter(fit_vectors, kind, dims).transform

    return fit


BASELINES: dict[str, FitBaseline] = {
    "truncate": fit_identity,
    "pca": fit_pca,
    "learned": _fit_adapter_kind("select"),  # learned truncation: the best original coordinates first
    "adapter": _fit_adapter_kind("linear"),  # the post-hoc Matryoshka adapter
}


def register_baseline(name: str, fit: FitBaseline) -> None:
    """Make ``name`` usable in ``--baselines`` (e.g. a learned truncation fitted on the fit vectors)."""
    BASELINES[name] = fit


def search_ms_per_query(queries: np.ndarray, corpus: np.ndarray, dim: int) -> float:
    """Brute-force top-10 search time per query over the corpus at ``dim`` (best of a few runs)."""
    queries, corpus = truncate(queries, dim), truncate(corpus, dim)
    best = float("inf")
    for _ in range(SEARCH_REPEATS):
        started = time.perf_counter()
        exact_search(queries, corpus, SEARCH_K)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(queries)


def _series(
    task: Task, name: str, kind: str, blocks: Blocks, dims: Sequence[int], full_dim: int, reference: float
) -> dict:
    """Rows for one model or baseline; retention is relative to ``reference`` (the model's full-dim score)."""
    full_gap = task.similarity_gap(blocks, full_dim)
    rows = []
    for dim in dims:
        metrics = task.score(blocks, dim)
        gap = task.similarity_gap(blocks, dim)
        rows.append(
            {
                "dim": dim,
                "score": metrics[task.metric],
                "metrics": metrics,
                "retention": 100 * metrics[task.metric] / reference if reference else float("nan"),
                "bytes": {p: bytes_per_vector(dim, p) for p in ("float32", "int8", "binary")},
                "gap": gap,
                "gap_ratio": gap / full_gap if full_gap else float("nan"),
            }
        )
    return {
        "name": name,
        "kind": kind,
        "full_dim": full_dim,
        "reference_score": reference,
        "full_gap": full_gap,
        "rows": rows,
        "coarse_to_fine_violations": coarse_to_fine_violations(rows),
    }


def coarse_to_fine_violations(rows: list[dict]) -> list[dict]:
    """Dims scoring below some smaller dim (a nested model should only gain with more dims)."""
    violations = []
    for row in rows:
        smaller = [other for other in rows if other["dim"] < row["dim"] and other["score"] > row["score"]]
        if smaller:
            best = max(smaller, key=lambda other: other["score"])
            violations.append({"dim": row["dim"], "score": row["score"], "beaten_by_dim": best["dim"]})
            row["below_smaller_dim"] = best["dim"]
    return violations


def _unique(names: list[str]) -> list[str]:
    """Series names, with ``#2``, ``#3``... appended where two models share a name."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def _checked_dims(dims: Sequence[int], encoders: Sequence[Encoder]) -> list[int]:
    if not dims:
        raise MatryoshkaError("no dims to evaluate: pass e.g. --dims 384,64,8")
    for encoder in encoders:
        for dim in dims:
            encoder.check_dim(dim)
    return sorted({int(dim) for dim in dims}, reverse=True)


def evaluate(
    encoders: Sequence[Encoder],
    task: Task,
    dims: Sequence[int],
    baselines: Sequence[str] = (),
    base_encoder: Encoder | None = None,
) -> dict:
    """The retention report of ``encoders`` (and of ``baselines`` on ``base_encoder``) on ``task``."""
    started = time.perf_counter()
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:
        raise MatryoshkaError(f"unknown baseline {unknown[0]!r}: use one of {', '.join(BASELINES)}")
    if not encoders:
        raise MatryoshkaError("no model to evaluate")
    if baselines and base_encoder is None:
        from matryoshka.encoder import Encoder

        base_encoder = Encoder(device=encoders[0].device, show_progress=encoders[0].show_progress)
    dims = _checked_dims(dims, [*encoders, *([base_encoder] if baselines else [])])
    report: dict = {"task": task.name, "task_size": task.size, "metric": task.metric, "dims": dims}
    series, notes, encode_seconds, model_blocks = [], [], {}, []
    names = _unique([encoder.name for encoder in encoders])
    for encoder, name in zip(encoders, names, strict=True):
        encode_started = time.perf_counter()
        blocks = task.embed(encoder)
        encode_seconds[name] = time.perf_counter() - encode_started
        model_blocks.append(blocks)
        reference = task.score(blocks, encoder.full_dim)[task.metric]
        series.append(_series(task, name, "model", blocks, dims, encoder.full_dim, reference))
    if baselines:
        base_blocks = task.embed(base_encoder)
        base_reference = task.score(base_blocks, base_encoder.full_dim)[task.metric]
        evaluated = {encoder.fingerprint for encoder in encoders}
        for baseline in baselines:
            label = f"{baseline} ({base_encoder.info.name})"
            if baseline == "truncate" and base_encoder.fingerprint in evaluated:
                notes.append(f"baseline {label} is the {base_encoder.info.name} row itself")
                continue
            transform = BASELINES[baseline](task.fit_vectors(base_encoder))
            transformed = {key: transform(value) for key, value in base_blocks.items()}
            series.append(
                _series(task, label, "baseline", transformed, dims, base_encoder.full_dim, base_reference)
            )
    queries, corpus = task.search_blocks(model_blocks[0])
    search_ms = {dim: search_ms_per_query(queries, corpus, dim) for dim in dims}
    for entry in series:
        for row in entry["rows"]:
            row["search_ms_per_query"] = search_ms[row["dim"]]
        for violation in entry["coarse_to_fine_violations"]:
            notes.append(
                f"{entry['name']}: {task.metric} at {violation['dim']} dims ({violation['score']:.2f}) "
                f"is below {violation['beaten_by_dim']} dims"
            )
    report.update(
        series=series,
        notes=notes,
        search={"queries": len(queries), "corpus": len(corpus), "k": SEARCH_K},
        timing={"encode_s": encode_seconds, "total_s": time.perf_counter() - started},
        hardware=f"{platform.machine()}, {encoders[0].device}, Python {platform.python_version()}",
    )
    return report
