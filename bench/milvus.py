"""Milvus Lite: funnel (v64 prefix ANN + full-dim rerank, client- or server-side) vs full-dim search.

Data: the first 20,000 real MiniLM sentence vectors of bench/search_data.py's set and 100 of its
held-out queries (cached embeddings). The same rows go into a local MatryoshkaIndex (float32) and
into Milvus Lite collections (prefix field FLAT or HNSW). Queries run one at a time (QPS = queries /
wall seconds). recall@10 is against exact full-dim search; "same top-10 as local" counts queries whose
Milvus funnel ids equal the local index's for the same funnel (ties within 1e-5 may swap).
Run: PYTHONPATH=src python bench/milvus.py [--rows 20000] [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, exact_search
from report import hardware, markdown_table, write_section
from search_data import ENCODE_SLICE, real_texts

K = 10


def vectors(rows: int, query_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached slices of the 100k real set (the same texts bench/search.py encodes) and its queries."""
    from matryoshka.cache import cached_encode_full
    from matryoshka.encoder import Encoder

    corpus, queries = real_texts()
    encoder = Encoder(device="cpu", batch_size=128)
    slices = [cached_encode_full(encoder, corpus[s : s + ENCODE_SLICE]) for s in range(0, rows, ENCODE_SLICE)]
    return np.concatenate(slices)[:rows], cached_encode_full(encoder, queries)[:query_count]


def one_by_one(search, queries: np.ndarray) -> tuple[list[list[str]], np.ndarray, float]:
    """Run each query alone; (ids, scores, queries per second)."""
    search(queries[:1])  # warm up
    ids, scores = [], []
    started = time.perf_counter()
    for query in queries:
        result = search(query[None])
        ids.append(result.ids[0])
        scores.append(result.scores[0])
    return ids, np.array(scores), len(queries) / (time.perf_counter() - started)


def same_top(found: list[list[str]], expected: list[list[str]], scores: np.ndarray) -> float:
    """Share of queries whose ids equal the expected ones, ignoring order among tied last scores."""
    same = 0
    for mine, theirs, row in zip(found, expected, scores, strict=True):
        firm = int((~np.isclose(row, row[-1], atol=1e-5)).sum())
        same += mine[:firm] == theirs[:firm]
    return same / len(found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    corpus, queries = vectors(args.rows, args.queries)
    ids = [str(i) for i in range(len(corpus))]
    _, truth = exact_search(queries, corpus, K)
    as_rows = lambda found: np.array([[int(i) for i in row] + [-1] * (K - len(row)) for row in found])  # noqa: E731
    lines, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        local = MatryoshkaIndex.create(Path(tmp) / "local", full_dim=384, dtype="float32")
        local.add(corpus, ids=ids)
        local.load(64)
        collections = {}
        for index_type in ("FLAT", "HNSW"):
            started = time.perf_counter()
            milvus = MatryoshkaIndex.create(
                Path(tmp) / f"{index_type}.db", full_dim=384, backend="milvus", index_type=index_type
            )
            milvus.add(corpus, ids=ids, progress=True)
            build = time.perf_counter() - started
            lines.append(f"- Milvus Lite insert + {index_type} index of {len(corpus)} rows: {build:.1f} s")
            collections[index_type] = milvus
        cases = [("Milvus Lite full-dim search (field `full`, FLAT)", "FLAT", dict(dim=384), None)]
        for shortlist in (200, 500):
            funnel = f"64:{shortlist}"
            for index_type in ("FLAT", "HNSW"):
                for place in ("client", "server"):
                    if index_type == "HNSW" and place == "server":
                        continue
                    name = f"Milvus Lite funnel {funnel}, v64 {index_type}, rerank {place}"
                    cases.append((name, index_type, dict(funnel=funnel, rerank=place), funnel))
        local_cache: dict[str, tuple] = {}
        for name, index_type, options, funnel in cases:
            index = collections[index_type]
            found, _, qps = one_by_one(lambda q, i=index, o=options: i.search(q, K, **o), queries)
            recall = recall_at_k(as_rows(found), truth, K)
            agree = "-"
            if funnel is not None:
                if funnel not in local_cache:
                    local_cache[funnel] = one_by_one(
                        lambda q, f=funnel: local.search(q, K, funnel=f), queries
                    )
                local_ids, local_scores, _ = local_cache[funnel]
                agree = f"{same_top(found, local_ids, local_scores):.3f}"
            table.append([name, f"{qps:.1f}", f"{recall:.4f}", agree])
            print(table[-1], flush=True)
        for funnel, (local_ids, _, qps) in local_cache.items():
            recall = recall_at_k(as_rows(local_ids), truth, K)
            table.append(
                [f"local MatryoshkaIndex funnel {funnel} (in-memory v64)", f"{qps:.1f}", f"{recall:.4f}", "-"]
            )
        for index in collections.values():
            index.close()
    headers = ["search", "QPS (1 query at a time)", "recall@10 vs exact full dim", "same top-10 as local"]
    text = (
        f"### Milvus Lite: funnel vs full-dim search ({len(corpus)} real MiniLM vectors, "
        f"{len(queries)} held-out queries, k={K})\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + "\n".join(lines)
        + f"\n\nHardware: {hardware()}; Milvus Lite runs in-process (gRPC on localhost), shared machine.\n"
    )
    write_section("milvus", text)
    print(text)


if __name__ == "__main__":
    main()
