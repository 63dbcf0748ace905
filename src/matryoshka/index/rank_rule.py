"""The rank rule of per-query depth: stop a prefix ladder where the answer came from the shortlist's head.

After the scan at a short prefix keeps a shortlist and the funnel re-ranks it, look at where the final
top-k rows sat in the shortlist's own order. When they sit near its top, the prefix ranked the true
answer well, and rows beyond the shortlist's end are unlikely to belong in it: the query stops there.
When the answer came from the shortlist's tail, the prefix is too coarse for this query, so it goes on
to a longer one. Unlike score margins, the position is read after the exact re-ranking, which is what
makes it informative (on real MiniLM vectors its AUC for "this rung's top-10 is exact" is 0.82-0.93,
score margins 0.48-0.64).

Each checked rung and check option has a :class:`StopModel`: a logistic regression on the mean answer
position and the first stage's gap from the k-th score to the shortlist's last, giving the chance that
stopping loses rows the full ladder would find. Together they separate better than the deepest position
(on the synthetic set's 64-bit rung, AUC 0.80 for the gap and 0.76 for the mean position, 0.73 for the
deepest): fitted on two 1000-query logs, the rule saved 30-31% of the bytes of that set's binary@128:300
plan on 2000 other queries, against 27% with a limit on the deepest position.

Checking a rung costs its re-ranking, so each rung of a ladder is either checked, with a limit on that
chance, or passed (only scanned); the limits are fitted on the calibration sample, on each query's
out-of-fold chance, to keep the recall target at the fewest bytes read. A check may keep a wider
shortlist, and may be *quick*: re-rank the shortlist at a ``CHECK_DIM`` prefix first and only its best
``CHECK_KEEP`` x k rows at full dim. On the synthetic set's binary@128:300 plan a 600-row full-dim
re-rank is 14% of what the plan reads, the quick one 3%, so checking a rung that many queries pass
costs little.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import product

import numpy as np

from matryoshka.index.adaptive import margins

LIMIT_QUANTILES = np.linspace(0.1, 1.0, 12)
WIDTHS = (1, 2, 4)  # a checked rung may keep this many times the ladder's shortlist
CHECK_DIM, CHECK_KEEP = 64, 3
EXHAUSTIVE = 60_000  # choice combinations fitted one by one
FOLDS = 5  # the limits are fitted on out-of-fold chances: in-fold ones are too sure, and lose recall
SURE = 10.0  # the logit of a rung whose calibration answers were all kept (or all lost)
# (shortlist factor, quick) per check option; the first are the plain checks (saved models index them)
OPTIONS = [(width, False) for width in WIDTHS] + [(width, True) for width in WIDTHS]

Choice = tuple[int, float] | None  # per rung: (index into OPTIONS, limit on the chance of a miss) or None


def stop_features(
    first_scores: np.ndarray, first_rows: np.ndarray, final_rows: np.ndarray, k: int
) -> np.ndarray:
    """Per query: the mean position in its first-stage shortlist of its final top-k rows, as a fraction
    of the shortlist's length (pads count as position 0), and the first stage's gap from its k-th score
    to the shortlist's last (how far below the answer the rows left out begin)."""
    top = final_rows[:, :k]
    positions = (first_rows[:, None, :] == top[:, :, None]).argmax(axis=2)
    mean = np.where(top >= 0, positions, 0).mean(axis=1) / max(first_rows.shape[1], 1)
    return np.stack([mean, margins(first_scores, k)[:, 3]], axis=1)


