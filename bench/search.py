"""Funnel search vs faiss, side by side in one run on the same vectors; writes docs/benchmarks.md.

Sets: (a) real MiniLM embeddings of staged sentences with held-out sentences as queries, (b) synthetic
384-dim vectors with a decaying spectrum and clusters (bench/search_data.py documents both).
Peers: faiss IndexFlatIP at full dim (exact, also the recall reference), faiss HNSW at full dim, and
the two-stage searches a faiss user assembles: IndexRefineFlat over an int8 IndexScalarQuantizer, and
over binary sign codes (IndexLSH without rotation, Hamming distance).
Ours: the default search a user gets with no options (``index.search(queries, k)``: the funnel the
index calibrated when it was built), the planned search (``index.plan(recall=...)`` once, then
``index.search(queries, k, funnel=plan.chosen)``), MatryoshkaIndex funnel search (a first stage over a
resident float32 prefix, or a popcount scan of the stored sign bits of a prefix, then re-ranking
gathered float16 rows), and an HNSW graph over a short prefix only (on the real set also over a
rotated index's prefix), then the same re-ranking.

    PYTHONPATH=src:bench python bench/search.py [--sets real,synthetic] [--real-rows N] [--synthetic-rows N]
"""

from __future__ import annotations

# ruff: noqa: E402  (thread counts must be set before numpy and faiss load)
import os

for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex
from matryoshka.index.planner import funnel_cost
from matryoshka.index.rotation import fit_rotation
from matryoshka.index.stages import parse_funnel
from report import hardware, markdown_table, write_section
from search_data import SEED, real_texts, synthetic_vectors

K = 10
BATCH = 64
ADD_ROWS = 100_000
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 40
PLANNED_RECALL = (0.95, 0.99)
# Our prefix graphs per set: (rotated index, prefix dim, M, efConstruction, funnels). Base MiniLM does
# not nest (its 32-dim graph tops out near 0.86 recall), so the real set's graphs are over a rotated
# index's 80 or 96 dims; the synthetic vectors' spectrum already decays.
PREFIX_GRAPHS = {
    "real": [
        (False, 32, 16, 20, ("32:500,128:100", "32:1000,128:100,256:30")),
        (True, 80, 8, 40, ("80:1000", "80:2000")),
        (True, 96, 8, 48, ("96:1000", "96:2000")),
        (True, 128, 8, 60, ("128:1000",)),
    ],
    "synthetic": [
        (False, 32, 16, 20, ("32:200,128:50", "32:500,128:100", "32:1000,128:100,256:30")),
        (False, 32, 8, 28, ("32:1000,128:100", "32:2000,128:200")),
    ],
}


