"""Budget planner, capacity planning, adaptive depth and latency-budget mode on small indexes."""

import time

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka import MatryoshkaError
from matryoshka.cli import app
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, Stage, exact_search
from matryoshka.index.adaptive import DepthModel, budget_ladder, budget_search
from matryoshka.index.capacity import best_option, bytes_per_vector, capacity_options
from matryoshka.index.planner import CALIBRATION_QUERIES, Calibration, PlanError, choose, pareto_frontier
from matryoshka.index.prefix_ladder import parse_prefix_ladder, rung_name
from matryoshka.index.rank_rule import OPTIONS
from matryoshka.index.stages import stages_text

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
    saved, stale = reopened.saved_plan()
    assert saved.chosen == plan.chosen and not stale
    result = reopened.search(held_out, K, plan="auto")
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
    fresh.search(data[1][:5], K, plan=plan)
    held = sum(a.nbytes for a in fresh.resident.values()) + fresh.store.held_bytes()
    assert held <= budget_gb * 1e9
    nothing = MatryoshkaIndex.open(index.store.root)
    mapped = nothing.plan(memory_gb=0, k=K, save=False, sample=20)
    nothing.search(data[1][:5], K, plan=mapped)
    assert mapped.chosen.resident == [] and nothing.resident == {} and nothing.store.held_bytes() == 0


def test_recall_option_picks_from_the_saved_frontier(planned, data):
    index, plan = planned
    low = index.search(data[1][:3], K, recall=0.5)
    high = index.search(data[1][:3], K, recall=1.0)
    assert low.funnel == stages_text(choose(plan.frontier, recall=0.5).stages(384, K))
    assert high.funnel == stages_text(choose(plan.frontier, recall=1.0).stages(384, K))
    assert choose(plan.frontier, recall=1.0).recall == 1.0


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
    assert pareto_frontier(plan.frontier) == plan.frontier


def test_plan_goes_stale_when_the_index_grows(tmp_path, data):
    corpus, _, extra = data
    index = MatryoshkaIndex.create(tmp_path / "idx", full_dim=384)
    index.add(corpus[:1000])
    index.plan(k=K, sample=20)
    assert index.saved_plan()[1] is False
    index.add(extra[:300])
    assert index.saved_plan()[1] is True
    remade = index.plan(k=K)  # re-made on demand, at the default sample
    assert remade.calibration == f"{CALIBRATION_QUERIES} held-in rows" and index.saved_plan()[1] is False


def test_latency_budget_never_answers_much_later_than_the_budget(planned, data):
    index, _ = planned
    ladder = budget_ladder(index.store, K, 300)
    index.load(ladder[0].dim)
    slow = {2}

    def sleepy(position: int, stage: Stage) -> None:
        if position in slow:
            time.sleep(1.0)

    budget = 0.15
    started = time.perf_counter()
    _, rows, stats, answered = budget_search(
        index.store, data[1][:1], ladder, index.resident, K, budget, before_stage=sleepy
    )
    elapsed = time.perf_counter() - started
    assert elapsed < budget + 0.1  # the slow stage is abandoned, not waited for
    assert answered < 2 and rows.shape == (1, K) and len(stats) == answered + 1
    slow.clear()
    _, _, _, deepest = budget_search(index.store, data[1][:1], ladder, index.resident, K, 30.0)
    assert deepest == len(ladder) - 1
    result = index.search(data[1][:1], K, latency_ms=30_000)
    assert result.answered == [str(ladder[-1])]


