"""The Milvus back end on Milvus Lite and on a real Milvus 2.3 server (tests/milvus_server.py): same
results as the local index, flushing, delete, reopen, refusals and bad input."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from matryoshka import DimensionError, MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, create_index, open_index
from matryoshka.index.milvus import MilvusIndex, MilvusUnavailable

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="Milvus Lite has no build for this platform (Linux/macOS only)")

from milvus_server import MilvusServer

K = 10
QUERIES = 40
KINDS = ["lite", "server"]


@pytest.fixture(scope="session")
def milvus_server():
    """One Milvus standalone server for the session, on free loopback ports, killed at the end."""
    pytest.importorskip("milvus", reason="the milvus package (milvus-server) is in the dev extra")
    server = MilvusServer().start()
    yield server
    server.stop()


class Places:
    """Fresh (target, collection) pairs: a new .db file on Lite, a new collection name on the server."""

    def __init__(self, kind: str, root: Path, server: MilvusServer | None) -> None:
        self.kind, self.root, self.server, self.count = kind, root, server, 0

    def __call__(self) -> tuple[str, str]:
        self.count += 1
        if self.server is None:
            return str(self.root / f"m{self.count}.db"), "m"
        return self.server.uri, f"t{os.getpid()}_{time.monotonic_ns()}_{self.count}"


def places_for(kind: str, request, root: Path) -> Places:
    return Places(kind, root, request.getfixturevalue("milvus_server") if kind == "server" else None)


@pytest.fixture(params=KINDS)
def places(request, tmp_path):
    return places_for(request.param, request, tmp_path)


@pytest.fixture(scope="module")
def corpus(full_vectors, sentences):
    """Real STS-B sentence vectors: 260 rows indexed, the first 40 sentences as queries."""
    return full_vectors[QUERIES:], sentences[QUERIES:], full_vectors[:QUERIES]


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory, corpus):
    """The same rows in a local index and in a Milvus index (prefix v64), on Lite or the server."""
    vectors, texts, _ = corpus
    root = tmp_path_factory.mktemp("milvus")
    target, collection = places_for(request.param, request, root)()
    ids = [f"s{i}" for i in range(len(vectors))]
    local = MatryoshkaIndex.create(root / "local", full_dim=384, dtype="float32")
    local.add(vectors, texts=texts, ids=ids)
    remote = MilvusIndex.create(target, full_dim=384, prefix_dim=64, collection=collection)
    assert remote.add(vectors, texts=texts, ids=ids, batch_size=100) == len(vectors)
    yield local, remote, target, collection
    remote.close()


def test_funnel_matches_local_index(pair, corpus):
    local, remote, _, _ = pair
    queries = corpus[2]
    mine = remote.search(queries, K, funnel="64:100")
    theirs = local.search(queries, K, funnel="64:100")
    assert mine.funnel == theirs.funnel == "64:100,384:10"
    assert [s.stage for s in mine.stages] == ["64:100", "384:10"]
    np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-5)
    for found, expected, scores in zip(mine.ids, theirs.ids, theirs.scores, strict=True):
        tied = np.isclose(scores, scores[-1], atol=1e-5)  # the last places may swap among equal scores
        assert found[: (~tied).sum()] == expected[: (~tied).sum()]
    assert mine.texts[0][0] == local.search(queries[:1], 1, funnel="384").texts[0][0]


def test_full_dim_search_is_exact_and_default_funnel(pair, corpus):
    local, remote, _, _ = pair
    queries = corpus[2]
    mine, theirs = remote.search(queries, K, funnel="384"), local.search(queries, K, funnel="384")
    assert mine.funnel == "384:10"
    np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-5)
    found = np.array([[int(i[1:]) for i in row] for row in mine.ids])
    expected = np.array([[int(i[1:]) for i in row] for row in theirs.ids])
    assert recall_at_k(found, expected, K) >= 0.99
    assert remote.search(queries[:2], K).funnel == "64:200,384:10"  # the default: prefix:k*20 -> full


def test_refusals(pair, corpus):
    _, remote, target, collection = pair
    queries = corpus[2]
    with pytest.raises(DimensionError, match="query vectors have 128 dims"):
        remote.search(queries[:, :128], K)
    with pytest.raises(MatryoshkaError, match="funnel 32:100,384:10 is not that"):
        remote.search(queries, K, funnel="32:100")
    with pytest.raises(MatryoshkaError, match="hnsw=True is a local-index option"):
        remote.search(queries, K, hnsw=True)
    with pytest.raises(MatryoshkaError, match="no recorded model"):
        remote.search("a text query", K)
    with pytest.raises(MatryoshkaError, match="cannot take full_dim=768"):
        MilvusIndex.create(target, full_dim=768, collection=collection)
    with pytest.raises(MatryoshkaError, match=f"no collection 'nope{collection}'"):
        MilvusIndex.open(target, collection=f"nope{collection}")
    info = remote.info()
    assert {key: info[key] for key in ("backend", "full_dim", "prefix_dim", "live")} == {
        "backend": "milvus", "full_dim": 384, "prefix_dim": 64, "live": 260}  # fmt: skip


def test_unreachable_server_is_one_line():
    started = time.monotonic()
    with pytest.raises(MilvusUnavailable, match=r"cannot reach Milvus at http://127\.0\.0\.1:1") as caught:
        MilvusIndex.open("http://127.0.0.1:1", timeout=2)
    assert "\n" not in str(caught.value) and time.monotonic() - started < 30


@pytest.mark.parametrize("kind", KINDS)
def test_model_is_recorded_and_other_models_refused(
    kind, request, tmp_path, encoder, sentences, full_vectors
):
    target, collection = places_for(kind, request, tmp_path)()
    index = create_index(target, model=encoder, collection=collection, index_type="HNSW", ef=128)
    assert index.ef == 128
    index.add(full_vectors[:30], texts=sentences[:30])
    result = index.search(sentences[7], 3)
    assert result.texts[0][0] == sentences[7] and result.scores[0][0] == pytest.approx(1, abs=1e-3)
    assert index.info()["source"]["model"] == encoder.info.name
    assert index.info()["index_type"] == "HNSW"
    index.close()
    # a collection recorded for another model: opening it with this model is refused
    other = open_index(target, collection=collection, ef=32)
    assert (other.ef, other.index_type, other.info()["ef"]) == (32, "HNSW", 32)
    other.properties["fingerprint"] = "0123456789abcdef"
    with pytest.raises(MatryoshkaError, match=f"cannot use collection '{collection}' of vectors from"):
        other.use_encoder(encoder)
    with pytest.raises(DimensionError, match="makes 384-dim vectors, not 768"):
        MilvusIndex.create(target, model=encoder, full_dim=768, collection=collection)
    other.close()


REOPEN = textwrap.dedent(
    """
    import sys, numpy as np
    from matryoshka.index.milvus import MilvusIndex
    index = MilvusIndex.open(sys.argv[1], collection=sys.argv[2])
    query = np.load(sys.argv[3])
    print(index.info()["live"], *index.search(query, 3, funnel="64:50").ids[0])
    """
)


def test_delete_then_reopen_in_a_new_process(places, tmp_path, corpus):
    vectors = corpus[0]
    target, collection = places()
    index = MilvusIndex.create(target, full_dim=384, collection=collection)
    index.add(vectors[:100], ids=[f"s{i}" for i in range(100)])
    first = index.search(vectors[5], 3, funnel="64:50").ids[0]
    assert first[0] == "s5"
    assert index.delete(["s5", "nope"]) == ["nope"]
    after = index.search(vectors[5], 3, funnel="64:50").ids[0]
    assert "s5" not in after and after[:2] == first[1:]
    assert index.info()["live"] == 99
    with pytest.raises(MatryoshkaError, match="ids already in the collection: s7"):
        index.add(vectors[:2], ids=["s200", "s7"])
    assert index.info()["live"] == 99  # the refused batch stored nothing
    index.close()
    if places.server is not None:  # a server keeps the rows: reopening in this process is the same
        reopened = MilvusIndex.open(target, collection=collection)
        assert (
            reopened.info()["live"] == 99 and reopened.search(vectors[5], 3, funnel="64:50").ids[0] == after
        )
        return reopened.close()
    np.save(tmp_path / "q.npy", vectors[5])  # Milvus Lite: one process per file, so another process
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    run = subprocess.run(
        [sys.executable, "-c", REOPEN, target, collection, str(tmp_path / "q.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["99", *after]


@pytest.fixture(scope="module")
def many_vectors(encoder):
    """3,000 real STS-B train sentences' vectors (cached): enough rows that Milvus Lite's unflushed
    buffer costs several times a flushed search."""
    from matryoshka.cache import cached_encode_full
    from matryoshka.datasets import load_stsb

    pairs = load_stsb("train")
    texts = list(dict.fromkeys(pairs.first + pairs.second))[:3000]
    return cached_encode_full(encoder, texts)


def median_search_seconds(index: MilvusIndex, queries: np.ndarray) -> float:
    """Median over queries of the best of 3 runs of each (a load spike on this shared machine must hit
    all three to count; Lite's unflushed buffer slows every run)."""
    index.search(queries[0], K, funnel="64:100")  # the first search after writes flushes, once
    times = []
    for query in queries[1:]:
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            index.search(query, K, funnel="64:100")
            runs.append(time.perf_counter() - started)
        times.append(min(runs))
    return float(np.median(times))


def test_search_after_add_is_as_fast_as_after_reopen(places, many_vectors):
    """Writes flush once before the next search: without that, Milvus Lite scans an unflushed buffer
    (measured 5.9x slower at 3,000 rows). Median of 40 queries (best of 3 each), 2x margin."""
    target, collection = places()
    index = MilvusIndex.create(target, full_dim=384, collection=collection)
    index.add(many_vectors, batch_size=500)
    queries = many_vectors[:41]
    same_process = median_search_seconds(index, queries)
    index.close()
    reopened = MilvusIndex.open(target, collection=collection)
    after_reopen = median_search_seconds(reopened, queries)
    assert reopened.info()["live"] == len(many_vectors)
    reopened.close()
    assert same_process < 2 * after_reopen, (same_process, after_reopen)


@pytest.fixture
def auth_server(tmp_path):
    """A second server with authorization on (user root, password Milvus), to refuse tokens and die."""
    pytest.importorskip("milvus", reason="the milvus package (milvus-server) is in the dev extra")
    server = MilvusServer(tmp_path / "auth", authorization=True).start()
    yield server
    server.stop()


def test_wrong_token_and_a_server_dying_mid_search(auth_server, corpus, capfd):
    vectors, texts, queries = corpus
    with pytest.raises(MatryoshkaError, match="refused the token: auth check failure") as caught:
        MilvusIndex.create(auth_server.uri, full_dim=384, token="root:wrong", timeout=5)
    assert "\n" not in str(caught.value)
    index = MilvusIndex.create(auth_server.uri, full_dim=384, token="root:Milvus", timeout=2)
    index.add(vectors[:50], texts=texts[:50])
    assert index.search(queries[:2], 3).ids[0]
    auth_server.kill()
    started = time.monotonic()
    with pytest.raises(MilvusUnavailable, match=r"Milvus search at http://127\.0\.0\.1") as caught:
        index.search(queries[:2], 3)
    assert "\n" not in str(caught.value) and time.monotonic() - started < 60
    with pytest.raises(MilvusUnavailable, match=r"; 0 of 10 rows were stored, none from id n0 on$") as caught:
        index.add(vectors[50:60], ids=[f"n{i}" for i in range(10)])
    assert "\n" not in str(caught.value)
    index.close()  # nothing was pending
    assert capfd.readouterr().err == ""  # pymilvus's retry warnings are not printed


def test_cli_build_and_info_on_milvus_lite(tmp_path, corpus):
    from typer.testing import CliRunner

    from matryoshka.cli import app

    vectors, texts, _ = corpus
    np.save(tmp_path / "v.npy", vectors[:60])
    (tmp_path / "t.txt").write_text("\n".join(texts[:60]) + "\n")
    uri = str(tmp_path / "cli.db")
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", "--vectors", str(tmp_path / "v.npy"), "--texts",
                                str(tmp_path / "t.txt"), "--out", uri])  # fmt: skip
    assert built.exit_code == 0, built.output
    info = runner.invoke(app, ["index", "info", uri])
    assert info.exit_code == 0 and '"live": 60' in info.output and '"prefix_field": "v64"' in info.output
    unreachable = runner.invoke(app, ["index", "info", "http://127.0.0.1:1"])
    assert (
        unreachable.exit_code == 2
        and "error: cannot reach Milvus at http://127.0.0.1:1" in unreachable.output
    )