def cached_real(rows: int, query_count: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Real vectors from the embedding cache: as many 10k-text slices as are already encoded (in order)."""
    from matryoshka.cache import cache_dir, texts_fingerprint
    from matryoshka.encoder import Encoder
    from search_data import ENCODE_SLICE

    corpus, queries = real_texts(rows, query_count)
    fingerprint = Encoder(device="cpu").fingerprint

    def cached(texts: list[str]) -> np.ndarray | None:
        path = cache_dir() / "embeddings" / f"{fingerprint}-{texts_fingerprint(texts)}.npy"
        return np.load(path) if path.exists() else None

    query_vectors = cached(queries)
    slices = []
    for start in range(0, rows, ENCODE_SLICE):
        block = cached(corpus[start : start + ENCODE_SLICE])
        if block is None:
            break
        slices.append(block)
    if query_vectors is None or not slices:
        raise SystemExit("real vectors are not cached yet: run search_data.real_vectors() first")
    return np.concatenate(slices), query_vectors


def timed_qps(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, batch: int, count: int
) -> float:
    """Queries per second over the first ``count`` queries sent ``batch`` at a time (after one warm-up)."""
    search(queries[:batch])
    started = time.perf_counter()
    for start in range(0, count, batch):
        search(queries[start : start + batch])
    return count / (time.perf_counter() - started)


def graph_bytes(index) -> int:
    """Bytes of an HNSW graph's links (serialised size minus its stored vectors)."""
    return len(faiss.serialize_index(index)) - index.ntotal * index.d * 4


def run_set(
    name: str, corpus: np.ndarray, queries: np.ndarray, count_b1: int, count_b64: int, publish: Callable
) -> list[list]:
    rows, dim = corpus.shape
    results: list[list] = []

    def record(method: str, build_s: float, memory: int, found: np.ndarray, b1: float, b64: float) -> None:
        recall = recall_at_k(found, exact, K)
        results.append(
            [method, f"{recall:.4f}", f"{b1:.1f}", f"{b64:.1f}", f"{memory / 1e6:.0f}", f"{build_s:.1f}"]
        )
        print(name, results[-1], flush=True)
        publish(results)

    # faiss exact flat: the recall reference and the QPS baseline.
    started = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(corpus)
    flat_build = time.perf_counter() - started
    _, exact = flat.search(queries, K)
    flat_b1 = timed_qps(lambda q: flat.search(q, K), queries, 1, count_b1)
    flat_b64 = timed_qps(lambda q: flat.search(q, K), queries, BATCH, count_b64)
    record("faiss IndexFlatIP, full dim (exact)", flat_build, rows * dim * 4, exact, flat_b1, flat_b64)
    flat.reset()
    gc.collect()

    # Ours: build the on-disk index, hold the first stage's prefix in memory, funnel search.
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        started = time.perf_counter()
        index = MatryoshkaIndex.create(Path(tmp) / "idx", full_dim=dim)
        for start in range(0, rows, ADD_ROWS):
            index.add(corpus[start : start + ADD_ROWS])
        index.calibrate()  # as `index build` does after its batches (add re-calibrates as rows double)
        build = time.perf_counter() - started

        def default(q):
            return index.search(q, K).rows

        found = default(queries)
        memory = sum(a.nbytes for a in index.resident.values()) + index.store.held_bytes()
        b1, b64 = timed_qps(default, queries, 1, count_b1 * 4), timed_qps(default, queries, BATCH, count_b64)
        record(
            f"ours: default search, no options (calibrated {index.info()['funnel']})",
            build,
            memory,
            found,
            b1,
            b64,
        )
        for target in PLANNED_RECALL:
            started = time.perf_counter()
            chosen = index.plan(recall=target).chosen
            planned_s = time.perf_counter() - started

            def planned(q, chosen=chosen):
                return index.search(q, K, funnel=chosen).rows

            found = planned(queries)
            b1, b64 = (
                timed_qps(planned, queries, 1, count_b1 * 4),
                timed_qps(planned, queries, BATCH, count_b64),
            )
            label = f"ours: planned, plan(recall={target}): {chosen.funnel} (planned in {planned_s:.0f} s)"
            record(label, build, chosen.memory_bytes + index.store.held_bytes(), found, b1, b64)
        index.resident.clear()
        index.store.release_copies()
        funnels = ["32:200,128:50", "32:500,128:50", "32:1000,128:100", "64:200,128:50", "64:500,128:100"]
        funnels += ["64:1000,128:100,256:30", "64:2000,128:200,256:50", "128:500,256:50", "128:1000,256:100"]
        funnels += ["128:2000,256:200", "128:3000,256:300", "256:1000", "256:2000"]
        funnels += [f"binary@384:{keep}" for keep in (200, 300, 500, 1000)]
        funnels += ["binary@256:500", "binary@256:1000", "binary@128:300", "binary@128:500"]
        funnels += ["binary@128:1000,256:50", "binary@64:1000,128:100", "binary@64:2000,128:200"]
        chosen = []
        for text in funnels:
            stages = parse_funnel(text, dim, K)
            if stages[0].precision == "float":
                index.load(stages[0].dim)
            found = index.search(queries, K, funnel=stages).rows
            recall = recall_at_k(found, exact, K)
            print(name, "funnel", text, f"recall {recall:.4f}", flush=True)
            chosen.append((recall, text))
        dtype = index.store.manifest["dtype"]
        cost = {text: funnel_cost(parse_funnel(text, dim, K), rows, dtype) for text in funnels}
        good = sorted((text for recall, text in chosen if recall >= 0.99), key=cost.get)
        good_float = [text for text in good if not text.startswith("binary")]
        best_recall = max(chosen)[1]
        shown = list(dict.fromkeys([*good[:2], *good_float[:1], best_recall]))
        # the two cheapest funnels twice: re-ranking from the float16 chunk files (a few MB of RAM), and
        # from a resident float32 full dim (the RAM the faiss two-stage peers hold for re-ranking)
        runs = [(text, False) for text in shown] + [(text, True) for text in good[:2]]
        for text, full_resident in runs:
            stages = parse_funnel(text, dim, K)
            first = stages[0]
            binary = first.precision == "binary"
            index.resident.clear()  # a row holds only what its memory column counts
            held = ([] if binary else [first.dim]) + ([dim] if full_resident else [])
            for held_dim in held:
                index.load(held_dim)

            def ours(q, stages=stages):
                return index.search(q, K, funnel=stages).rows

            found = ours(queries)
            memory = (rows * first.dim // 8 if binary else 0) + sum(a.nbytes for a in index.resident.values())
            b1 = timed_qps(ours, queries, 1, count_b1 * 4)
            b64 = timed_qps(ours, queries, BATCH, count_b64)
            label = f"ours: funnel {text},{dim}:{K}" + (", full dim resident" if full_resident else "")
            record(label, build, memory, found, b1, b64)
        index.resident.clear()

        # Ours, approximate first stage: HNSW over a prefix only, then re-ranking.
        rotated_index, note = None, ""
        for rotated, graph_dim, neighbours, ef_construction, texts in PREFIX_GRAPHS[name]:
            if (
                rotated and rotated_index is None
            ):  # the same rows through a rotation: short prefixes rank well
                started = time.perf_counter()
                rotation = fit_rotation(corpus)
                rotated_index = MatryoshkaIndex.create(Path(tmp) / "rotated", full_dim=dim, rotation=rotation)
                for start in range(0, rows, ADD_ROWS):
                    rotated_index.add(corpus[start : start + ADD_ROWS])
                note = f" (rotated index, fitted and built in {time.perf_counter() - started:.1f} s)"
            graph_index = rotated_index if rotated else index
            started = time.perf_counter()
            graph_index.build_hnsw(graph_dim, neighbours, ef_construction)
            prefix_build = time.perf_counter() - started
            prefix_graph = graph_bytes(graph_index._graphs[graph_dim])
            for text in texts:
                stages = parse_funnel(text, dim, K)

                def ours_hnsw(q, stages=stages, graph_index=graph_index):
                    return graph_index.search(q, K, funnel=stages, hnsw=True).rows

                found = ours_hnsw(queries)
                b1 = timed_qps(ours_hnsw, queries, 1, count_b1 * 4)
                b64 = timed_qps(ours_hnsw, queries, BATCH, count_b64)
                memory = prefix_graph + rows * graph_dim * 4
                graph_mb = prefix_graph / 1e6
                label = f"ours: HNSW@{graph_dim} M={neighbours} efC={ef_construction} graph {graph_mb:.1f} MB"
                record(
                    f"{label}, funnel {text}{note if rotated else ''}", prefix_build, memory, found, b1, b64
                )
        index.close()
        if rotated_index is not None:
            rotated_index.close()

    # faiss two-stage: int8 scalar quantiser shortlist, exact re-ranking of k_factor * k rows.
    started = time.perf_counter()
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(corpus)
    refine = faiss.IndexRefineFlat(sq8)
    refine.add(corpus)
    refine_build = time.perf_counter() - started
    for k_factor in (2, 4, 8):
        parameters = faiss.IndexRefineSearchParameters(k_factor=k_factor)

        def peer(q, parameters=parameters):
            return refine.search(q, K, params=parameters)[1]

        found = peer(queries)
        b1 = timed_qps(peer, queries, 1, count_b1)
        b64 = timed_qps(peer, queries, BATCH, count_b64)
        memory = rows * dim * 5
        record(f"faiss RefineFlat(SQ8), k_factor {k_factor}", refine_build, memory, found, b1, b64)
    refine.reset()
    gc.collect()

    # faiss two-stage over a binary first stage: sign bits (IndexLSH without rotation or thresholds,
    # Hamming distance), exact re-ranking of k_factor * k rows.
    started = time.perf_counter()
    refine = faiss.IndexRefineFlat(faiss.IndexLSH(dim, dim, False, False))
    refine.add(corpus)
    refine_build = time.perf_counter() - started
    for k_factor in (20, 30, 50, 100, 200):
        parameters = faiss.IndexRefineSearchParameters(k_factor=k_factor)

        def peer_binary(q, parameters=parameters):
            return refine.search(q, K, params=parameters)[1]

        found = peer_binary(queries)
        b1 = timed_qps(peer_binary, queries, 1, count_b1 * 4)
        b64 = timed_qps(peer_binary, queries, BATCH, count_b64)
        memory = rows * dim * 4 + rows * dim // 8
        record(f"faiss RefineFlat(binary LSH), k_factor {k_factor}", refine_build, memory, found, b1, b64)
    refine.reset()
    gc.collect()

    # faiss HNSW at full dim.
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    hnsw.add(corpus)
    hnsw_build = time.perf_counter() - started
    full_graph = graph_bytes(hnsw)
    for ef in (64, 128, 256):
        hnsw.hnsw.efSearch = ef

        def peer_hnsw(q):
            return hnsw.search(q, K)[1]

        found = peer_hnsw(queries)
        b1 = timed_qps(peer_hnsw, queries, 1, count_b1 * 4)
        b64 = timed_qps(peer_hnsw, queries, BATCH, count_b64)
        memory = full_graph + rows * dim * 4
        record(
            f"faiss HNSW full dim, graph {full_graph / 1e6:.0f} MB, efSearch {ef}",
            hnsw_build,
            memory,
            found,
            b1,
            b64,
        )
    hnsw.reset()
    gc.collect()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", default="real,synthetic")
    parser.add_argument("--real-rows", type=int, default=100_000)
    parser.add_argument("--synthetic-rows", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    headers = ["method", f"recall@{K}", "QPS b1", f"QPS b{BATCH}", "memory MB", "build s"]

    def publish(name: str, label: str, rows: list[list], done: bool) -> None:
        """Rewrite the section after every measurement, so a long run keeps what it measured; the other
        set's table (from another run) is kept."""
        state = "" if done else "\n\n(Run in progress: the rows above are measured, later ones are missing.)"
        subsection = f"### {label}\n\n{markdown_table(headers, rows)}{state}\n"
        saved_table(name).parent.mkdir(parents=True, exist_ok=True)
        saved_table(name).write_text(subsection)
        write_tables(time.perf_counter() - started)

    for name in args.sets.split(","):
        if name == "real":
            corpus, queries = cached_real(args.real_rows, args.queries)
            label = f"(a) real: {len(corpus):,} MiniLM vectors of sentences, {len(queries)} held-out queries"
        else:
            corpus, queries = synthetic_vectors(args.synthetic_rows, args.queries, seed=SEED)
            label = (
                f"(b) synthetic: {len(corpus):,} x 384 clustered decaying-spectrum, {len(queries)} queries"
            )
        count_b1 = 50 if len(corpus) > 300_000 else 200
        count_b64 = min(len(queries), 256 if len(corpus) > 300_000 else 1024) // BATCH * BATCH
        rows = run_set(
            name, corpus, queries, count_b1, count_b64, lambda r, n=name, lab=label: publish(n, lab, r, False)
        )
        publish(name, label, rows, True)
        del corpus, queries
        gc.collect()


def saved_table(name: str) -> Path:
    """Each set's latest table, kept outside the repo so runs of one set keep the other's table."""
    from matryoshka.cache import cache_dir

    return cache_dir() / "bench" / f"search-{name}.md"


def current_tables() -> dict[str, str]:
    """Set name -> its table as docs/benchmarks.md holds it now (from an earlier or concurrent run)."""
    from report import BENCHMARKS_MD

    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    found = {}
    for name, marker in (("real", "### (a)"), ("synthetic", "### (b)")):
        if marker in text:
            block = text[text.index(marker) :]
            ends = [i for i in (block.find("\n### ", 1), block.find("\nRecall@", 1)) if i > 0]
            found[name] = block[: min(ends)].strip() + "\n" if ends else block
    return found


def write_tables(wall: float) -> None:
    tables = current_tables()
    for name in ("real", "synthetic"):
        if saved_table(name).exists():
            tables[name] = saved_table(name).read_text()
    notes = NOTES.format(
        batch=BATCH,
        k=K,
        neighbours=HNSW_NEIGHBOURS,
        ef=HNSW_EF_CONSTRUCTION,
        wall=wall,
        hardware=hardware(),
        load=os.getloadavg()[0],
    )
    body = "\n".join(tables[name] for name in ("real", "synthetic") if name in tables)
    write_section("search", "## Search: funnel vs faiss\n\n" + body + "\n" + notes)


NOTES = (
    "Recall@{k} is against faiss exact full-dim search. QPS b1: queries sent one at a time; "
    "b{batch}: batches of {batch}. Memory: what the search holds in RAM (ours: the float32 first-stage "
    "prefix or the packed sign bits a binary first stage scans, plus the prefix "
    "graph for HNSW; re-ranking reads float16 rows from the memory-mapped chunk files, or, in rows marked "
    "'full dim resident', gathers from a float32 copy of the full dim held in RAM); faiss: its vectors "
    "(+ codes, + graph). Build s: ours includes writing the on-disk index (float16 chunks, int8 and binary "
    "codes, SQLite ids); HNSW rows show graph build time only (faiss: M={neighbours}, efConstruction={ef}). "
    "Every method runs single-threaded (OMP/OpenBLAS/faiss/torch threads = 1) so that other jobs on the "
    "shared cores cannot make multi-threaded kernels spin (1-minute load average {load:.1f} when the run "
    "ended); absolute QPS is therefore noisy, ratios within one table are what to read. Wall time of the "
    "last run: {wall:.0f} s on {hardware}."
)


if __name__ == "__main__":
    main()
