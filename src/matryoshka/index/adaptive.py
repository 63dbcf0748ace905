"""Per-query depth: stop a funnel early for easy queries, or when a latency budget runs out.

A *ladder* is a funnel read as a sequence of answers: after stage ``i`` the query's top-k is that
stage's best k. Two rules decide, per query, which stage answers:

* margin rule: stop at a coarse stage once the gap between its k-th and (k+1)-th score is at least a
  threshold (a wide gap means deeper stages rarely change the top-k set);
* learned predictor: a multinomial logistic regression on the query's 32-dim prefix and the first
  stage's top-score margins predicts the smallest stage whose top-k equals exact full-dim search;
  the query goes to the smallest stage whose cumulative probability reaches a confidence level.

Both thresholds are set on the calibration sample so recall@k matches the fixed funnel's within
``RECALL_SLACK``; the model (weights and thresholds) is saved in the index directory.
Latency-budget mode runs the ladder from the smallest prefix and returns the deepest stage that
finished inside the budget (later stages run in a worker thread the caller stops waiting for).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.search import rerank, scan
from matryoshka.index.stages import Stage, StageStats

if TYPE_CHECKING:
    from matryoshka.index.planner import Calibration
    from matryoshka.index.rank_rule import StopModel
    from matryoshka.index.store import Store

PREFIX_FEATURES = 32
RECALL_SLACK = 0.005
NEVER_EARLY = 2.0  # a predictor confidence no stage reaches: every query goes to the deepest stage
PREDICTOR_FILE = "adaptive-predictor.npz"


# ---- running a ladder ---------------------------------------------------------------------------
def run_stage(
    store: Store,
    queries: np.ndarray,
    stage: Stage,
    previous: np.ndarray | None,
    resident: dict[int, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, StageStats]:
    """One stage of a ladder: a scan (first) or a re-rank of ``previous`` rows."""
    started = time.perf_counter()
    if previous is None:
        dense = resident.get(stage.dim) if stage.precision == "float" else None
        scores, rows, read = scan(store, queries, stage, dense)
    else:
        scores, rows, read = rerank(store, queries, previous, stage)
    return scores, rows, StageStats(str(stage), scores.shape[1], time.perf_counter() - started, read)


def margins(scores: np.ndarray, k: int) -> np.ndarray:
    """Per query: top-1 minus k-th score, k-th minus (k+1)-th, k-th minus 2k-th, and k-th minus the
    last of the shortlist (how far below the top-k the rows left out begin); 0 where missing."""
    width = scores.shape[1]

    def at(i: int) -> np.ndarray:
        column = scores[:, min(i, width - 1)]
        return np.where(np.isfinite(column), column, scores[:, 0] - 1)

    kth = at(k - 1)
    return np.stack([at(0) - kth, kth - at(k), kth - at(2 * k - 1), kth - at(width - 1)], axis=1)


def depth_search(
    store: Store,
    queries: np.ndarray,
    ladder: list[Stage],
    resident: dict[int, np.ndarray],
    k: int,
    decide: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, list[StageStats], np.ndarray]:
    """Run ``ladder``; after each non-final stage ``decide(queries, scores, position)`` says which
    queries stop there. Returns top-k scores and rows, stats, and the stage index that answered each."""
    queries = truncate(np.atleast_2d(np.asarray(queries, np.float32)))
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_rows = np.full((len(queries), k), -1, np.int64)
    answered = np.full(len(queries), len(ladder) - 1)
    active = np.arange(len(queries))
    rows = None
    stats = []
    for position, stage in enumerate(ladder):
        scores, rows, stat = run_stage(store, queries[active], stage, rows, resident)
        stats.append(stat)
        last = position == len(ladder) - 1
        stop = np.ones(len(active), bool) if last else decide(queries[active], scores, position)
        width = min(k, scores.shape[1])
        out_scores[active[stop], :width] = scores[stop, :width]
        out_rows[active[stop], :width] = rows[stop, :width]
        answered[active[stop]] = position
        active, rows = active[~stop], rows[~stop]
        if len(active) == 0:
            break
    return out_scores, out_rows, stats, answered


# ---- the two rules ------------------------------------------------------------------------------
@dataclass
class DepthModel:
    """Thresholds (and predictor weights) of per-query depth for one ladder at one k."""

    funnel: str
    k: int
    margin: float
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    classes: np.ndarray | None = None
    confidence: float = 1.0
    margin_column: int = 1  # which of ``margins`` the rule reads: the k-th vs (k+1)-th gap by default
    rank_limits: list[list | None] | None = None  # rank rule: (check option, limit) per rung
    stop_model: StopModel | None = None  # rank rule: the chance of a miss the limits apply to

    def margin_rule(self, queries: np.ndarray, scores: np.ndarray, position: int) -> np.ndarray:
        return margins(scores, self.k)[:, self.margin_column] >= self.margin

    def features(self, queries: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return np.concatenate([truncate(queries, PREFIX_FEATURES), margins(scores, self.k)], axis=1)

    def predicted_depth(self, queries: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Smallest stage whose cumulative predicted probability reaches ``confidence`` (the deepest when
        none does)."""
        assert self.weights is not None and self.bias is not None and self.classes is not None
        logits = self.features(queries, scores) @ self.weights.T + self.bias
        if logits.shape[1] == 1:  # two classes: sklearn keeps one logit
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        reached = np.cumsum(probs, axis=1) >= self.confidence - 1e-9
        first = np.where(reached.any(axis=1), reached.argmax(axis=1), len(self.classes) - 1)
        return self.classes[first]

    def predictor_rule(self, queries: np.ndarray, scores: np.ndarray, position: int) -> np.ndarray:
        if position == 0:
            self._depth = self.predicted_depth(queries, scores)
        else:
            self._depth = self._depth[self._continuing]
        stop = self._depth <= position
        self._continuing = ~stop
        return stop

    def save(self, root: Path) -> str:
        np.savez(
            root / PREDICTOR_FILE,
            weights=self.weights,
            bias=self.bias,
            classes=self.classes,
            **(self.stop_model.arrays() if self.stop_model else {}),
        )
        return PREDICTOR_FILE

    @classmethod
    def load(cls, root: Path, record: dict) -> DepthModel:
        from matryoshka.index.rank_rule import StopModel

        model = cls(record["funnel"], record["k"], record["margin"], confidence=record["confidence"])
        model.margin_column = record.get("margin_column", 1)
        model.rank_limits = record.get("rank_limits")
        path = root / record["predictor"]
        if not path.exists():
            raise MatryoshkaError(f"index {root} is damaged: missing {path.name}")
        with np.load(path) as saved:
            model.weights, model.bias, model.classes = saved["weights"], saved["bias"], saved["classes"]
            model.stop_model = StopModel.from_arrays(saved)
        return model

    def record(self, predictor: str) -> dict:
        return {
            "funnel": self.funnel,
            "k": self.k,
            "margin": self.margin,
            "margin_column": self.margin_column,
            "confidence": self.confidence,
            "rank_limits": self.rank_limits,
            "predictor": predictor,
        }


