"""The rank rule of per-query depth: stop a prefix ladder where the answer came from the shortlist's head.

After the scan at a short prefix keeps a shortlist and the funnel re-ranks it, look at where the final
top-k rows sat in the shortlist's own order. When even the deepest of them is near the top (say within
its first 20%), the prefix ranked the true answer well, and rows beyond the shortlist's end are unlikely
to belong in it: the query stops there. When the answer came from the shortlist's tail, the prefix is
too coarse for this query, so it goes on to a longer one. Unlike score margins, the position is read
after the exact re-ranking, which is what makes it informative (on real MiniLM vectors its AUC for
"this rung's top-10 is exact" is 0.82-0.93, score margins 0.48-0.64).

Checking a rung costs its re-ranking, so each rung of a ladder is either checked, with a limit on the
position, or passed (only scanned); the limits are fitted on the calibration sample to keep the recall
target at the fewest bytes read.
"""

from __future__ import annotations

from itertools import product

import numpy as np

LIMIT_QUANTILES = np.linspace(0.05, 1.0, 20)


def worst_positions(first_rows: np.ndarray, final_rows: np.ndarray, k: int) -> np.ndarray:
    """Per query, the deepest position in its first-stage shortlist of any of its final top-k rows, as a
    fraction of the shortlist's length (pads and rows not in the shortlist count as position 0)."""
    top = final_rows[:, :k]
    positions = (first_rows[:, None, :] == top[:, :, None]).argmax(axis=2)
    return np.where(top >= 0, positions, 0).max(axis=1) / max(first_rows.shape[1], 1)


def ladder_cost(
    limits: tuple[float | None, ...], worst: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the rung that answers under ``limits`` (one per rung but the last; None passes a rung)
    and the bytes it reads: the scan up to that rung plus the re-ranking of every rung it checked."""
    queries = worst.shape[1]
    depth = np.full(queries, len(scan_bytes) - 1)
    read = np.zeros(queries)
    going = np.ones(queries, bool)
    for rung, limit in enumerate(limits):
        if limit is None:
            continue
        read[going] += check_bytes[rung]
        stop = going & (worst[rung] <= limit)
        depth[stop], going = rung, going & ~stop
    read[going] += check_bytes[-1]
    return depth, read + scan_bytes[depth]


def fit_rank_limits(
    worst: np.ndarray, hits: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray, target: float
) -> tuple[list[float | None], float]:
    """The limits (``None`` = pass the rung) with the fewest mean bytes whose recall (mean of ``hits``,
    each query's share of its exact top-k at the rung that answers it) is at least ``target``.

    ``worst`` and ``hits``: (rungs, queries); ``scan_bytes``: bytes scanned up to each rung, per query;
    ``check_bytes``: bytes of re-ranking one query's shortlist at each rung. Returns limits and bytes."""
    options = [[None, *np.unique(np.quantile(rung, LIMIT_QUANTILES))] for rung in worst[:-1]]
    best: tuple[list[float | None], float] = ([None] * (len(hits) - 1), np.inf)
    for limits in product(*options):
        depth, read = ladder_cost(limits, worst, scan_bytes, check_bytes)
        recall = hits[depth, np.arange(hits.shape[1])].mean()
        if recall >= target - 1e-12 and read.mean() < best[1]:
            best = ([None if v is None else float(v) for v in limits], float(read.mean()))
    return best
