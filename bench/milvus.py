"""Milvus: the funnel (prefix ANN on ``C`` + full-dim rerank on the server) against the
server's own full-dim search, on a real Milvus 2.3 server (and on Milvus Lite, a test stand-in).

Data: real MiniLM sentence vectors of bench/search_data.py's set (cached slices of 10,000; ``--rows``
is cut to the slices already in the cache unless ``--encode``) and held-out queries. The server is a
``milvus-server`` started by tests/milvus_server.py on loopback ports, or ``--uri`` (a server or a
cluster: the same cases run there). One index per first-stage type (FLAT, HNSW on ``v64``),
each built, flushed and waited on until indexed; queries run one at a time (QPS = queries / wall
seconds), every case in turn per query (so they share the load of a shared machine), at Bounded
consistency. recall@10 is against exact full-dim search (numpy); "= exact funnel"
is the share of queries whose top 10 equal an exact (numpy) funnel's: what the ANN first stage loses.
Run: PYTHONPATH=src python bench/milvus.py [--rows 100000] [--queries 200] [--lite-rows 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from matryoshka.dims import truncate
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import exact_search
from matryoshka.index.milvus import DEFAULT_EF, MilvusIndex
from milvus_server import MilvusServer
from report import hardware, markdown_table, write_section
from search_data import ENCODE_SLICE, real_texts

K = 10
PREFIX = 64
SHORTLISTS = (200, 500)


def vectors(rows: int, query_count: int, encode: bool) -> tuple[np.ndarray, np.ndarray]:
    """Cached slices of the 100k real set and its held-out queries; without ``encode``, only the slices
    already cached (encoding 100k texts takes about half an hour on 2 shared cores)."""
    from matryoshka.cache import cache_dir, cached_encode_full, texts_fingerprint
    from matryoshka.encoder import Encoder

    corpus, queries = real_texts()
    encoder = Encoder(device="cpu", batch_size=128)
    slices = []
    for start in range(0, rows, ENCODE_SLICE):
        texts = corpus[start : start + ENCODE_SLICE]
        path = cache_dir() / "embeddings" / f"{encoder.fingerprint}-{texts_fingerprint(texts)}.npy"
        if not encode and not path.exists():
            break
        slices.append(cached_encode_full(encoder, texts))
    if not slices:
        raise SystemExit("no cached slice of the real set: run with --encode")
    return np.concatenate(slices)[:rows], cached_encode_full(encoder, queries)[:query_count]


def interleaved(index: MilvusIndex, queries: np.ndarray, cases: list[str]) -> list[tuple]:
    """Each query alone through every funnel in turn, so that the cases share the machine's load as
    it changes; per case (row ids, queries per second, median ms). 5 warm-ups each."""
    for funnel in cases:
        for query in queries[:5]:
            index.search(query[None], K, funnel=funnel)
    found = [np.full((len(queries), K), -1, dtype=np.int64) for _ in cases]
    seconds = np.zeros((len(cases), len(queries)))
    for i, query in enumerate(queries):
        for c, funnel in enumerate(cases):
            started = time.perf_counter()
            ids = index.search(query[None], K, funnel=funnel).ids[0]
            seconds[c, i] = time.perf_counter() - started
            found[c][i, : len(ids)] = [int(key) for key in ids]
    return [
        (found[c], len(queries) / seconds[c].sum(), 1000 * np.median(seconds[c])) for c in range(len(cases))
    ]


def exact_funnel(corpus: np.ndarray, queries: np.ndarray, keep: int) -> np.ndarray:
    """The funnel computed exactly in numpy: top ``keep`` at the prefix, then top k at full dim."""
    _, shortlist = exact_search(truncate(queries, PREFIX), truncate(corpus, PREFIX), keep)
    scores = np.einsum("qd,qkd->qk", queries, corpus[shortlist])
    order = np.argsort(-scores, axis=1)[:, :K]
    return np.take_along_axis(shortlist, order, axis=1)


def build(target: str, corpus: np.ndarray, index_type: str, collection: str) -> tuple[MilvusIndex, float]:
    started = time.perf_counter()
    index = MilvusIndex.create(target, full_dim=corpus.shape[1], prefix_dim=PREFIX, index_type=index_type,
                               collection=collection, timeout=60)  # fmt: skip
    index.add(corpus, ids=[str(i) for i in range(len(corpus))], progress=True)
    index.wait_indexed()
    return index, time.perf_counter() - started


def measure(label: str, target: str, corpus, queries, index_types, shortlists) -> tuple[list, list]:
    """Rows of the table for one deployment: its full-dim search, then every funnel case."""
    _, truth = exact_search(queries, corpus, K)
    exact = {keep: exact_funnel(corpus, queries, keep) for keep in shortlists}
    rows, notes = [], []
    for index_type in index_types:
        index, seconds = build(target, corpus, index_type, f"bench_{index_type.lower()}_{time.time_ns()}")
        notes.append(f"- {label}: insert + flush + {index_type} index of {len(corpus)} rows: {seconds:.1f} s")
        cases = ["384"] * (index_type == index_types[0]) + [f"{PREFIX}:{keep}" for keep in shortlists]
        option = {"HNSW": f" ef={DEFAULT_EF} (raised to the shortlist)"}
        for funnel, (found, qps, median) in zip(cases, interleaved(index, queries, cases), strict=True):
            recall = f"{recall_at_k(found, truth, K):.4f}"
            if funnel == "384":
                name = f"{label} full-dim search (`C_full`, FLAT, exact)"
                rows.append([name, f"{qps:.1f}", f"{median:.1f}", recall, "-"])
            else:
                keep = int(funnel.split(":")[1])
                same = float(np.mean([set(a) == set(b) for a, b in zip(found, exact[keep], strict=True)]))
                name = f"{label} funnel {funnel}, v{PREFIX} {index_type}{option.get(index_type, '')}"
                rows.append([name, f"{qps:.1f}", f"{median:.1f}", recall, f"{same:.3f}"])
            print(rows[-1], flush=True)
        index.close()
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--lite-rows", type=int, default=20_000, help="0 skips the Milvus Lite rows")
    parser.add_argument("--uri", help="an existing Milvus server or cluster instead of a local milvus-server")
    parser.add_argument("--token")
    parser.add_argument("--encode", action="store_true", help="encode missing slices (slow on CPU)")
    args = parser.parse_args()
    corpus, queries = vectors(args.rows, args.queries, args.encode)
    print(f"{len(corpus)} rows, {len(queries)} queries", flush=True)
    table, notes = [], []
    server = None if args.uri else MilvusServer().start()
    try:
        target = args.uri or server.uri
        label = "server" if args.uri else "Milvus 2.3.5 standalone"
        rows, lines = measure(label, target, corpus, queries, ("FLAT", "HNSW"), SHORTLISTS)
        table += rows
        notes += lines
    finally:
        if server is not None:
            server.stop()
    if args.lite_rows:
        lite_corpus = corpus[: args.lite_rows]
        with tempfile.TemporaryDirectory() as tmp:
            rows, lines = measure(f"Milvus Lite (test stand-in, {len(lite_corpus)} rows)",
                                  str(Path(tmp) / "lite.db"), lite_corpus, queries[:50], ("FLAT",),
                                  (200,))  # fmt: skip
        table += rows
        notes += lines
    if len(corpus) < args.rows:
        notes.append(
            f"- {len(corpus)} of the {args.rows} rows asked for: only these 10,000-text slices of the real "
            "set were in the embedding cache (`--encode` encodes the rest; about 6 minutes per slice on "
            "this shared 2-core machine, so 100k did not fit the run)."
        )
    headers = ["search", "QPS (1 query at a time)", "p50 ms", "recall@10 vs exact full dim", "= exact funnel"]
    text = (
        f"### Milvus: funnel vs the server's full-dim search ({len(corpus)} real MiniLM vectors, "
        f"{len(queries)} held-out queries, k={K})\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + "\n".join(notes)
        + f"\n\nHardware: {hardware()}; the server (or Milvus Lite, in-process) shares the 2 cores with "
        "the benchmark client and other jobs; Bounded consistency; gRPC on loopback.\n"
    )
    write_section("milvus", text)
    print(text)


if __name__ == "__main__":
    main()
