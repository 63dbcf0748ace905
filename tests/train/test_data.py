import pytest
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.datasets import data_path
from matryoshka.errors import MatryoshkaError
from matryoshka.train.data import load_training_data

runner = CliRunner()


def test_stsb_train_split_reads_every_line_including_extra_columns():
    data = load_training_data(data_path("stsb", "sts-train.csv"))
    assert data.kind == "scored" and len(data) == 5749  # 5552 lines of 7 fields + 197 with 9
    assert data.columns["sentence1"][0] == "A plane is taking off."
    assert data.columns["sentence2"][0] == "An air plane is taking off."
    assert data.columns["score"][:2] == [1.0, pytest.approx(3.8 / 5)]


def test_scifact_train_queries_and_qrels_become_query_passage_pairs():
    data = load_training_data(data_path("scifact"), "beir")
    assert data.kind == "pairs" and set(data.columns) == {"anchor", "positive"}
    assert len(data) == 919  # relevant (query, document) rows of qrels/train.tsv
    assert data.columns["anchor"][0] == "0-dimensional biomaterials lack inductive properties."


def test_flickr_caption_pairs_keep_the_requested_split():
    data = load_training_data(data_path("flickr8k_caption_pairs", "pairs.tsv"))
    assert len(data) == 60000 and data.info == {"split": "train"}
    assert data.columns["positive"][0] == "A girl going into a wooden building"
    assert len(load_training_data(data_path("flickr8k_caption_pairs", "pairs.tsv"), split="heldout")) == 20920


def test_triplets_from_jsonl_and_headerless_tsv(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"anchor": "a", "positive": "b", "negative": "c"}\n'
        '{"anchor": "d", "positive": "e", "negative": "f"}\n'
    )
    data = load_training_data(jsonl)
    assert data.columns == {"anchor": ["a", "d"], "positive": ["b", "e"], "negative": ["c", "f"]}
    tsv = tmp_path / "t.tsv"
    tsv.write_text("q1\tp1\nq2\tp2\n")
    assert load_training_data(tsv).columns == {"anchor": ["q1", "q2"], "positive": ["p1", "p2"]}


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("empty.tsv", "", None, "is empty"),
        ("sts.csv", "a\tb\tc\t2012\t4.0\tone\n", "stsb", "expected at least 7"),
        ("sts.csv", "a\tb\tc\t2012\thigh\tone\ttwo\n", "stsb", "is not a number"),
        ("sts.csv", "a\tb\tc\t2012\t7.5\tone\ttwo\n", "stsb", "outside 0..5"),
        ("p.tsv", "anchor\tother\nx\ty\n", None, "missing column 'positive'"),
        ("p.tsv", "only one column\n", None, "2-3 tab-separated columns"),
        ("p.jsonl", '{"anchor": "x"}\n', None, "missing column 'positive'"),
        ("p.jsonl", '{"anchor": "x", "positive": ""}\n', None, "missing or empty 'positive'"),
        ("p.jsonl", "{not json\n", None, "not valid JSON"),
        ("p.csv", "x,y\n", None, "cannot tell the format"),
        ("p.tsv", "x\ty\n", "parquet", "unknown data format"),
    ],
)
def test_bad_data_files_exit_2_with_a_clear_message(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MatryoshkaError, match=message):
        load_training_data(path, fmt)
    args = ["train", "--data", str(path), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args + (["--format", fmt] if fmt else []))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert not (tmp_path / "out").exists()


def test_bad_settings_exit_2_before_loading_anything(tmp_path):
    data = tmp_path / "p.tsv"
    data.write_text("a\tb\n")
    for extra, message in [
        (["--schedule", "random"], "unknown schedule"),
        (["--weights", "1,2"], "2 weights given for 7 dims"),
        (["--loss", "triplet"], "unknown loss"),
        (["--dims", "384,x"], "comma-separated integers"),
        (["--resume"], "no complete checkpoint"),
    ]:
        result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "o"), *extra])
        assert result.exit_code == 2, extra
        assert message in result.output
