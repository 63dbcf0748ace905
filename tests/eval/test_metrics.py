import numpy as np
import pytest

from matryoshka.eval.metrics import (
    mrr_at_k,
    ndcg_at_k,
    pearson,
    qrels_recall_at_k,
    recall_at_k,
    run_from_search,
    spearman,
)

QRELS = {"q1": {"a": 2, "c": 1}, "q2": {"x": 1}}
RUN = {"q1": {"a": 0.1, "b": 0.9, "c": 0.5}, "q2": {"y": 0.8, "z": 0.7}}


def test_ndcg_by_hand():
    # q1 ranks b(0) c(1) a(2): DCG = 1/log2(3) + 2/log2(4) = 0.63093 + 1; IDCG = 2 + 1/log2(3).
    q1 = (1 / np.log2(3) + 2 / 2) / (2 + 1 / np.log2(3))
    assert ndcg_at_k(RUN, QRELS, 10) == pytest.approx((q1 + 0.0) / 2, abs=1e-12)
    assert ndcg_at_k(RUN, QRELS, 1) == 0.0


def test_recall_and_mrr_by_hand():
    assert qrels_recall_at_k(RUN, QRELS, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert qrels_recall_at_k(RUN, QRELS, 3) == pytest.approx((2 / 2 + 0) / 2)
    assert mrr_at_k(RUN, QRELS, 10) == pytest.approx((1 / 2 + 0) / 2)
    assert mrr_at_k({"q1": RUN["q1"]}, QRELS, 10) == pytest.approx(0.25)  # missing query scores 0


def test_recall_against_exact_search():
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(
        2 / 6
    )


def test_correlations_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


def test_run_from_search_maps_rows_to_ids():
    run = run_from_search(["q"], ["d0", "d1", "d2"], np.array([[0.9, 0.5]]), np.array([[2, 0]]))
    assert run == {"q": {"d2": 0.9, "d0": 0.5}}


def test_retrieval_metrics_match_trec_eval():
    import pytrec_eval

    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(150)]
    qrels = {
        f"q{q}": {doc: int(rng.integers(1, 3)) for doc in rng.choice(docs, rng.integers(1, 6), replace=False)}
        for q in range(40)
    }
    run = {q: {doc: float(score) for doc, score in zip(docs, rng.random(150), strict=True)} for q in qrels}
    measures = {"ndcg_cut.10", "recall.10", "recall.100"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    expected = {
        m: np.mean([v[m] for v in per_query.values()]) for m in ("ndcg_cut_10", "recall_10", "recall_100")
    }
    top10 = {q: dict(sorted(docs.items(), key=lambda item: -item[1])[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    assert ndcg_at_k(run, qrels, 10) == pytest.approx(expected["ndcg_cut_10"], abs=1e-6)
    assert qrels_recall_at_k(run, qrels, 10) == pytest.approx(expected["recall_10"], abs=1e-6)
    assert qrels_recall_at_k(run, qrels, 100) == pytest.approx(expected["recall_100"], abs=1e-6)
    assert mrr_at_k(run, qrels, 10) == pytest.approx(
        np.mean([v["recip_rank"] for v in rr.values()]), abs=1e-6
    )
    assert 0 < expected["recall_10"] < expected["recall_100"] < 1  # the check compares non-trivial values
