"""Searches driven by budgets: a saved plan, a recall target, a latency budget, or per-query depth.

``MatryoshkaIndex.search`` hands over here when one of ``plan``, ``recall``, ``latency_ms`` or
``adaptive`` is given; the mechanisms live in ``planner.py`` (plans) and ``adaptive.py`` (depth).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.adaptive import (
    RECALL_SLACK,
    DepthModel,
    budget_ladder,
    budget_search,
    depth_search,
    fit_rules,
    train_depth_model,
)
from matryoshka.index.planner import (
    CALIBRATION_QUERIES,
    Candidate,
    Plan,
    calibration_sample,
    choose,
    make_plan,
)
from matryoshka.index.prefix_ladder import (
    PrefixLadder,
    ladder_answers,
    ladder_over,
    parse_prefix_ladder,
    prefix_depth_search,
    rung_names,
)
from matryoshka.index.rank_rule import fit_rank_limits, fit_stop_model
from matryoshka.index.search import funnel_search
from matryoshka.index.stages import Stage, StageStats, parse_funnel

if TYPE_CHECKING:
    from matryoshka.index.api import MatryoshkaIndex

ADAPTIVE_RULES = ("predictor", "margin", "rank")
# queries the depth rules are fitted on (of a log, or held-in rows): held to equal recall +-0.005, the
# rank rule fitted on 200 queries lost up to 0.005 on others and saved 0-38% of the synthetic set's
# binary@128:300 plan by log; on 1000, 0.001 and 29-34% (2000 read no less, in twice the time)
DEPTH_QUERIES = 1000


def saved_plan(index: MatryoshkaIndex) -> Plan | None:
    record = index.store.manifest.get("plan")
    return Plan.from_json(record) if record else None


def plan_is_stale(index: MatryoshkaIndex, plan: Plan) -> bool:
    live = index.store.rows - len(index.store.deleted_rows())
    return plan.is_stale(live)


def scaled_stages(candidate: Candidate, full_dim: int, plan_k: int, k: int) -> list[Stage]:
    """A candidate's stages for top-``k`` (shortlists grow with k like the default funnel's)."""
    stages = candidate.stages(full_dim, plan_k)
    grow = max(1.0, k / plan_k)
    return [*(Stage(s.dim, int(s.keep * grow), s.precision) for s in stages[:-1]), Stage(stages[-1].dim, k)]


def run_candidate(
    index: MatryoshkaIndex, queries: np.ndarray, candidate: Candidate, plan_k: int, k: int
) -> tuple[np.ndarray, np.ndarray, list[StageStats], list[Stage]]:
    """Search with a plan: only the candidate's resident prefixes are loaded into RAM."""
    stages = scaled_stages(candidate, index.store.full_dim, plan_k, k)
    for dim in candidate.resident:
        index.load(dim)
    held = {dim: index.resident[dim] for dim in candidate.resident}
    scores, rows, stats = funnel_search(index.store, queries, stages, held)
    return scores, rows, stats, stages


def current_plan(index: MatryoshkaIndex, k: int) -> Plan:
    return saved_plan(index) or index.plan(k=k)


def depth_model(index: MatryoshkaIndex, k: int) -> DepthModel:
    """The saved depth model for top-``k`` (loaded once per open index), trained now if there is none."""
    record = index.store.manifest.get("adaptive")
    if record is None or record["k"] != k:
        return index.train_adaptive(k)
    cached = index.__dict__.get("_depth_model")
    if cached is None or cached[0] != record:
        index.__dict__["_depth_model"] = (record, DepthModel.load(index.store.root, record))
    return index.__dict__["_depth_model"][1]


def train(
    index: MatryoshkaIndex,
    k: int,
    queries: np.ndarray | None = None,
    funnel: str | None = None,
    target_recall: float | None = None,
) -> tuple[DepthModel, list[Stage]]:
    """Fit both depth rules for the ladder ``funnel`` (default: the prefix ladder over the saved plan's
    funnel, else over the calibrated default) to keep ``target_recall`` (default: the full ladder's own
    recall on the sample; for a plain funnel, less half of ``RECALL_SLACK``)."""
    store = index.store
    if funnel is None:
        plan = saved_plan(index)
        chosen = plan.chosen.funnel if plan and "," in plan.chosen.funnel else None
        stages = parse_funnel(chosen, store.full_dim, plan.k) if chosen else index.stages_for(k)
        funnel = ladder_over(stages)
    prefixes = parse_prefix_ladder(funnel, store.full_dim, k)
    if prefixes is not None:
        return _train_prefix_ladder(index, k, queries, funnel, prefixes, target_recall)
    ladder = parse_funnel(funnel, store.full_dim, k)
    if len(ladder) < 2:
        raise MatryoshkaError(f"adaptive depth needs a funnel of two or more stages, got {funnel}")
    if ladder[0].precision == "float":
        index.load(ladder[0].dim)
    calibration = calibration_sample(store, k, queries, DEPTH_QUERIES)
    wide = [*ladder[:-1], Stage(ladder[-1].dim, calibration.width)]
    _, found, _ = funnel_search(store, calibration.queries, wide, index.resident)
    target = calibration.recall(found) - RECALL_SLACK / 2 if target_recall is None else target_recall
    return train_depth_model(store, calibration, ladder, index.resident, target), ladder


