import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from matryoshka import DimensionError, MatryoshkaError, truncate
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, Stage, exact_search
from matryoshka.index.stages import parse_funnel

K = 10
QUERIES = 40


@pytest.fixture
def built(tmp_path, full_vectors, sentences):
    """A float32 index of the real sentences 40.., queried by sentences 0..39."""
    index = MatryoshkaIndex.create(tmp_path / "idx", full_dim=384, dtype="float32")
    corpus = full_vectors[QUERIES:]
    index.add(corpus[:100], texts=sentences[QUERIES : QUERIES + 100], ids=[f"s{i}" for i in range(100)])
    index.add(corpus[100:], texts=sentences[QUERIES + 100 :], ids=[f"s{i}" for i in range(100, len(corpus))])
    return index, corpus, full_vectors[:QUERIES]


def oracle(queries, corpus, dim, k=K):
    """Brute force: full score matrix of the re-normalised prefixes, sorted."""
    scores = truncate(queries, dim) @ truncate(corpus, dim).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order, scores


@pytest.mark.parametrize("dim", [32, 64, 100, 384])
def test_exact_stage_matches_brute_force_oracle(built, dim):
    index, corpus, queries = built
    result = index.search(queries, K, funnel=str(dim))
    best, _, all_scores = oracle(queries, corpus, dim)
    np.testing.assert_allclose(result.scores, best, atol=1e-5)
    kth = best[:, -1:]
    returned = np.take_along_axis(all_scores, result.rows, 1)
    assert (returned >= kth - 1e-5).all()  # a tie may swap rows, never admit a worse one
    np.testing.assert_allclose(returned, result.scores, atol=1e-5)
    assert result.ids[0][0] == f"s{result.rows[0][0]}"


@pytest.mark.parametrize("funnel", ["32:260,128:260", "64:260", "binary@384:260,int8@384:260"])
def test_funnel_with_large_shortlists_equals_exact(built, funnel):
    index, corpus, queries = built
    result = index.search(queries, K, funnel=funnel)
    exact_scores, exact_rows = exact_search(queries, corpus, K)
    np.testing.assert_allclose(result.scores, exact_scores, atol=1e-5)
    assert recall_at_k(result.rows, exact_rows) == 1.0
    assert [s.kept for s in result.stages][-1] == K


@pytest.mark.parametrize("dim", [64, 128, 384])
def test_binary_first_stage_ranks_by_hamming_and_skips_deleted(built, dim):
    index, corpus, queries = built
    assert index.delete([f"s{i}" for i in range(0, 260, 7)]) == []
    deleted = set(index.store.deleted_rows().tolist())
    result = index.search(queries, 30, funnel=[Stage(dim, 30, "binary")])
    # oracle: Hamming distance of the sign bits of every live row's prefix, in plain numpy
    differ = (queries[:, None, :dim] > 0) != (corpus[None, :, :dim] > 0)
    distances = differ.sum(axis=2).astype(np.float64)
    distances[:, sorted(deleted)] = np.inf
    expected = 1 - 2 * np.sort(distances, axis=1)[:, :30] / dim
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)  # tie-tolerant: compared by score
    returned = 1 - 2 * np.take_along_axis(distances, result.rows, 1) / dim
    np.testing.assert_allclose(returned, result.scores, atol=1e-6)  # (one distance step is 2 / dim)
    assert not deleted & set(result.rows.ravel().tolist())


def test_funnel_stats_and_narrow_funnel_recall(built):
    index, corpus, queries = built
    result = index.search(queries, K, funnel="32:100,128:40")
    assert [s.stage for s in result.stages] == ["32:100", "128:40", "384:10"]
    assert [s.kept for s in result.stages] == [100, 40, 10]
    assert result.stages[0].bytes_read == len(corpus) * 32 * 4  # the resident float32 prefix
    assert result.stages[1].bytes_read <= QUERIES * 100 * 128 * 4
    _, exact_rows = exact_search(queries, corpus, K)
    assert recall_at_k(result.rows, exact_rows) > 0.9


