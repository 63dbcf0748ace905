import pytest

from matryoshka import MatryoshkaError
from matryoshka.datasets import data_path, load_beir, load_stsb, read_texts


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


def test_lone_surrogate_in_jsonl_is_refused_naming_the_line(tmp_path):
    # JSON's \ud800 escape decodes to a lone surrogate, which the tokenizer rejects with a TypeError.
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "caf\\u00e9 \\ud83d\\ude00"}\n{"text": "caf\\ud800"}\n')
    with pytest.raises(MatryoshkaError) as caught:
        read_texts(path)
    assert str(caught.value) == (
        f"{path}:2: field 'text' is not valid Unicode: lone surrogate U+D800 at character 3 "
        "(\\uD800-\\uDFFF escapes must pair up)"
    )
    path.write_text('{"text": "caf\\u00e9 \\ud83d\\ude00"}\n')  # a pair is one character: accepted
    assert read_texts(path) == ["café 😀"]


@pytest.mark.parametrize("verb", ["encode", "index build"])
def test_lone_surrogate_in_jsonl_is_one_error_line_from_the_cli(tmp_path, verb):
    from typer.testing import CliRunner

    from matryoshka.cli import app

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "caf\\udc00 au lait"}\n')
    out = tmp_path / ("out.npy" if verb == "encode" else "idx")
    result = CliRunner().invoke(app, [*verb.split(), str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"error: {path}:2: field 'text' is not valid Unicode: lone surrogate U+DC00" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()