def _train_prefix_ladder(
    index: MatryoshkaIndex,
    k: int,
    queries: np.ndarray | None,
    funnel: str,
    ladder: PrefixLadder,
    target_recall: float | None,
) -> tuple[DepthModel, list[Stage]]:
    calibration = calibration_sample(index.store, k, queries, DEPTH_QUERIES)
    first, answers, costs = ladder_answers(index, calibration, ladder)
    full_depth = recall_at_k(answers[-1], calibration.truth, k)
    # the full ladder's own recall, no slack: fitted to 0.0025 below it on a 200-query log, the rank rule
    # lost 0.003-0.008 on other queries, and the bar it is held to is equal recall +-0.005
    target = full_depth if target_recall is None else target_recall
    # a prefix's answer is exact when the shortlist holds the true top-k: the rule reads the gap between
    # the k-th score and the shortlist's last
    model = DepthModel(funnel, k, np.inf, margin_column=3)
    model.stop_model, missed = fit_stop_model(costs.features, costs.hits)
    model.rank_limits, _ = fit_rank_limits(missed, costs.hits, costs.scan_bytes, costs.check_bytes, target)
    # margin and predictor finish a query at one rung, at the ladder's own shortlist (check option 0)
    answer_bytes = costs.scan_bytes + costs.check_bytes[0]
    return fit_rules(model, first, answers, calibration, target, answer_bytes), ladder.stages


def planned_search(
    index: MatryoshkaIndex,
    queries: np.ndarray,
    k: int,
    plan: str | Plan | None = None,
    latency_ms: float | None = None,
    recall: float | None = None,
    adaptive: bool | str = False,
) -> tuple[np.ndarray, np.ndarray, list[StageStats], list[Stage], list[str]]:
    """(scores, rows, stats, stages, stage that answered each query)."""
    if sum([plan is not None, latency_ms is not None, recall is not None, bool(adaptive)]) > 1:
        raise MatryoshkaError("give at most one of plan, latency_ms, recall and adaptive")
    store = index.store
    if latency_ms is not None:
        if latency_ms <= 0:
            raise MatryoshkaError(f"latency_ms must be positive, got {latency_ms}")
        saved = saved_plan(index)
        first_keep = scaled_stages(saved.chosen, store.full_dim, saved.k, k)[0].keep if saved else k * 100
        ladder = budget_ladder(store, k, first_keep)
        index.load(ladder[0].dim)
        scores, rows, stats, answered = budget_search(
            store, queries, ladder, index.resident, k, latency_ms / 1000, expected=index.stage_seconds
        )
        return scores, rows, stats, ladder[: answered + 1], [str(ladder[answered])] * len(queries)
    if adaptive:
        rule = "predictor" if adaptive is True else adaptive
        if rule not in ADAPTIVE_RULES:
            raise MatryoshkaError(f"adaptive must be one of {', '.join(ADAPTIVE_RULES)}, got {rule!r}")
        model = depth_model(index, k)
        decide = model.predictor_rule if rule == "predictor" else model.margin_rule
        prefixes = parse_prefix_ladder(model.funnel, store.full_dim, k)
        if rule == "rank" and prefixes is None:
            raise MatryoshkaError(
                f"the rank rule runs on a prefix ladder (like 32|64:1000,384:10), not {model.funnel}"
            )
        if rule == "rank" and (model.rank_limits is None or model.stop_model is None):
            raise MatryoshkaError("the saved depth model has no rank rule yet: retrain it (train_adaptive)")
        if prefixes is not None:
            limits = model.rank_limits if rule == "rank" else None
            scores, rows, stats, answered = prefix_depth_search(
                index, queries, prefixes, k, decide, limits, model.stop_model
            )
            names = rung_names(prefixes, limits)
            return scores, rows, stats, prefixes.stages, [names[a] for a in answered]
        ladder = parse_funnel(model.funnel, store.full_dim, k)
        if ladder[0].precision == "float":
            index.load(ladder[0].dim)
        scores, rows, stats, answered = depth_search(store, queries, ladder, index.resident, k, decide)
        return scores, rows, stats, ladder, [str(ladder[a]) for a in answered]
    if isinstance(plan, Plan):
        chosen, plan_k = plan.chosen, plan.k
    elif plan in (None, "auto"):
        current = current_plan(index, k)
        chosen = choose(current.frontier, recall=recall) if recall is not None else current.chosen
        plan_k = current.k
    else:
        raise MatryoshkaError(f"plan must be 'auto' or a Plan, got {plan!r}")
    scores, rows, stats, stages = run_candidate(index, queries, chosen, plan_k, k)
    return scores, rows, stats, stages, [str(stages[-1])] * len(queries)


def new_plan(
    index: MatryoshkaIndex,
    k: int,
    memory_gb: float | None,
    latency_ms: float | None,
    recall: float | None,
    queries: np.ndarray | None,
    sample: int | None,
) -> Plan:
    sample = CALIBRATION_QUERIES if sample is None else sample
    return make_plan(index.store, index.resident, k, memory_gb, latency_ms, recall, queries, sample=sample)