def test_precision_cascade_and_float16_storage(tmp_path, full_vectors):
    index = MatryoshkaIndex.create(tmp_path / "f16", full_dim=384)
    index.add(full_vectors[QUERIES:])
    exact_scores, exact_rows = exact_search(full_vectors[:QUERIES], full_vectors[QUERIES:], K)
    result = index.search(full_vectors[:QUERIES], K, funnel="binary@384:1000,int8@384:100")
    assert result.funnel == "binary@384:1000,int8@384:100,384:10"
    assert recall_at_k(result.rows, exact_rows) >= 0.97
    full = index.search(full_vectors[:QUERIES], K, funnel="384")
    np.testing.assert_allclose(full.scores, exact_scores, atol=2e-3)  # float16 storage


def test_resident_full_dim_reranks_from_memory_with_the_same_results(tmp_path, full_vectors):
    index = MatryoshkaIndex.create(tmp_path / "f16", full_dim=384)  # float16 chunks on disk
    index.add(full_vectors[QUERIES:])
    queries = full_vectors[:QUERIES]
    from_chunks = index.search(queries, K, funnel="binary@384:60,128:30")
    index.load(384)
    index.load(128)
    from_memory = index.search(queries, K, funnel="binary@384:60,128:30")
    np.testing.assert_array_equal(from_memory.rows, from_chunks.rows)
    np.testing.assert_allclose(from_memory.scores, from_chunks.scores, atol=1e-6)
    # float32 rows of the resident prefixes, not float16 chunk values, are what the stages read
    assert [s.bytes_read for s in from_memory.stages[1:]] == [QUERIES * 60 * 128 * 4, QUERIES * 30 * 384 * 4]
    assert [s.bytes_read for s in from_chunks.stages[1:]] == [QUERIES * 60 * 128 * 2, QUERIES * 30 * 384 * 2]


def test_default_funnel_is_calibrated_and_recorded(built):
    index, corpus, queries = built
    funnel = index.info()["funnel"]  # calibrated by the first add
    stages = index.stages_for(None, K)
    first = stages[0]  # cheaper than a full-dim float scan: a shorter prefix or sign bits
    assert stages[-1].dim == 384 and (first.dim < 384 or first.precision == "binary")
    reopened = MatryoshkaIndex.open(index.store.root)
    assert reopened.store.manifest["funnel"] == funnel == ",".join(str(s) for s in stages)
    assert reopened.store.manifest["funnel_rows"] == len(corpus)
    _, exact_rows = exact_search(queries, corpus, K)
    assert recall_at_k(reopened.search(queries, K).rows, exact_rows) >= 0.95


def test_hnsw_prefix_graph_then_rerank(built):
    index, corpus, queries = built
    index.build_hnsw(32)
    reopened = MatryoshkaIndex.open(index.store.root)
    result = reopened.search(queries, K, funnel="32:200,128:50", hnsw=True)
    _, exact_rows = exact_search(queries, corpus, K)
    assert recall_at_k(result.rows, exact_rows) >= 0.97
    with pytest.raises(MatryoshkaError, match="no HNSW graph at dim 64"):
        reopened.search(queries, K, funnel="64:100", hnsw=True)


def test_delete_and_compact(built):
    index, corpus, queries = built
    top = index.search(queries[:1], K, funnel="384").ids[0]
    assert index.delete([top[0], "nope"]) == ["nope"]
    unread = index.search(queries[:1], K, funnel="384")  # ids and texts are looked up when first read
    after = index.search(queries[:1], K, funnel="384").ids[0]
    assert top[0] not in after and after[: K - 1] == top[1:]
    assert index.info()["deleted"] == 1
    old_files = set(os.listdir(index.store.root))
    assert index.compact() == len(corpus) - 1
    with pytest.raises(MatryoshkaError, match="compacted since this search"):
        unread.texts  # noqa: B018 - its row numbers point into the old generation
    reopened = MatryoshkaIndex.open(index.store.root)
    assert reopened.search(queries[:1], K, funnel="384").ids[0] == after
    assert reopened.info()["rows"] == len(corpus) - 1 and reopened.info()["deleted"] == 0
    assert not old_files & set(os.listdir(index.store.root)) - {"manifest.json"}
    reopened.store.verify()


