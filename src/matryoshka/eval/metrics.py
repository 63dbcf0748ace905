"""Metrics, in one place: everything that scores rankings or similarities lives here.

Retrieval metrics take a run and qrels in the pytrec_eval / ranx shape
(``{query_id: {doc_id: score}}`` and ``{query_id: {doc_id: relevance}}``) and average over the
queries that have qrels, as BEIR does. Gains are linear in the graded relevance (trec_eval's nDCG).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman rank correlation (e.g. cosine vs gold STS scores)."""
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold).statistic)


def pearson(predicted: Sequence[float], gold: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(predicted, gold).statistic)


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int | None = None) -> float:
    """Recall against exact search: mean fraction of each query's exact top-k ids that ``found`` returns.

    Both are ``(queries, >= k)`` id arrays (as the ``I`` of a search); ``k`` defaults to ``exact``'s width.
    """
    return float(np.mean(recall_per_query(found, exact, k)))


def recall_per_query(found: np.ndarray, exact: np.ndarray, k: int | None = None) -> np.ndarray:
    """Each query's fraction of its exact top-k ids that ``found`` returns (see :func:`recall_at_k`)."""
    found, exact = np.atleast_2d(found), np.atleast_2d(exact)
    k = exact.shape[1] if k is None else k
    if len(found) != len(exact):
        raise ValueError(f"found has {len(found)} queries, exact has {len(exact)}")
    return np.array([len(np.intersect1d(f[:k], e[:k])) for f, e in zip(found, exact, strict=True)]) / k


def run_from_search(
    query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, rows: np.ndarray
) -> Run:
    """A run from a search's ``(D, I)``: row indices mapped to document ids."""
    return {
        qid: {doc_ids[row]: float(score) for score, row in zip(score_row, id_row, strict=True) if row >= 0}
        for qid, score_row, id_row in zip(query_ids, scores, rows, strict=True)
    }


def _ranked(docs: dict[str, float], k: int) -> list[str]:
    """Top k doc ids by score; ties broken by doc id so results are deterministic."""
    return [doc for doc, _ in sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:k]]


def ndcg_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean nDCG@k with linear gains (trec_eval's ndcg_cut, as BEIR reports it)."""
    discounts = 1 / np.log2(np.arange(2, k + 2))
    values = []
    for qid, judged in qrels.items():
        gains = [judged.get(doc, 0) for doc in _ranked(run.get(qid, {}), k)]
        ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
        best = float(np.dot(ideal, discounts[: len(ideal)]))
        values.append(float(np.dot(gains, discounts[: len(gains)])) / best if best > 0 else 0.0)
    return float(np.mean(values))


def qrels_recall_at_k(run: Run, qrels: Qrels, k: int = 100) -> float:
    """Mean fraction of each query's relevant documents found in its top k."""
    values = []
    for qid, judged in qrels.items():
        relevant = {doc for doc, rel in judged.items() if rel > 0}
        if relevant:
            values.append(len(relevant.intersection(_ranked(run.get(qid, {}), k))) / len(relevant))
    return float(np.mean(values))


def mrr_at_k(run: Run, qrels: Qrels, k: int = 10) -> float:
    """Mean reciprocal rank of the first relevant document within the top k (0 when none)."""
    values = []
    for qid, judged in qrels.items():
        ranks = [r for r, doc in enumerate(_ranked(run.get(qid, {}), k), 1) if judged.get(doc, 0) > 0]
        values.append(1 / ranks[0] if ranks else 0.0)
    return float(np.mean(values))