@dataclass
class StopModel:
    """Per check option and checked rung, a logistic regression on :func:`stop_features` (standardised)
    for "stopping here keeps every row the full ladder finds"."""

    center: np.ndarray  # (options, rungs, features)
    scale: np.ndarray  # (options, rungs, features)
    coef: np.ndarray  # (options, rungs, features)
    intercept: np.ndarray  # (options, rungs)

    def missed(self, option: int, rung: int, features: np.ndarray) -> np.ndarray:
        """Each query's chance that stopping at ``rung`` under ``option`` loses part of the answer."""
        z = (features - self.center[option, rung]) / self.scale[option, rung]
        logit = z @ self.coef[option, rung] + self.intercept[option, rung]
        return 1 / (1 + np.exp(np.clip(logit, -50, 50)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"stop_{field.name}": getattr(self, field.name) for field in fields(self)}

    @classmethod
    def from_arrays(cls, saved) -> StopModel | None:
        names = [f"stop_{field.name}" for field in fields(cls)]
        if any(name not in saved for name in names):
            return None  # saved before the stop model: the rank rule needs retraining
        return cls(*(saved[name] for name in names))


def _fit_logistic(features: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, ...]:
    """(center, scale, coef, intercept) of one rung and option."""
    from sklearn.linear_model import LogisticRegression

    center, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    if kept.all() or not kept.any():
        return center, scale, np.zeros(features.shape[1]), SURE if kept.all() else -SURE
    classifier = LogisticRegression(C=1.0).fit((features - center) / scale, kept)
    return center, scale, classifier.coef_[0], classifier.intercept_[0]


def fit_stop_model(features: np.ndarray, hits: np.ndarray) -> tuple[StopModel, np.ndarray]:
    """The stop model on every calibration query, and each query's out-of-fold chance of a miss.

    ``features``: (options, rungs, queries, features); ``hits``: (options, rungs, queries), the last rung
    at option 0 being the full ladder, whose hits a stop must keep. Returns the chances as
    (options, rungs - 1, queries): the last rung is never checked."""
    options, rungs, queries = hits.shape
    kept = hits[:, :-1] >= hits[0, -1] - 1e-9
    folds = np.arange(queries) % FOLDS

    def fitted(columns: np.ndarray) -> StopModel:
        parts = [
            [_fit_logistic(features[o, r, columns], kept[o, r, columns]) for r in range(rungs - 1)]
            for o in range(options)
        ]
        arrays = range(len(fields(StopModel)))  # _fit_logistic returns one part of each, in field order
        return StopModel(*(np.array([[part[i] for part in row] for row in parts]) for i in arrays))

    def chances(model: StopModel, columns: np.ndarray) -> np.ndarray:
        return np.array(
            [[model.missed(o, r, features[o, r, columns]) for r in range(rungs - 1)] for o in range(options)]
        )

    every = np.ones(queries, bool)
    model = fitted(every)
    if queries < 2 * FOLDS:  # too few to hold any out
        return model, chances(model, every)
    missed = np.zeros((options, rungs - 1, queries))
    for fold in range(FOLDS):
        held = folds == fold
        missed[:, :, held] = chances(fitted(~held), held)
    return model, missed


def ladder_cost(
    choices: tuple[Choice, ...], missed: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query under ``choices`` (one per rung but the last): the rung that answers, the check option
    it answered under, and the bytes read: the scan up to that rung plus the re-ranking of every rung
    checked.

    ``missed``: (options, checked rungs, queries), the stop model's chances; ``scan_bytes``: (rungs,)
    bytes scanned up to each rung; ``check_bytes``: (options, rungs) bytes of re-ranking one query's
    shortlist."""
    queries = missed.shape[2]
    depth, answered_under = np.full(queries, len(scan_bytes) - 1), np.zeros(queries, int)
    read = np.zeros(queries)
    going = np.ones(queries, bool)
    for rung, choice in enumerate(choices):
        if choice is None:
            continue
        option, limit = choice
        read[going] += check_bytes[option, rung]
        stop = going & (missed[option, rung] <= limit)
        depth[stop], answered_under[stop], going = rung, option, going & ~stop
    read[going] += check_bytes[0, -1]
    return depth, answered_under, read + scan_bytes[depth]


def fit_rank_limits(
    missed: np.ndarray, hits: np.ndarray, scan_bytes: np.ndarray, check_bytes: np.ndarray, target: float
) -> tuple[list[Choice], float]:
    """The choices with the fewest mean bytes whose recall (mean of ``hits``, each query's share of its
    exact top-k where it is answered) is at least ``target``; and those bytes. Every combination is
    tried when there are at most ``EXHAUSTIVE``; else every combination of plain checks, then one rung
    at a time over every option for as long as a change reads less.

    ``hits``: (options, rungs, queries), the last rung at option 0 (the fixed plan's shortlist and
    stages); ``missed`` as in :func:`ladder_cost`, which also gives the bytes."""
    options = [
        [
            None,
            *(
                (option, float(v))
                for option in range(len(missed))
                for v in np.unique(np.quantile(missed[option, rung], LIMIT_QUANTILES))
            ),
        ]
        for rung in range(missed.shape[1])
    ]
    columns = np.arange(missed.shape[2])

    def cost(choices) -> float:
        depth, option, read = ladder_cost(tuple(choices), missed, scan_bytes, check_bytes)
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
