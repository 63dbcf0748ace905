"""Funnels as text (``32:1000,128:100``, ``binary,int8,float``) and a fresh index's default funnel.

The default comes from a quick calibration on the index's own vectors: held-in rows serve as queries
(their own row is dropped from the truth), and the cheapest candidate funnel (bytes read per query)
whose recall@k against exact full-dim search reaches the target is kept in the manifest. The planner
refines this from memory, latency or recall budgets.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.search import PRECISION_NAMES, Stage, funnel_search, load_prefix

if TYPE_CHECKING:
    from matryoshka.index.store import Store

CALIBRATION_QUERIES = 100
TARGET_RECALL = 0.99


def parse_funnel(text: str, full_dim: int, k: int) -> list[Stage]:
    """``"32:1000,128:100"`` (each ``[precision@]dim:keep``, dim may be ``full``) -> stages ending at
    full:k."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        precision, _, rest = part.rpartition("@")
        dim_text, _, keep_text = rest.partition(":")
        try:
            dim = full_dim if dim_text == "full" else int(dim_text)
            keep = int(keep_text) if keep_text else k
        except ValueError:
            raise MatryoshkaError(f"bad funnel stage {part!r}: expected DIM:KEEP, e.g. 32:1000") from None
        if (precision or "float") not in PRECISION_NAMES:
            raise MatryoshkaError(f"bad funnel stage {part!r}: precision must be one of {PRECISION_NAMES}")
        if keep < 1:
            raise MatryoshkaError(f"bad funnel stage {part!r}: keep must be at least 1")
        stages.append(Stage(dim, keep, precision or "float"))
    if not stages:
        raise MatryoshkaError(f"empty funnel {text!r}")
    if (stages[-1].dim, stages[-1].precision) != (full_dim, "float"):
        stages.append(Stage(full_dim, k))
    return [*stages[:-1], Stage(stages[-1].dim, k, stages[-1].precision)]


def precision_cascade(names: str, store: Store, k: int) -> list[Stage]:
    """``"binary,int8,float"`` -> binary@codes:100k -> int8@codes:10k -> float@full:k."""
    parts = [p.strip() for p in names.split(",") if p.strip()]
    if not parts or any(p not in PRECISION_NAMES for p in parts):
        raise MatryoshkaError(f"bad precision cascade {names!r}: use names from {', '.join(PRECISION_NAMES)}")
    code_dims = {
        "binary": store.manifest["binary_dim"],
        "int8": store.manifest["int8_dim"],
        "float": store.full_dim,
    }
    keeps = [k * 10 ** (len(parts) - 1 - i) for i in range(len(parts))]
    return [Stage(code_dims[p], keep, p) for p, keep in zip(parts, keeps, strict=True)]


def stages_text(stages: list[Stage]) -> str:
    return ",".join(str(s) for s in stages)


def candidate_funnels(store: Store, k: int) -> list[list[Stage]]:
    """Two- and three-stage float funnels over the chunk boundaries up to half the full dim."""
    full = store.full_dim
    first_dims = [end for _, end in store.chunks if end <= full // 2] or [store.chunks[0][1]]
    funnels = []
    for dim in first_dims:
        for factor in (10, 20, 50, 100, 200, 500):
            keep = min(k * factor, store.rows)
            funnels.append([Stage(dim, keep), Stage(full, k)])
            middle = [end for _, end in store.chunks if dim < end < full]
            if middle and factor >= 50:
                funnels.append([Stage(dim, keep), Stage(middle[-1], max(k * 10, keep // 10)), Stage(full, k)])
    return funnels


def funnel_cost(stages: list[Stage], rows: int, itemsize: int) -> int:
    """Bytes read per query: the first stage scans float32 prefixes of every row, later ones gather."""
    cost = rows * stages[0].dim * 4
    for previous, stage in itertools.pairwise(stages):
        cost += previous.keep * stage.dim * itemsize
    return cost


def calibrate_funnel(
    store: Store, resident: dict[int, np.ndarray], k: int = 10, target: float = TARGET_RECALL
) -> list[Stage]:
    """Cheapest candidate funnel reaching ``target`` recall@k on a sample of the index's own rows."""
    live = np.setdiff1d(np.arange(store.rows), store.deleted_rows())
    if len(live) <= k + 1:
        return [Stage(store.full_dim, k)]
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(live, size=min(CALIBRATION_QUERIES, len(live)), replace=False))
    queries = store.read_prefix(sample, store.full_dim)
    _, exact, _ = funnel_search(store, queries, [Stage(store.full_dim, k + 1)])
    truth = _drop_self(exact, sample, k)
    itemsize = np.dtype(store.manifest["dtype"]).itemsize
    best, best_recall = [Stage(store.full_dim, k)], -1.0
    for stages in sorted(candidate_funnels(store, k), key=lambda s: funnel_cost(s, store.rows, itemsize)):
        for dim in {stages[0].dim} - set(resident):
            resident[dim] = load_prefix(store, dim)
        wide = [*stages[:-1], Stage(stages[-1].dim, k + 1)]
        _, found, _ = funnel_search(store, queries, wide, resident)
        recall = recall_at_k(_drop_self(found, sample, k), truth, k)
        if recall >= target:
            return stages
        if recall > best_recall:
            best, best_recall = stages, recall
    return best


def _drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each query's results without its own row (the sample queries are rows of the index)."""
    return np.stack([f[f != row][:k] for f, row in zip(found, rows, strict=True)])