def test_adaptive_predictor_round_trips_with_the_index(planned, data):
    index, _ = planned
    model = index.train_adaptive(K)
    first = index.search(data[1], K, adaptive=True)
    reopened = MatryoshkaIndex.open(index.store.root)
    loaded = DepthModel.load(reopened.store.root, reopened.store.manifest["adaptive"])
    np.testing.assert_array_equal(loaded.weights, model.weights)
    for name, array in model.stop_model.arrays().items():
        np.testing.assert_array_equal(loaded.stop_model.arrays()[name], array)
    assert loaded.rank_limits == [None if choice is None else list(choice) for choice in model.rank_limits]
    assert (loaded.margin, loaded.confidence, loaded.funnel) == (model.margin, model.confidence, model.funnel)
    again = reopened.search(data[1], K, adaptive=True)
    np.testing.assert_array_equal(first.rows, again.rows)
    assert first.answered == again.answered and len(first.answered) == len(data[1])
    margin = reopened.search(data[1], K, adaptive="margin")
    assert len(margin.answered) == len(data[1])


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


@pytest.mark.parametrize("ladder", ["16|32|128:100,384:10", "binary@64|128|384:200,384:10"])
def test_prefix_ladder_extends_scores_and_full_depth_equals_the_plain_funnel(planned, data, ladder):
    from matryoshka.index.prefix_ladder import PrefixScan, parse_prefix_ladder, prefix_depth_search

    index, _ = planned
    queries = data[1]
    parsed = parse_prefix_ladder(ladder, 384, K)
    deepest = index.search(queries, K, funnel=stages_text(parsed.stages))
    never = lambda q, scores, position: np.zeros(len(q), bool)  # noqa: E731
    scores, rows, stats, answered = prefix_depth_search(index, queries, parsed, K, never)
    np.testing.assert_allclose(scores, deepest.scores, atol=1e-5)
    assert recall_at_k(rows, deepest.rows) == 1.0 and (answered == len(parsed.dims) - 1).all()
    # each extension equals a fresh scan at that prefix; bytes read are only the new coordinates
    scan = PrefixScan(index, queries, parsed)
    for dim in parsed.dims:
        extended, _, _ = scan.extend(dim, 50)
        fresh = index.search(queries, 50, funnel=[Stage(dim, 50, parsed.stages[0].precision)])
        np.testing.assert_allclose(extended, fresh.scores, atol=1e-5)
    per_coordinate = ROWS / 8 if parsed.stages[0].precision == "binary" else ROWS * 4
    assert [s.bytes_read for s in stats[: len(parsed.dims)]] == [
        per_coordinate * (dim - start) for start, dim in zip((0, *parsed.dims[:-1]), parsed.dims, strict=True)
    ]


def test_adaptive_prefix_ladder_stops_early_at_the_trained_recall(planned, data):
    index, _ = planned
    corpus, held_out, log = data
    ladder = "16|32|128:100,384:10"
    full_depth = index.search(held_out, K, funnel="128:100,384:10")
    index.train_adaptive(K, queries=log, funnel=ladder)
    _, exact = exact_search(held_out, corpus, K)

    def bytes_per_query(**options) -> float:
        searches = [index.search(query[None], K, **options) for query in held_out[:50]]
        return np.mean([sum(stat.bytes_read for stat in result.stages) for result in searches])

    fixed_bytes = bytes_per_query(funnel="128:100,384:10")
    prefixes = parse_prefix_ladder(ladder, 384, K)
    # the rank rule may also widen a rung's shortlist and check it quickly (64 dims, then 30 rows)
    checked = {rung_name(prefixes, rung, option) for rung in range(2) for option in range(len(OPTIONS))}
    assert {"16:3200,64:30", "32:400"} <= checked
    for rule in ("margin", "predictor", "rank"):
        result = index.search(held_out, K, adaptive=rule)
        rungs = {"16:800", "32:400", "128:100"} | (checked if rule == "rank" else set())
        assert set(result.answered) <= rungs  # shorter prefix, wider shortlist
        assert result.answered.count("128:100") < len(held_out) // 3  # most of this data is easy
        # every rule is fitted to read the fewest bytes at the recall target, not to stop soonest
        assert bytes_per_query(adaptive=rule) < 0.9 * fixed_bytes
        assert recall_at_k(result.rows, exact) >= recall_at_k(full_depth.rows, exact) - 0.02
    with pytest.raises(MatryoshkaError, match="the dims must increase"):
        index.train_adaptive(K, funnel="32|16:100")


