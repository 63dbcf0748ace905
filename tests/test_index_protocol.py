"""One behaviour, both backends: the local index directory and Milvus (Lite here) answer the same
calls with the same results, through ``create_index`` / ``open_index`` and the ``Index`` protocol."""

import numpy as np
import pytest

from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index import MatryoshkaIndex, create_index, exact_search, open_index
from matryoshka.index.milvus import MilvusIndex

K = 5
ROWS = 120


@pytest.fixture(params=["local", "milvus"])
def target(request, tmp_path):
    return tmp_path / ("idx" if request.param == "local" else "idx.db")


def test_create_add_search_delete_reopen(target, full_vectors, sentences, same_top_k):
    vectors, queries = full_vectors[:ROWS], full_vectors[ROWS : ROWS + 8]
    ids = [f"s{i}" for i in range(ROWS)]
    index = create_index(target, full_dim=384)
    assert isinstance(index, MatryoshkaIndex if target.suffix != ".db" else MilvusIndex)
    assert index.add(vectors, texts=sentences[:ROWS], ids=ids) == ROWS
    for funnel in ("384", "64"):  # one exact stage at that prefix
        dim = int(funnel)
        prefix = vectors[:, :dim] / np.linalg.norm(vectors[:, :dim], axis=1, keepdims=True)
        query_prefix = queries[:, :dim] / np.linalg.norm(queries[:, :dim], axis=1, keepdims=True)
        scores, rows = exact_search(query_prefix, prefix, K)
        result = index.search(queries, K, funnel=funnel)
        expected = [[ids[r] for r in row] for row in rows]
        same_top_k(result.scores, result.ids, scores, expected, atol=1e-4)  # float16 storage (local)
        assert result.funnel == {"384": "384:5", "64": "64"}[funnel]
        assert result.texts[0][0] == sentences[rows[0][0]]
    local_like = index.search(queries, K, funnel="64:40")  # shortlist at 64 dims, then the full dim
    assert local_like.funnel == "64:40,384:5" and [s.stage for s in local_like.stages] == ["64:40", "384:5"]
    assert index.texts_of(["s3", "nope"]) == {"s3": sentences[3]}
    assert index.delete(["s3", "nope"]) == ["nope"]
    assert "s3" not in index.search(vectors[3], K, funnel="384").ids[0]
    info = index.info()
    assert (info["backend"], info["full_dim"], info["live"]) == (
        (target.suffix and "milvus") or "local",
        384,
        ROWS - 1,
    )
    index.close()
    reopened = open_index(target)
    assert reopened.search(vectors[4], 1, funnel="384").ids == [["s4"]]
    reopened.close()


def test_bad_calls_get_clear_errors(target, full_vectors):
    index = create_index(target, full_dim=384)
    index.add(full_vectors[:ROWS], ids=[f"s{i}" for i in range(ROWS)])
    with pytest.raises(DimensionError, match="query vectors have 128 dims, the index holds 384"):
        index.search(full_vectors[:2, :128], K)
    with pytest.raises(MatryoshkaError, match="keeps fewer rows than the 50 asked for"):
        index.search(full_vectors[:2], 50, funnel="64:20")
    with pytest.raises(MatryoshkaError, match="already in the"):
        index.add(full_vectors[:1], ids=["s0"])
    with pytest.raises(MatryoshkaError, match="not an option of"):
        open_index(target, nonsense=1)
    index.close()


def test_bad_rows_are_refused_before_anything_is_written(target, full_vectors):
    index = create_index(target, full_dim=384)
    index.add(full_vectors[:10], ids=[f"s{i}" for i in range(10)])
    bad = full_vectors[10:12].copy()
    with pytest.raises(DimensionError, match=r"vectors have shape \(2, 128\), the index holds 384-dim rows"):
        index.add(bad[:, :128])
    bad[1, 5] = np.nan
    with pytest.raises(MatryoshkaError, match="vectors contain NaN or infinite values"):
        index.add(bad)
    with pytest.raises(MatryoshkaError, match="1 texts for 2 vectors"):
        index.add(full_vectors[10:12], texts=["one"])
    with pytest.raises(MatryoshkaError, match="ids in one batch must be distinct"):
        index.add(full_vectors[10:12], ids=["x", "x"])
    assert index.info()["live"] == 10
    assert index.search(full_vectors[3], 1, funnel="384").ids == [["s3"]]
    index.close()
