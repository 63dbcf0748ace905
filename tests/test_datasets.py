import pytest

from matryoshka import MatryoshkaError
from matryoshka.datasets import data_path, load_beir, load_stsb


def test_stsb_splits_have_the_documented_sizes():
    assert [len(load_stsb(s)) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    test = load_stsb("test")
    assert min(test.scores) >= 0 and max(test.scores) <= 5


def test_scifact_loads_as_beir():
    data = load_beir(data_path("scifact"))
    assert (len(data.doc_ids), len(data.query_ids)) == (5183, 300)
    assert sum(len(v) for v in data.qrels.values()) == 339
    assert data.doc_texts[0].startswith("Microstructural development of human newborn cerebral white matter")


def test_broken_beir_sets_are_refused(tmp_path):
    with pytest.raises(MatryoshkaError, match=r"missing corpus\.jsonl"):
        load_beir(tmp_path)
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "t"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "q"}\n')
    with pytest.raises(MatryoshkaError, match=r"test\.tsv:2: expected query-id"):
        load_beir(tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "t"}\nnot json\n')
    with pytest.raises(MatryoshkaError, match=r"corpus\.jsonl:2: expected a JSON object"):
        load_beir(tmp_path)


def test_unknown_split():
    with pytest.raises(MatryoshkaError, match="unknown STS-B split"):
        load_stsb("validation")