@pytest.mark.parametrize("answer_bytes", [None, [1.0, 2.0], [3.0, 2.0]])
def test_depth_rules_stop_early_only_where_that_reads_fewer_bytes(answer_bytes):
    from matryoshka.index.adaptive import fit_rules

    rng = np.random.default_rng(0)
    count = 40
    truth = np.arange(count * K).reshape(count, K)
    queries = rng.standard_normal((count, 384))
    calibration = Calibration(queries, truth, None, K, "log")
    first = -np.sort(rng.random((count, 3 * K)), axis=1)
    stage_rows = [truth, truth]  # both positions exact: stopping early never costs recall
    model = fit_rules(DepthModel("16|32:100", K, np.inf), first, stage_rows, calibration, 1.0, answer_bytes)
    early = answer_bytes is None or answer_bytes[0] < answer_bytes[1]
    stops = model.margin_rule(queries, first, 0)
    assert stops.all() if early else not stops.any()
    assert (model.predicted_depth(queries, first) == (0 if early else 1)).all()


def test_depth_rules_never_stop_early_for_a_target_no_setting_keeps():
    from matryoshka.index.adaptive import fit_rules

    rng = np.random.default_rng(0)
    truth = np.arange(40 * K).reshape(40, K)
    half = np.where(np.arange(K) < K // 2, truth, -1)  # every position finds half the exact top-k
    calibration = Calibration(rng.standard_normal((40, 384)), truth, None, K, "log")
    first = -np.sort(rng.random((40, 3 * K)), axis=1)
    model = fit_rules(DepthModel("16|32:100", K, np.inf), first, [half, half], calibration, 0.9, [1.0, 2.0])
    assert model.margin == np.inf and model.confidence == 1.0


def test_without_a_recall_target_near_equal_recall_goes_to_the_fastest():
    from matryoshka.index.planner import Candidate

    full_scan = Candidate("384:10", [], 0, recall=1.0, latency_ms=140.0)
    binary = Candidate("binary@384:1000,384:10", [], 0, recall=0.998, latency_ms=0.57)
    coarse = Candidate("binary@128:300,384:10", [], 0, recall=0.85, latency_ms=0.25)
    assert choose([full_scan, binary, coarse], memory_gb=0.0) is binary
    assert choose([full_scan, binary, coarse], latency_ms=0.3) is coarse
    assert choose([full_scan, binary, coarse], recall=0.999) is full_scan


def test_rank_rule_features_and_limits():
    from matryoshka.index.rank_rule import fit_rank_limits, ladder_cost, stop_features

    shortlist = np.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.45, 0.44, -np.inf]])  # the second has a pad
    final = np.array([[6, 5], [4, -1]])  # the second query's answer came from its shortlist's tail
    # mean position (pads at 0) over the shortlist's length; 2nd score minus the last (a pad: top - 1)
    np.testing.assert_allclose(stop_features(scores, shortlist, final, 2), [[0.125, 0.2], [0.375, 0.95]])
    # (options, checked rungs, queries) chances of a miss: at twice the shortlist the second is safer
    missed = np.array([[[0.1, 0.9, 0.2]], [[0.1, 0.3, 0.1]]])
    hits = np.array([[[1.0, 0.5, 1.0], [1, 1, 1]], [[1.0, 1.0, 1.0], [1, 1, 1]]])
    scan, check = np.array([10.0, 20.0]), np.array([[3.0, 1.0], [6.0, 1.0]])
    depth, option, read = ladder_cost(((0, 0.2),), missed, scan, check)
    np.testing.assert_array_equal(depth, [0, 1, 0])
    np.testing.assert_array_equal(read, [13, 24, 13])
    depth, option, read = ladder_cost(((1, 0.3),), missed, scan, check)
    np.testing.assert_array_equal(np.stack([depth, option, read]), [[0, 0, 0], [1, 1, 1], [16, 16, 16]])
    choices, cost = fit_rank_limits(missed[:1], hits[:1], scan, check[:1], target=1.0)
    ((wide, limit),) = choices
    assert wide == 0 and 0.2 <= limit < 0.9 and cost == pytest.approx(50 / 3)  # the 0.9 would lose recall
    choices, cost = fit_rank_limits(missed, hits, scan, check, target=1.0)
    assert choices == [(1, pytest.approx(0.3))] and cost == pytest.approx(16)  # wider: every query stops
    assert fit_rank_limits(missed, hits, scan, check * 10, target=1.0)[0] == [None]  # checking costs more


