"""Budget planner, predicted beside measured, in one run; writes docs/benchmarks.md.

For each set (bench/search_data.py): build an index, plan once on a *query log* (the first
``LOG_QUERIES`` queries; the planner measures every candidate funnel on it), choose a plan
for each budget point from that measurement, then run each chosen plan on the *other* held-out
queries (never seen by the planner) and report predicted beside measured recall@10 and median
single-query latency. Latency is measured on the same search path the planner times (funnel stages,
no id/text lookup). "real-rotated" is the real set through the rotation an index built with `--rotate` stores
(`index/rotation.py`).

    PYTHONPATH=src:bench python bench/plan.py [--sets real,real-rotated,synthetic]
        [--real-rows N] [--synthetic-rows N]
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

from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, exact_search
from matryoshka.index.planner import GB, PlanError, calibration_sample, choose, measure, pareto_frontier
from matryoshka.index.rotation import fit_rotation
from report import hardware, markdown_table, write_section
from search_data import synthetic_vectors

K = 10
# a prediction from n logged queries measured on m others strays by about 0.13 * sqrt(1/n + 1/m) at
# recall 0.9 (per-query recall spread 0.13): 0.004 here, so the 0.01 bar is 2.4 of those, not 1 (200 + 800)
LOG_QUERIES = 2000
HELD_OUT = 2000
ADD_ROWS = 100_000


def median_latency_ms(search, queries: np.ndarray) -> tuple[float, float]:
    """Median single-query milliseconds and QPS over ``queries`` (one warm-up)."""
    search(queries[:1])
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000), len(queries) / sum(times)


CHECK_QUERIES = 200  # held-out queries every candidate is measured on again for the frontier check
LATENCY_NOISE = 0.10  # relative: timings on these shared cores move by about this much
RECALL_NOISE = 0.005


def frontier_check(chosen, measured: dict, memory_gb: float | None) -> str:
    """'yes', or the held-out measurement that beats ``chosen`` beyond noise on latency and recall."""
    mine = measured[(chosen.funnel, tuple(chosen.resident))]
    for other in measured.values():
        fits = memory_gb is None or other.memory_bytes <= memory_gb * GB
        faster = other.latency_ms < mine.latency_ms * (1 - LATENCY_NOISE)
        if fits and faster and other.recall > mine.recall + RECALL_NOISE:
            return f"no: {other.funnel} {other.latency_ms:.2f} ms, {other.recall:.3f}"
    return "yes"


def run_set(name: str, corpus: np.ndarray, queries: np.ndarray, lines: list[str]) -> None:
    log, held_out = queries[:LOG_QUERIES], queries[LOG_QUERIES:]
    _, exact = exact_search(held_out, corpus, K)
    with tempfile.TemporaryDirectory() as directory:
        index = MatryoshkaIndex.create(Path(directory) / "idx", full_dim=corpus.shape[1])
        for start in range(0, len(corpus), ADD_ROWS):
            index.add(np.asarray(corpus[start : start + ADD_ROWS], np.float32))
        started = time.perf_counter()
        calibration = calibration_sample(index.store, K, log, LOG_QUERIES)
        measured = measure(index.store, calibration, index.resident)
        plan_s = time.perf_counter() - started
        frontier = pareto_frontier(measured)
        fastest = min(frontier, key=lambda c: c.latency_ms)
        prefix32 = len(corpus) * 32 * 4 / GB
        budgets = [
            ("recall 0.90", {"recall": 0.90}),
            ("recall 0.95", {"recall": 0.95}),
            ("recall 0.98", {"recall": 0.98}),
            ("recall 0.99", {"recall": 0.99}),
            ("recall 0.995", {"recall": 0.995}),
            ("memory 0 GB (all mapped)", {"memory_gb": 0.0}),
            (f"memory {prefix32:.4f} GB (a 32-dim prefix)", {"memory_gb": prefix32}),
            (f"latency {2 * fastest.latency_ms:.2f} ms", {"latency_ms": 2 * fastest.latency_ms}),
        ]
        started = time.perf_counter()
        checked = held_out[:CHECK_QUERIES]
        held_calibration = calibration_sample(index.store, K, checked, len(checked))
        on_held_out = {(c.funnel, tuple(c.resident)): c for c in measure(index.store, held_calibration, {})}
        check_s = time.perf_counter() - started
        rows, chosen_at, inside = [], {}, 0
        for label, budget in budgets:
            try:
                chosen = choose(measured, **budget)
            except PlanError as error:
                rows.append([label, str(error), "", "", "", "", "", "", ""])
                continue
            chosen_at[label] = chosen
            found = index.search(held_out, K, funnel=chosen).rows
            recall = recall_at_k(found, exact, K)
            inside += abs(recall - chosen.recall) <= chosen.recall_error
            latency, _ = median_latency_ms(lambda q, c=chosen: index.search(q, K, funnel=c), held_out[:200])
            rows.append(
                [
                    label,
                    chosen.funnel + ("" if chosen.resident else " (mapped)"),
                    f"{chosen.memory_bytes / 1e6:.1f}",
                    f"{chosen.recall:.3f} +- {chosen.recall_error:.3f}",
                    f"{recall:.3f}",
                    f"{chosen.latency_ms:.2f}",
                    f"{latency:.2f}",
                    f"{latency / chosen.latency_ms - 1:+.0%}",
                    frontier_check(chosen, on_held_out, budget.get("memory_gb")),
                ]
            )
            print(name, rows[-1], flush=True)
        lines += [
            f"### {name}: {len(corpus):,} rows x {corpus.shape[1]} dims, {len(held_out)} held-out queries",
            "",
            f"Planner: {len(measured)} candidate funnels measured on a {LOG_QUERIES}-query log"
            f" in {plan_s:.0f} s;"
            f" {len(frontier)} on the Pareto frontier (latency, recall, RAM). Every candidate measured"
            f" again on {len(checked)} held-out queries in {check_s:.0f} s for the frontier check"
            f" (a chosen plan is off the frontier when another candidate within its memory budget is"
            f" more than {LATENCY_NOISE:.0%} faster and more than {RECALL_NOISE} more accurate there)."
            f" Predicted recall is the log's mean +- the half-width of its 95% interval over the log's"
            f" queries; the held-out recall fell inside it at {inside} of {len(chosen_at)} budget points.",
            "",
            markdown_table(
                [
                    "budget",
                    "chosen funnel",
                    "RAM MB",
                    "recall predicted",
                    "recall measured",
                    "ms predicted",
                    "ms measured",
                    "latency error",
                    "on held-out frontier",
                ],
                rows,
            ),
            "",
        ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="real,real-rotated,synthetic")
    parser.add_argument("--real-rows", type=int, default=100_000)
    parser.add_argument("--synthetic-rows", type=int, default=200_000)
    args = parser.parse_args()
    started = time.perf_counter()
    lines: list[str] = []
    for name in args.sets.split(","):
        if name.startswith("real"):
            from search import cached_real

            corpus, queries = cached_real(args.real_rows, LOG_QUERIES + HELD_OUT)
            label = "real MiniLM"
            if name == "real-rotated":  # what MatryoshkaIndex.create(rotation=fit_rotation(...)) stores
                rotation = fit_rotation(corpus)
                corpus, queries, label = corpus @ rotation, queries @ rotation, label + ", rotated index"
            run_set(label, corpus, queries, lines)
        else:
            corpus, queries = synthetic_vectors(args.synthetic_rows, LOG_QUERIES + HELD_OUT)
            label = "synthetic" + (" (reduced from 1M)" if args.synthetic_rows < 1_000_000 else "")
            run_set(label, corpus, queries, lines)
        write_section(
            "plan",
            "## Budget planner\n\n"
            + __doc__.split("\n\n")[1]
            + "\n\n"
            + "\n".join(lines)
            + f"\nWall time {time.perf_counter() - started:.0f} s; {hardware()}, single-threaded BLAS.\n",
        )


if __name__ == "__main__":
    main()
