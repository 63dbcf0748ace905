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
target at the fewest bytes read. A check may keep a wider shortlist, and may be *quick*: re-rank the
shortlist at a ``CHECK_DIM`` prefix first and only its best ``CHECK_KEEP`` x k rows at full dim. On the
synthetic set's binary@128:300 plan a 600-row full-dim re-rank is 14% of what the plan reads, the quick
one 3%, so checking a rung that many queries pass costs little.
"""

from __future__ import annotations

from itertools import product

import numpy as np

LIMIT_QUANTILES = np.linspace(0.1, 1.0, 12)
WIDTHS = (1, 2, 4)  # a checked rung may keep this many times the ladder's shortlist
CHECK_DIM, CHECK_KEEP = 64, 3
EXHAUSTIVE = 60_000  # choice combinations fitted one by one
# (shortlist factor, quick) per check option; the first are the plain checks (saved models index them)
OPTIONS = [(width, False) for width in WIDTHS] + [(width, True) for width in WIDTHS]

Choice = tuple[int, float] | None  # per rung: (index into OPTIONS, position limit), or None to pass it


def worst_positions(first_rows: np.ndarray, final_rows: np.ndarray, k: int) -> np.ndarray:
    """Per query, the deepest position in its first-stage shortlist of any of its final top-k rows, as a
    fraction of the shortlist's length (pads and rows not in the shortlist count as position 0)."""
    top = final_rows[:, :k]
    positions = (first_rows[:, None, :] == top[:, :, None]).argmax(axis=2)
    return np.where(top >= 0, positions, 0).max(axis=1) / max(first_rows.shape[1], 1)


def ladder_cost(
    choices: tuple[Choice, ...], worst: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query under ``choices`` (one per rung but the last): the rung that answers, the check option
    it answered under, and the bytes read: the scan up to that rung plus the re-ranking of every rung
    checked.

    ``worst``: (options, rungs, queries); ``scan_bytes``: (rungs,) bytes scanned up to each rung;
    ``check_bytes``: (options, rungs) bytes of re-ranking one query's shortlist."""
    queries = worst.shape[2]
    depth, answered_under = np.full(queries, len(scan_bytes) - 1), np.zeros(queries, int)
    read = np.zeros(queries)
    going = np.ones(queries, bool)
    for rung, choice in enumerate(choices):
        if choice is None:
            continue
        option, limit = choice
        read[going] += check_bytes[option, rung]
        stop = going & (worst[option, rung] <= limit)
        depth[stop], answered_under[stop], going = rung, option, going & ~stop
    read[going] += check_bytes[0, -1]
    return depth, answered_under, read + scan_bytes[depth]


def fit_rank_limits(
    worst: np.ndarray, hits: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray, target: float
) -> tuple[list[Choice], float]:
    """The choices with the fewest mean bytes whose recall (mean of ``hits``, each query's share of its
    exact top-k where it is answered) is at least ``target``; and those bytes. Every combination is
    tried when there are at most ``EXHAUSTIVE``; else every combination of plain checks, then one rung
    at a time over every option for as long as a change reads less.

    ``worst`` and ``hits``: (options, rungs, queries), the last rung at option 0 (the fixed plan's
    shortlist and stages); see :func:`ladder_cost` for the bytes."""
    options = [
        [
            None,
            *(
                (option, float(v))
                for option in range(len(worst))
                for v in np.unique(np.quantile(worst[option, rung], LIMIT_QUANTILES))
            ),
        ]
        for rung in range(worst.shape[1] - 1)
    ]
    columns = np.arange(worst.shape[2])

    def cost(choices) -> float:
        depth, option, read = ladder_cost(tuple(choices), worst, scan_bytes, check_bytes)
        return float(read.mean()) if hits[option, depth, columns].mean() >= target - 1e-12 else np.inf

    plain = [[c for c in rung if c is None or c[0] < len(WIDTHS)] for rung in options]
    first = next(
        (space for space in (options, plain) if np.prod([len(o) for o in space]) <= EXHAUSTIVE),
        [[None]] * len(options),  # too many rungs to try: start from the fixed plan
    )
    best = list(min(product(*first), key=cost))  # the first of equals
    best_cost, improved = cost(best), True
    while improved:
        improved = False
        for rung, choices in enumerate(options):
            for choice in choices:
                trial = [*best[:rung], choice, *best[rung + 1 :]]
                if (trial_cost := cost(trial)) < best_cost - 1e-9:
                    best, best_cost, improved = trial, trial_cost, True
    return best, best_cost