def test_stop_model_ranks_misses_out_of_fold():
    from matryoshka.index.rank_rule import FOLDS, fit_stop_model

    rng = np.random.default_rng(0)
    count = 200
    # option 0: a miss when the mean position is past 0.3 (whatever the gap); option 1: never a miss
    features = np.stack([rng.random(count), rng.random(count)], axis=1)
    hits = np.ones((2, 2, count))
    hits[0, 0] = np.where(features[:, 0] > 0.3, 0.9, 1.0)
    model, missed = fit_stop_model(np.broadcast_to(features, (2, 2, count, 2)), hits)
    assert missed.shape == (2, 1, count) and model.coef.shape == (2, 1, 2)
    late = features[:, 0] > 0.3
    assert (missed[0, 0, late][:, None] > missed[0, 0, ~late][None, :]).mean() > 0.97  # out-of-fold AUC
    assert abs(model.coef[0, 0, 0]) > 5 * abs(model.coef[0, 0, 1])
    np.testing.assert_allclose(missed[1, 0], 1 / (1 + np.exp(10.0)))  # every fold all kept: sure
    # out of fold: each fifth is scored by a model fitted without it, so it differs from the full fit
    full = model.missed(0, 0, features)
    assert not np.allclose(full, missed[0, 0]) and FOLDS == 5


def test_rank_rule_passes_a_rung_in_the_next_scan(planned, data):
    from matryoshka.index.prefix_ladder import parse_prefix_ladder, prefix_depth_search
    from matryoshka.index.rank_rule import StopModel

    index, _ = planned
    ladder = parse_prefix_ladder("16|32|128:100,384:10", 384, K)
    never = lambda q, scores, position: np.zeros(len(q), bool)  # noqa: E731
    shape = (len(OPTIONS), 2, 2)  # a chance of a miss of 0.5 for every query at every checked rung
    even = StopModel(np.zeros(shape), np.ones(shape), np.zeros(shape), np.zeros(shape[:2]))
    _, _, _, answered = prefix_depth_search(index, data[1], ladder, K, never, [None, (1, 0.4)], even)
    assert (answered == 2).all()  # a limit no query meets
    # pass 16, check 32 at twice its shortlist with a limit every query meets
    _, rows, stats, answered = prefix_depth_search(index, data[1], ladder, K, never, [None, (1, 1.0)], even)
    assert (answered == 1).all() and stats[0].stage == "32:800" and stats[0].bytes_read == ROWS * 32 * 4
    assert [s.stage for s in stats] == ["32:800", "384:10"]
    direct = index.search(data[1], K, funnel="32:800,384:10")
    np.testing.assert_array_equal(rows, direct.rows)
    # a quick check of 16 at four times its shortlist: 3200 rows at 64 dims, the best 30 at full dim
    _, rows, stats, answered = prefix_depth_search(
        index, data[1][:5], ladder, K, never, [(5, 1.0), None], even
    )
    assert (answered == 0).all() and [s.stage for s in stats] == ["16:3200", "64:30", "384:10"]
    assert [s.bytes_read for s in stats[1:]] == [5 * min(3200, ROWS) * 64 * 4, 5 * 30 * 384 * 4]  # float32
    direct = index.search(data[1][:5], K, funnel="16:3200,64:30,384:10")
    np.testing.assert_array_equal(rows, direct.rows)
