import numpy as np
import pytest

from matryoshka import DimensionError, MatryoshkaError
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index import MatryoshkaIndex, create_index, exact_search
from matryoshka.index.rotation import ROTATION_FILE, fit_rotation

K = 10
QUERIES = 40


@pytest.fixture
def corpus_queries(full_vectors):
    return full_vectors[QUERIES:], full_vectors[:QUERIES]


def make(path, corpus, rotation=None):
    index = MatryoshkaIndex.create(path, full_dim=384, dtype="float32", rotation=rotation)
    index.add(corpus, ids=[f"s{i}" for i in range(len(corpus))])
    return index


def test_rotation_keeps_full_dim_scores_and_sharpens_short_prefixes(tmp_path, corpus_queries):
    corpus, queries = corpus_queries
    plain = make(tmp_path / "plain", corpus)
    rotated = make(tmp_path / "rotated", corpus, fit_rotation(corpus))
    exact_scores, exact_rows = exact_search(queries, corpus, K)
    full = MatryoshkaIndex.open(tmp_path / "rotated").search(
        queries, K, funnel="384"
    )  # reopened: read from disk
    np.testing.assert_allclose(full.scores, exact_scores, atol=1e-5)
    assert recall_at_k(full.rows, exact_rows) == 1.0
    assert full.ids[0] == [f"s{row}" for row in exact_rows[0]]
    recall_16 = [
        recall_at_k(index.search(queries, K, funnel="16").rows, exact_rows) for index in (plain, rotated)
    ]
    assert recall_16 == pytest.approx([0.455, 0.68], abs=1e-9)  # the first 16 of 384 coordinates
    assert rotated.info()["rotated"] and not plain.info()["rotated"]


def test_bad_rotations_are_refused(tmp_path, corpus_queries):
    corpus, _ = corpus_queries
    with pytest.raises(DimensionError, match="square 384"):
        MatryoshkaIndex.create(tmp_path / "a", full_dim=384, rotation=np.eye(383))
    with pytest.raises(MatryoshkaError, match="not orthogonal"):
        MatryoshkaIndex.create(tmp_path / "b", full_dim=384, rotation=2 * np.eye(384))
    with pytest.raises(MatryoshkaError, match="rotation: not an option of Milvus"):
        create_index(tmp_path / "c.db", full_dim=384, rotation=np.eye(384))
    with pytest.raises(MatryoshkaError, match="2 or more vectors"):
        fit_rotation(corpus[:1])


def test_damaged_rotation_file_is_a_clear_error(tmp_path, corpus_queries):
    corpus, queries = corpus_queries
    make(tmp_path / "idx", corpus, fit_rotation(corpus))
    path = tmp_path / "idx" / ROTATION_FILE
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(MatryoshkaError, match="damaged"):
        MatryoshkaIndex.open(tmp_path / "idx").search(queries[:1], K, funnel="64")
    path.unlink()
    with pytest.raises(MatryoshkaError, match="missing"):
        MatryoshkaIndex.open(tmp_path / "idx").search(queries[:1], K, funnel="64")
