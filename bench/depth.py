"""Per-query depth, an experiment kept out of the search API: does stopping a funnel early for easy
queries pay in what users pay, latency? Writes docs/benchmarks.md.

The fixed plan runs every stage of a funnel for every query. The learned predictor (the seed's
per-query dimension predictor) reads, after the first stage, the query's 32-dim prefix and the first
stage's score margins, and a multinomial logistic regression predicts the first stage whose top-k is
already exact; the query stops at the first stage whose cumulative probability reaches a confidence
fitted on a query log to keep the fixed funnel's recall there. Both run one query at a time on
held-out queries through the same stage code (``matryoshka.index.search``); the table gives recall,
bytes read, median latency and QPS side by side. The index keeps per-query depth out of its API
because no rule met the bar of 1.3x the fixed plan's latency at equal recall (+-0.005).

    PYTHONPATH=src:bench python bench/depth.py [--set real|synthetic] [--rows N]
"""

from __future__ import annotations

# ruff: noqa: E402  (thread counts must be set before numpy loads)
import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from matryoshka.dims import truncate
from matryoshka.eval.metrics import recall_at_k, recall_per_query
from matryoshka.index import MatryoshkaIndex, exact_search
from matryoshka.index.search import rerank, scan
from matryoshka.index.stages import parse_funnel
from report import hardware, markdown_table, write_section
from search_data import synthetic_vectors

K = 10
LOG, HELD_OUT = 1000, 1000
FUNNELS = {"real": "64:1000,128:300,256:100", "synthetic": "32:1000,64:300,128:100,256:30"}


def margins(scores: np.ndarray) -> np.ndarray:
    """Top-1 minus k-th, k-th minus (k+1)-th, k-th minus 2k-th and k-th minus the shortlist's last."""
    kth = scores[:, K - 1]
    return np.stack(
        [scores[:, 0] - kth, kth - scores[:, K], kth - scores[:, 2 * K - 1], kth - scores[:, -1]], 1
    )


def run(index, query: np.ndarray, stages, depth_of=None) -> tuple[np.ndarray, int, int]:
    """One query through ``stages``, stopping at ``depth_of(query, first scores)`` when given: its
    top-k rows, the stage that answered and the bytes read."""
    scores, rows, read = scan(index.store, query, stages[0], index.resident.get(stages[0].dim))
    depth = len(stages) - 1 if depth_of is None else depth_of(query, scores)
    for stage in stages[1 : depth + 1]:
        scores, rows, more = rerank(index.store, query, rows, stage, index.resident)
        read += more
    return rows[0, :K], depth, read


def fit_predictor(index, stages, log: np.ndarray, exact: np.ndarray, fixed_recall: float):
    """Labels: the first stage whose top-k equals the exact top-k; confidence: the lowest that keeps
    recall within 0.0025 of the fixed funnel's on the log."""
    from sklearn.linear_model import LogisticRegression

    answers = []
    for query in log:
        scores, rows, _ = scan(index.store, query[None], stages[0], index.resident.get(stages[0].dim))
        found = [rows[0, :K]]
        for stage in stages[1:]:
            _, rows, _ = rerank(index.store, query[None], rows, stage, index.resident)
            found.append(rows[0, :K])
        answers.append((np.concatenate([truncate(query[None], 32)[0], margins(scores)[0]]), found))
    features = np.stack([f for f, _ in answers])
    hits = np.array(
        [
            [recall_per_query(f[None], e[None], K)[0] for f in found]
            for (_, found), e in zip(answers, exact, strict=True)
        ]
    )
    labels = np.array([int(np.argmax(row == 1.0)) if (row == 1.0).any() else len(stages) - 1 for row in hits])
    model = LogisticRegression(max_iter=2000).fit(features, labels)
    probabilities = model.predict_proba(features)
    for confidence in np.linspace(0.5, 1.0, 51):
        reached = np.cumsum(probabilities, axis=1) >= confidence - 1e-9
        depth = model.classes_[np.where(reached.any(1), reached.argmax(1), len(model.classes_) - 1)]
        if hits[np.arange(len(log)), depth].mean() >= fixed_recall - 0.0025:
            break

    def depth_of(query: np.ndarray, scores: np.ndarray) -> int:
        feature = np.concatenate([truncate(query, 32)[0], margins(scores)[0]])
        cumulative = np.cumsum(model.predict_proba(feature[None])[0])
        reached = np.flatnonzero(cumulative >= confidence - 1e-9)
        return int(model.classes_[reached[0] if len(reached) else -1])

    return depth_of, float(confidence)


def measure(index, stages, queries, exact, depth_of=None) -> list[str]:
    found, depths, read, seconds = [], [], [], []
    run(index, queries[:1], stages, depth_of)  # warm-up
    for query in queries:
        started = time.perf_counter()
        rows, depth, bytes_read = run(index, query[None], stages, depth_of)
        seconds.append(time.perf_counter() - started)
        found.append(rows), depths.append(depth), read.append(bytes_read)
    names, counts = np.unique([str(stages[d]) for d in depths], return_counts=True)
    answered = ", ".join(f"{n}: {c / len(depths):.0%}" for n, c in zip(names, counts, strict=True))
    recall = recall_at_k(np.stack(found), exact, K)
    median = float(np.median(seconds) * 1000)
    return [
        f"{recall:.3f}",
        f"{np.mean(read) / 1e6:.3f}",
        f"{median:.3f}",
        f"{len(queries) / sum(seconds):.0f}",
        answered,
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", default="real")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.set == "real":
        from search import cached_real

        corpus, queries = cached_real(args.rows, LOG + HELD_OUT)
    else:
        corpus, queries = synthetic_vectors(args.rows, LOG + HELD_OUT)
    log, held_out = queries[:LOG], queries[LOG:]
    _, exact_log = exact_search(log, corpus, K)
    _, exact = exact_search(held_out, corpus, K)
    with tempfile.TemporaryDirectory() as directory:
        index = MatryoshkaIndex.create(Path(directory) / "idx", full_dim=corpus.shape[1])
        index.add(corpus)
        stages = parse_funnel(FUNNELS[args.set], corpus.shape[1], K)
        index.resident.clear()
        index.load(stages[0].dim)
        fixed = measure(index, stages, log, exact_log)
        depth_of, confidence = fit_predictor(index, stages, log, exact_log, float(fixed[0]))
        rows = [["fixed funnel", *measure(index, stages, held_out, exact)]]
        rows.append(
            [
                f"learned predictor (confidence {confidence:.2f})",
                *measure(index, stages, held_out, exact, depth_of),
            ]
        )
    ratio = float(rows[0][3]) / float(rows[1][3])
    text = (
        f"## Per-query depth (experiment)\n\n{__doc__.split(chr(10) * 2)[1]}\n\n"
        f"{args.set}: {len(corpus):,} x {corpus.shape[1]}, funnel `{FUNNELS[args.set]},{corpus.shape[1]}:{K}`"
        f" (first stage held in RAM), predictor fitted on {LOG} logged queries,"
        f" measured on {HELD_OUT} others.\n\n"
        + markdown_table(["mode", "recall@10", "MB read/query", "median ms", "QPS", "answered at"], rows)
        + f"\n\nThe predictor's median latency is {1 / ratio:.2f}x the fixed funnel's (the bar was 1.3x"
        f" faster at equal recall). Wall time {time.perf_counter() - started:.0f} s; {hardware()},"
        f" single-threaded BLAS, 1-minute load average {os.getloadavg()[0]:.1f}.\n"
    )
    write_section("depth", text)
    print(text)


if __name__ == "__main__":
    main()
