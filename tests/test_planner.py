"""Budget planner and capacity planning on small indexes: budgets resolved before a search."""

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, exact_search
from matryoshka.index.capacity import best_option, capacity_options
from matryoshka.index.planner import (
    Calibration,
    Candidate,
    PlanError,
    choose,
    pareto_frontier,
)
from matryoshka.index.stages import stages_text
from matryoshka.quantize import bytes_per_vector

K = 10
ROWS = 3000
SAMPLE = 60  # calibration queries: enough for these tests, quick


def decaying(count: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around cluster centres with a Matryoshka-like decaying coordinate spectrum."""
    rng = np.random.default_rng(seed)
    scale = (1 + np.arange(384) / 16) ** -0.75
    x = centres[rng.integers(0, len(centres), count)] + 0.8 * rng.standard_normal((count, 384)) * scale
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    centres = np.random.default_rng(1).standard_normal((60, 384)) * (1 + np.arange(384) / 16) ** -0.75
    return decaying(ROWS, 2, centres), decaying(150, 3, centres), decaying(800, 4, centres)


@pytest.fixture(scope="module")
def planned(tmp_path_factory, data):
    corpus, _, _ = data
    index = MatryoshkaIndex.create(tmp_path_factory.mktemp("plan") / "idx", full_dim=384, dtype="float32")
    index.add(corpus)
    plan = index.plan(recall=0.9, k=K, sample=SAMPLE)
    return index, plan


def test_plan_is_saved_on_the_frontier_and_meets_recall_on_held_out_queries(planned, data):
    index, plan = planned
    corpus, held_out, _ = data
    assert plan.chosen.recall >= 0.9
    assert any(c.funnel == plan.chosen.funnel and c.resident == plan.chosen.resident for c in plan.frontier)
    faster = [c for c in plan.frontier if c.latency_ms < plan.chosen.latency_ms]
    assert all(c.recall < 0.9 for c in faster)  # the fastest plan meeting the target
    reopened = MatryoshkaIndex.open(index.store.root)
    saved = reopened.saved_plan()
    assert saved.chosen == plan.chosen and not saved.is_stale(reopened.live_rows)
    result = reopened.search(held_out, K, funnel=saved.chosen)
    assert reopened.search(held_out, K).funnel == result.funnel  # a fresh saved plan is the default
    _, exact = exact_search(held_out, corpus, K)
    assert recall_at_k(result.rows, exact) >= 0.9 - 0.03
    # each measured recall carries its interval: none where every sample query was exact
    assert all((c.recall_error > 0) == (c.recall < 1) and c.recall_error < 0.1 for c in saved.frontier)
    assert set(reopened.resident) == set(plan.chosen.resident)


def test_recall_interval_is_the_sample_mean_and_its_95_percent_half_width():
    truth = np.arange(40).reshape(4, 10)
    found = truth.copy()
    found[2:, 5:] += 100  # the last two queries find 5 of their 10
    calibration = Calibration(np.zeros((4, 384), np.float32), truth, None, K, "4 logged queries")
    mean, half_width = calibration.recall_interval(found)
    assert mean == 0.75
    assert half_width == pytest.approx(1.96 * np.sqrt(0.25 / 3) / 2, abs=1e-12)


def test_memory_budget_bounds_the_bytes_held_in_ram(planned, data):
    index, _ = planned
    budget_gb = ROWS * 40 * 4 / 1e9  # room for a 32-dim float32 prefix, not a 64-dim one
    plan = index.plan(memory_gb=budget_gb, k=K, save=False, sample=20)
    assert plan.chosen.memory_bytes <= budget_gb * 1e9
    fresh = MatryoshkaIndex.open(index.store.root)
    fresh.search(data[1][:5], K, funnel=plan.chosen)
    held = sum(a.nbytes for a in fresh.resident.values()) + fresh.store.held_bytes()
    assert held <= budget_gb * 1e9
    nothing = MatryoshkaIndex.open(index.store.root)
    mapped = nothing.plan(memory_gb=0, k=K, save=False, sample=20)
    nothing.search(data[1][:5], K, funnel=mapped.chosen)
    assert mapped.chosen.resident == [] and nothing.resident == {} and nothing.store.held_bytes() == 0


def test_plan_resolves_recall_and_latency_budgets_from_its_frontier(planned, data):
    index, plan = planned
    low, high = plan.for_recall(0.5), plan.for_recall(1.0)
    assert low is min((c for c in plan.frontier if c.recall >= 0.5), key=lambda c: c.latency_ms)
    assert high.recall == 1.0 and high.latency_ms >= low.latency_ms
    fast = plan.for_latency(low.latency_ms)
    assert fast.latency_ms <= low.latency_ms and fast.recall >= low.recall
    result = index.search(data[1][:3], 30, funnel=high)  # shortlists widen with k, as the default's do
    assert result.funnel == stages_text(high.stages(384, 30), 384) and result.rows.shape == (3, 30)
    with pytest.raises(PlanError, match="nearest feasible plan"):
        plan.for_latency(1e-9)


def test_impossible_budget_names_the_nearest_feasible_plan(planned, tmp_path):
    index, plan = planned
    with pytest.raises(PlanError, match="nearest feasible plan"):
        choose(plan.frontier, latency_ms=1e-6, recall=0.999)
    result = CliRunner().invoke(
        app,
        [
            "index",
            "plan",
            str(index.store.root),
            "--latency-ms",
            "1e-6",
            "--recall",
            "0.999",
            "--sample",
            "20",
        ],
    )
    assert result.exit_code == 2 and "nearest feasible plan" in result.output
    sized = CliRunner().invoke(app, ["index", "plan", str(index.store.root), "--vectors", "1000000000"])
    assert sized.exit_code == 2 and "--vectors needs --memory-gb" in sized.output
    sized = CliRunner().invoke(
        app, ["index", "plan", str(index.store.root), "--vectors", "1000000000", "--memory-gb", "20"]
    )
    assert sized.exit_code == 0 and "binary@128" in sized.output and "chosen" in sized.output


def test_pareto_frontier_drops_dominated_points(planned):
    _, plan = planned
    assert pareto_frontier(plan.frontier) == plan.frontier  # a saved frontier is already one
    fast = Candidate("binary@128:100,384:10", [], 0, recall=0.80, latency_ms=0.2)
    good = Candidate("binary@384:300,384:10", [], 0, recall=0.99, latency_ms=0.5)
    slower_worse = Candidate("64:1000,384:10", [64], 10, recall=0.95, latency_ms=0.9)
    same_but_more_ram = Candidate("binary@384:300,384:10", [384], 99, recall=0.99, latency_ms=0.5)
    exact = Candidate("384:10", [], 0, recall=1.0, latency_ms=30.0)
    measured = [exact, slower_worse, good, same_but_more_ram, fast]
    assert pareto_frontier(measured) == [fast, good, exact]


def test_plan_goes_stale_when_the_index_grows(tmp_path, data):
    corpus, _, extra = data
    index = MatryoshkaIndex.create(tmp_path / "idx", full_dim=384)
    index.add(corpus[:1000])
    index.plan(k=K, sample=20)
    assert not index.saved_plan().is_stale(index.live_rows)
    index.add(extra[:300])
    assert index.saved_plan().is_stale(index.live_rows)
    assert index.search(extra[:2], K).funnel == index.info()["funnel"] == index.store.manifest["funnel"]
    assert index.default_funnel() == index.store.manifest["funnel"]  # a stale plan is no longer the default
    remade = index.plan(k=K, sample=100)  # re-made on demand
    assert remade.calibration == "100 held-in rows" and remade.rows == 1300
    assert not index.saved_plan().is_stale(index.live_rows)


def test_capacity_table_counts_bytes_exactly_and_measures_recall(data):
    corpus = data[0][:1200]
    options = capacity_options(10_000_000, 1.0, corpus, K)
    by = {(o.precision, o.dim): o for o in options}
    assert by[("float32", 32)].total_bytes == 10_000_000 * 128
    assert by[("binary", 64)].bytes_per_vector == 8 == bytes_per_vector(64, "binary")
    assert by[("float32", 384)].recall == 1.0
    chosen = best_option(options, 1.0)
    assert chosen.fits and chosen.total_bytes <= 1e9
    with pytest.raises(Exception, match="nothing fits"):
        best_option(capacity_options(10**12, 0.001, corpus, K), 0.001)


def test_without_a_recall_target_near_equal_recall_goes_to_the_fastest():
    full_scan = Candidate("384:10", [], 0, recall=1.0, latency_ms=140.0)
    binary = Candidate("binary@384:1000,384:10", [], 0, recall=0.998, latency_ms=0.57)
    coarse = Candidate("binary@128:300,384:10", [], 0, recall=0.85, latency_ms=0.25)
    assert choose([full_scan, binary, coarse], memory_gb=0.0) is binary
    assert choose([full_scan, binary, coarse], latency_ms=0.3) is coarse
    assert choose([full_scan, binary, coarse], recall=0.999) is full_scan