def test_reopening_maps_only_the_chunks_a_prefix_needs(built):
    index, _, queries = built
    root = index.store.root
    reopened = MatryoshkaIndex.open(root)
    reopened.search(queries, K, funnel="64")
    assert reopened.store.opened == {"g0-chunk-0000-0032.float32", "g0-chunk-0032-0064.float32"}
    reopened = MatryoshkaIndex.open(root)  # nothing resident: re-ranking at 64 reads the mapped chunks
    result = reopened.search(queries, K, funnel=[Stage(32, 50), Stage(64, K)])
    # re-ranking adds only the per-row chunk energies (its prefix norms), no other chunk
    needed = {"g0-chunk-0000-0032.float32", "g0-chunk-0032-0064.float32", "g0-energy.f32"}
    assert reopened.store.opened == needed
    assert result.stages[1].bytes_read <= QUERIES * 50 * 64 * 4
    reopened.load(128)
    assert "g0-chunk-0064-0128.float32" in reopened.store.opened
    assert not any("0128-0256" in name or "int8" in name for name in reopened.store.opened)


def test_damaged_or_foreign_directories_give_clear_errors(built, tmp_path):
    index, _, queries = built
    root = index.store.root
    with pytest.raises(MatryoshkaError, match="not a matryoshka index"):
        MatryoshkaIndex.open(tmp_path)
    chunk = root / "g0-chunk-0032-0064.float32"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-100])
    with pytest.raises(MatryoshkaError, match=r"0032-0064\.float32 is truncated"):
        MatryoshkaIndex.open(root).search(queries, K, funnel="64")
    assert MatryoshkaIndex.open(root).search(queries, K, funnel="32").rows.shape == (QUERIES, K)  # unaffected
    chunk.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    with pytest.raises(MatryoshkaError, match="checksum mismatch in g0-chunk-0032-0064"):
        MatryoshkaIndex.open(root).store.verify()
    manifest = (root / "manifest.json").read_text()
    (root / "manifest.json").write_text(manifest[: len(manifest) // 2])
    with pytest.raises(MatryoshkaError, match=r"manifest\.json is damaged"):
        MatryoshkaIndex.open(root)
    (root / "manifest.json").write_text(json.dumps(json.loads(manifest) | {"format_version": 99}))
    with pytest.raises(MatryoshkaError, match="format version 99"):
        MatryoshkaIndex.open(root)


def test_bad_queries_and_other_models_are_refused(built, encoder):
    index, corpus, queries = built
    with pytest.raises(DimensionError, match="query vectors have 128 dims, the index holds 384"):
        index.search(queries[:, :128], K)
    for dim in (0, 385):
        with pytest.raises(DimensionError, match="out of range"):
            index.search(queries, K, funnel=str(dim))
    with pytest.raises(MatryoshkaError, match="no recorded model"):
        index.search("a text query", K)
    with pytest.raises(MatryoshkaError, match="already in the index: s3"):
        index.add(corpus[:1], ids=["s3"])
    other = {"kind": "model", "model": "other-model", "fingerprint": "0123456789abcdef"}
    index.store.update_manifest(source=other)
    with pytest.raises(MatryoshkaError, match="cannot search an index of vectors from other-model"):
        index.use_encoder(encoder)


def test_text_queries_use_the_index_model(tmp_path, encoder, sentences, full_vectors):
    index = MatryoshkaIndex.create(tmp_path / "m", model=encoder)
    index.add(full_vectors[:50], texts=sentences[:50])
    index._encoder = encoder  # the session's loaded model (its fingerprint is the recorded one)
    result = index.search(sentences[7], 3, funnel="384")
    assert result.texts[0][0] == sentences[7] and result.scores[0][0] == pytest.approx(1, abs=1e-3)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from matryoshka.index import MatryoshkaIndex
    index = MatryoshkaIndex.open(sys.argv[1])
    batch = 0
    while True:
        first = index.store.rows
        rows = np.random.default_rng(first).standard_normal((2000, 64)).astype(np.float32)
        index.add(rows, ids=[f"r{first + i}" for i in range(len(rows))])
        print(index.store.rows, flush=True)
    """
)


def test_killed_writer_leaves_last_commit_readable(tmp_path):
    root = tmp_path / "crash"
    MatryoshkaIndex.create(root, full_dim=64, chunks=[16, 32])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    rng = np.random.default_rng(7)
    for _ in range(3):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, env=env)
        assert writer.stdout.readline()  # at least one commit of this writer
        time.sleep(rng.uniform(0.0, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        index = MatryoshkaIndex.open(root)
        rows = index.store.rows
        assert rows % 2000 == 0 and rows > 0
        expected = np.concatenate(
            [
                np.random.default_rng(first).standard_normal((2000, 64)).astype(np.float32)
                for first in range(0, rows, 2000)
            ]
        )
        stored = index.store.read_prefix(slice(0, rows), 64)
        np.testing.assert_allclose(stored, truncate(expected).astype(np.float16), atol=1e-3)
        ends = index.store.records(np.array([0, rows - 1]))
        assert ends == [("r0", None, None), (f"r{rows - 1}", None, None)]
        index.store.verify()
        result = index.search(expected[-3:], 1, funnel="64")
        assert [ids[0] for ids in result.ids] == [f"r{rows - 3 + i}" for i in range(3)]


def test_parse_funnel_errors():
    assert [str(s) for s in parse_funnel("32:1000,128:100", 384, 10)] == ["32:1000", "128:100", "384:10"]
    assert [str(s) for s in parse_funnel("binary@256:500,full:7", 384, 10)] == ["binary@256:500", "384:10"]
    for bad in ("x:10", "32:0", "32:x", "int4@32:10", ""):
        with pytest.raises(MatryoshkaError):
            parse_funnel(bad, 384, 10)


def test_single_query_binary_scan_runs_faiss_on_one_thread_and_restores_it(built, monkeypatch):
    import faiss

    index, _, queries = built
    seen = []
    original = faiss.knn_hamming
    monkeypatch.setattr(
        faiss, "knn_hamming", lambda *a, **k: seen.append(faiss.omp_get_max_threads()) or original(*a, **k)
    )
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(queries[:1], K, funnel="binary@384:50")
        index.search(queries[:20], K, funnel="binary@384:50")
        assert seen == [1, 2, 2, 2] and faiss.omp_get_max_threads() == 2  # 20 queries: blocks of 8
    finally:
        faiss.omp_set_num_threads(before)


def test_searches_of_every_kind_never_write(built):
    index, _, queries = built
    index.build_hnsw(32)
    plan = index.plan(recall=0.9, sample=30)
    root = index.store.root
    before = {path.name: path.read_bytes() for path in root.iterdir()}
    reopened = MatryoshkaIndex.open(root)  # a fresh process's view: nothing cached yet
    for options in (
        {},
        {"funnel": "64"},
        {"funnel": "binary@384:100,int8@384:50"},
        {"funnel": [Stage(32, 80), Stage(128, 20)]},
        {"funnel": plan.chosen},
        {"funnel": plan.for_recall(1.0)},
        {"funnel": "32:100,128:30", "hnsw": True},
    ):
        assert reopened.search(queries, 20, **options).rows.shape == (QUERIES, 20)
    reopened.close()
    assert {path.name: path.read_bytes() for path in root.iterdir()} == before
