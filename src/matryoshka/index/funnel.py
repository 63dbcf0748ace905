"""Funnels as text (``32:1000,128:100``, ``binary,int8,float``) and a fresh index's default funnel.

The default comes from a quick calibration on the index's own vectors: held-in rows serve as queries
(their own row is dropped from the truth), and the cheapest candidate funnel (bytes read per query)
whose recall@k against exact full-dim search reaches the target is kept in the manifest. Sampling and
measuring are the planner's (``planner.py``), which also chooses from memory, latency or recall budgets.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.index.stages import PRECISION_NAMES, Stage, parse_funnel

if TYPE_CHECKING:
    from matryoshka.index.store import Store

CALIBRATION_QUERIES = 100  # the quick default; the planner samples more
TARGET_RECALL = 0.99


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


CODE_BYTES = {"float": 4.0, "int8": 1.0, "binary": 1 / 8}  # per coordinate of a first-stage scan


def funnel_cost(stages: list[Stage], rows: int, itemsize: int) -> int:
    """Bytes read per query: the first stage scans every row's float32 prefix (or its int8 or packed
    binary codes), later ones gather the shortlist's stored rows (or codes)."""
    cost = int(rows * stages[0].dim * CODE_BYTES[stages[0].precision])
    for previous, stage in itertools.pairwise(stages):
        width = itemsize if stage.precision == "float" else CODE_BYTES[stage.precision]
        cost += int(previous.keep * stage.dim * width)
    return cost


def calibrate_funnel(
    store: Store, resident: dict[int, np.ndarray], k: int = 10, target: float = TARGET_RECALL
) -> list[Stage]:
    """Cheapest (bytes read) funnel with a resident float or a binary first stage reaching ``target``
    recall@k, measured by the planner on a sample of the index's own rows; the most accurate one when
    none reaches it."""
    from matryoshka.index import planner

    if store.rows - len(store.deleted_rows()) <= k + 1:
        return [Stage(store.full_dim, k)]
    calibration = planner.calibration_sample(store, k, size=CALIBRATION_QUERIES)
    itemsize = np.dtype(store.manifest["dtype"]).itemsize
    funnels = [
        (stages, True)
        for stages, resident_first in planner.candidate_funnels(store, k)
        if len(stages) > 1 and (resident_first or stages[0].precision == "binary")
    ]
    measured = planner.measure(store, calibration, resident, funnels, timing_queries=0)
    best = max(measured, key=lambda c: c.recall)
    reaching = [parse_funnel(c.funnel, store.full_dim, k) for c in measured if c.recall >= target]
    if reaching:
        return min(reaching, key=lambda stages: funnel_cost(stages, store.rows, itemsize))
    return parse_funnel(best.funnel, store.full_dim, k)