def without_own_rows(scores: np.ndarray, rows: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Scores with each held-in query's own row dropped (its self-match would fake a wide margin)."""
    if calibration.self_rows is None:
        return scores
    own = rows == calibration.self_rows[:, None]
    return np.stack([s[~o][: s.shape[0] - 1] for s, o in zip(scores, own, strict=True)])


def smallest_exact_stage(stage_rows: list[np.ndarray], truth: np.ndarray, k: int) -> np.ndarray:
    """Per query, the first stage whose top-k set equals the exact top-k (the last stage if none)."""
    labels = np.full(len(truth), len(stage_rows) - 1)
    for position in range(len(stage_rows) - 1, -1, -1):
        same = np.array([set(f[:k]) == set(t) for f, t in zip(stage_rows[position], truth, strict=True)])
        labels[same] = position
    return labels


def train_depth_model(
    store: Store,
    calibration: Calibration,
    ladder: list[Stage],
    resident: dict[int, np.ndarray],
    target_recall: float,
) -> DepthModel:
    """Fit the margin threshold and the predictor on the calibration sample so each rule keeps
    recall@k at least ``target_recall``, while stopping as early as that allows."""
    from matryoshka.index.stages import stages_text

    k = calibration.k
    queries = calibration.queries
    width = calibration.width
    wide = [*ladder[:-1], Stage(ladder[-1].dim, width, ladder[-1].precision)]
    stage_rows, rows, first = [], None, None
    for stage in wide:
        scores, rows, _ = run_stage(store, queries, stage, rows, resident)
        if first is None:
            first = without_own_rows(scores, rows, calibration)
        stage_rows.append(calibration.answers(rows))
    model = DepthModel(stages_text(ladder), k, np.inf)
    return fit_rules(model, first, stage_rows, calibration, target_recall)


def fit_rules(
    model: DepthModel,
    first: np.ndarray,
    stage_rows: list[np.ndarray],
    calibration: Calibration,
    target_recall: float,
    answer_bytes: np.ndarray | None = None,
) -> DepthModel:
    """Set ``model``'s margin threshold and predictor from the first position's scores (without the
    query's own row) and every position's answers on the calibration sample: of the settings that keep
    ``target_recall``, the one reading the fewest bytes (``answer_bytes``: what a query answered at each
    position reads; a position further on costs more when not given). Stopping early is not always
    cheaper: a short prefix's wide shortlist can cost more to re-rank than a longer prefix's scan."""
    from sklearn.linear_model import LogisticRegression

    k, queries, last = calibration.k, calibration.queries, len(stage_rows) - 1
    cost = np.arange(last + 1, dtype=float) if answer_bytes is None else np.asarray(answer_bytes, float)

    def recall_if(depth: np.ndarray) -> float:
        chosen = np.stack([stage_rows[d][q] for q, d in enumerate(depth)])
        return recall_at_k(chosen, calibration.truth, k)

    def cheapest(settings: list[tuple[float, np.ndarray]]) -> float | None:
        """The setting whose depths keep the recall target at the fewest mean bytes (first on ties)."""
        keeping = [(cost[depth].mean(), n, value) for n, (value, depth) in enumerate(settings)]
        keeping = [item for item in keeping if recall_if(settings[item[1]][1]) >= target_recall]
        return min(keeping)[2] if keeping else None

    gaps = margins(first, k)[:, model.margin_column]
    thresholds = [*np.sort(np.unique(gaps)), np.inf]  # inf: never stop early
    margin = cheapest([(t, np.where(gaps >= t, 0, last)) for t in thresholds])
    model.margin = np.inf if margin is None else float(margin)  # none keeps a target above the ladder's
    labels = smallest_exact_stage(stage_rows, calibration.truth, k)
    features = model.features(queries, first)
    if len(np.unique(labels)) < 2:
        model.weights = np.zeros((1, features.shape[1]))
        model.bias = np.array([-10.0 if labels[0] == 0 else 10.0])  # the one logit is the last class's
        model.classes = np.array([0, last])
    else:
        classifier = LogisticRegression(max_iter=2000, C=1.0).fit(features, labels)
        model.weights, model.bias = classifier.coef_, classifier.intercept_
        model.classes = classifier.classes_
    settings = []
    for confidence in [*np.linspace(0.5, 1.0, 51), NEVER_EARLY]:
        model.confidence = float(confidence)
        settings.append((float(confidence), model.predicted_depth(queries, first)))
    best = cheapest(settings)
    model.confidence = 1.0 if best is None else best
    return model


# ---- latency-budget mode ------------------------------------------------------------------------
def budget_ladder(store: Store, k: int, first_keep: int) -> list[Stage]:
    """Smallest chunk prefix first, then every larger chunk end, halving the shortlist each step."""
    ends = [end for _, end in store.chunks]
    ladder, keep = [], first_keep
    for position, dim in enumerate(ends):
        last = position == len(ends) - 1
        ladder.append(Stage(dim, k if last else max(k + 1, keep)))
        keep //= 2
    return ladder


def budget_search(
    store: Store,
    queries: np.ndarray,
    ladder: list[Stage],
    resident: dict[int, np.ndarray],
    k: int,
    budget_s: float,
    before_stage: Callable[[int, Stage], None] | None = None,
    expected: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[StageStats], int]:
    """Deepest ladder stage finished within ``budget_s`` of the call (the first stage always runs).

    Each later stage runs in a worker thread; the caller waits only for what is left of the budget,
    and skips a stage whose expected seconds (``expected``, updated here) exceed it. Returns top-k
    scores, rows, stats of finished stages, and the index of the stage that answered.
    """
    started = time.perf_counter()
    expected = {} if expected is None else expected
    queries = truncate(np.atleast_2d(np.asarray(queries, np.float32)))
    if before_stage is not None:
        before_stage(0, ladder[0])
    scores, rows, stat = run_stage(store, queries, ladder[0], None, resident)
    best = (scores[:, :k], rows[:, :k], 0)
    stats = [stat]
    for position, stage in enumerate(ladder[1:], start=1):
        left = budget_s - (time.perf_counter() - started)
        if left <= 0 or expected.get(str(stage), 0.0) > left:
            break
        holder: dict = {}

        def work(
            stage: Stage = stage, previous: np.ndarray = rows, position: int = position, holder: dict = holder
        ) -> None:
            if before_stage is not None:
                before_stage(position, stage)
            holder["result"] = run_stage(store, queries, stage, previous, resident)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        worker.join(left)
        if "result" not in holder:  # still running: answer with what finished
            expected[str(stage)] = max(expected.get(str(stage), 0.0), left)
            break
        scores, rows, stat = holder["result"]
        expected[str(stage)] = stat.seconds
        stats.append(stat)
        best = (scores[:, :k], rows[:, :k], position)
    return best[0], best[1], stats, best[2]
