"""The Milvus back end on Milvus Lite: same results as the local index, delete, reopen, refusals."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from matryoshka import DimensionError, MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, create_index, open_index

pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="Milvus Lite has no build for this platform (Linux/macOS only)")

K = 10
QUERIES = 40


@pytest.fixture(scope="module")
def corpus(full_vectors, sentences):
    """Real STS-B sentence vectors: 260 rows indexed, the first 40 sentences as queries."""
    return full_vectors[QUERIES:], sentences[QUERIES:], full_vectors[:QUERIES]


@pytest.fixture(scope="module")
def pair(tmp_path_factory, corpus):
    """The same rows in a local index and in a Milvus Lite collection (prefix field v64)."""
    vectors, texts, _ = corpus
    root = tmp_path_factory.mktemp("milvus")
    ids = [f"s{i}" for i in range(len(vectors))]
    local = MatryoshkaIndex.create(root / "local", full_dim=384, dtype="float32")
    local.add(vectors, texts=texts, ids=ids)
    remote = create_index(root / "v.db", full_dim=384, prefix_dim=64)
    assert remote.add(vectors, texts=texts, ids=ids, batch_size=100) == len(vectors)
    yield local, remote, root / "v.db"
    remote.close()


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_funnel_matches_local_index(pair, corpus, rerank, same_top_k):
    local, remote, _ = pair
    queries = corpus[2]
    remote.rerank = rerank
    mine = remote.search(queries, K, funnel="64:100")
    theirs = local.search(queries, K, funnel="64:100")
    assert mine.funnel == theirs.funnel == "64:100,384:10"
    assert [s.stage for s in mine.stages] == ["64:100", "384:10"]
    same_top_k(mine.scores, mine.ids, theirs.scores, theirs.ids)
    assert mine.texts[0][0] == local.search(queries[:1], 1, funnel="384").texts[0][0]


def test_single_stages_are_exact(pair, corpus):
    local, remote, _ = pair
    queries = corpus[2]
    for dim in (64, 384):
        mine, theirs = remote.search(queries, K, funnel=str(dim)), local.search(queries, K, funnel=str(dim))
        np.testing.assert_allclose(mine.scores, theirs.scores, atol=1e-5)
        found = np.array([[int(i[1:]) for i in row] for row in mine.ids])
        expected = np.array([[int(i[1:]) for i in row] for row in theirs.ids])
        assert recall_at_k(found, expected, K) >= 0.99


def test_refusals(pair, corpus, encoder):
    _, remote, path = pair
    queries = corpus[2]
    with pytest.raises(DimensionError, match="query vectors have 128 dims"):
        remote.search(queries[:, :128], K)
    with pytest.raises(MatryoshkaError, match="funnel 32:100,384:10 is not that"):
        remote.search(queries, K, funnel="32:100")
    with pytest.raises(MatryoshkaError, match="no recorded model"):
        remote.search("a text query", K)
    with pytest.raises(MatryoshkaError, match="cannot take full_dim=768"):
        create_index(path, full_dim=768)
    with pytest.raises(MatryoshkaError, match=r"cannot reach Milvus at http://127\.0\.0\.1:1"):
        open_index("http://127.0.0.1:1")
    with pytest.raises(MatryoshkaError, match="qdrant: not an option of Milvus"):
        open_index(path, qdrant=True)


def test_model_is_recorded_and_other_models_refused(tmp_path, encoder, sentences, full_vectors):
    path = tmp_path / "m.db"
    index = create_index(path, model=encoder, collection="m", index_type="HNSW")
    index.add(full_vectors[:30], texts=sentences[:30])
    index._encoder = encoder  # the session's model; its fingerprint is the recorded one
    result = index.search(sentences[7], 3)
    assert result.texts[0][0] == sentences[7] and result.scores[0][0] == pytest.approx(1, abs=1e-3)
    assert index.info()["source"]["model"] == encoder.info.name
    assert index.info()["index_type"] == "HNSW"  # Milvus Lite accepts HNSW on the prefix field
    index.properties["fingerprint"] = "0123456789abcdef"
    with pytest.raises(MatryoshkaError, match="cannot use collection 'm' of vectors from"):
        index.use_encoder(encoder)
    index.close()


REOPEN = textwrap.dedent(
    """
    import sys, numpy as np
    from matryoshka.index import MatryoshkaIndex, create_index, open_index
    index = open_index(sys.argv[1], collection="d")
    query = np.load(sys.argv[2])
    print(index.info()["live"], *index.search(query, 3, funnel="64:50").ids[0])
    """
)


def test_delete_then_reopen_in_a_new_process(tmp_path, corpus):
    vectors = corpus[0]
    path = tmp_path / "d.db"
    index = create_index(path, full_dim=384, collection="d")
    index.add(vectors[:100], ids=[f"s{i}" for i in range(100)])
    first = index.search(vectors[5], 3, funnel="64:50").ids[0]
    assert first[0] == "s5"
    assert index.delete(["s5", "nope"]) == ["nope"]
    after = index.search(vectors[5], 3, funnel="64:50").ids[0]
    assert "s5" not in after and after[:2] == first[1:]
    assert index.info()["live"] == 99
    with pytest.raises(MatryoshkaError, match="ids already in the collection: s7"):
        index.add(vectors[:2], ids=["s200", "s7"])
    index.close()
    np.save(tmp_path / "q.npy", vectors[5])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    run = subprocess.run(
        [sys.executable, "-c", REOPEN, str(path), str(tmp_path / "q.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["99", *after]


def test_cli_build_add_info_search_on_milvus(tmp_path, corpus):
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
    missing = runner.invoke(app, ["index", "info", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "no Milvus Lite file" in missing.output
    refused = runner.invoke(app, ["search", uri, "some text"])
    assert refused.exit_code == 2 and "no recorded model" in refused.output
