import json

import pytest
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.eval.tasks import BeirTask

runner = CliRunner()


@pytest.fixture(autouse=True)
def _warm_cache(encoder, beir_dir):
    """The tiny set is in the session cache, so the CLI's own Encoder never loads the model."""
    BeirTask(beir_dir).embed(encoder)


def test_eval_json_compares_two_models(tmp_path, beir_dir):
    out = tmp_path / "report"
    args = ["eval", "--task", f"beir:{beir_dir}", "--dims", "384,32", "--compare", "minilm"]
    result = runner.invoke(app, [*args, "--baselines", "pca", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [series["name"] for series in report["series"]]
    assert names == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2 #2", "pca (all-MiniLM-L6-v2)"]
    first, second = report["series"][0]["rows"], report["series"][1]["rows"]
    assert [r["score"] for r in first] == [r["score"] for r in second]  # the alias names the same model
    assert (out / "report.json").exists() and (out / "quality_vs_dim.png").stat().st_size > 0


def test_eval_table(beir_dir):
    result = runner.invoke(app, ["eval", "--task", f"beir:{beir_dir}", "--dims", "64,8", "--baselines", ""])
    assert result.exit_code == 0, result.output
    assert "ndcg@10 x100 per dimension" in result.output
    assert "ret %" in result.output and "ms/q" in result.output


def test_eval_missing_data_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("MATRYOSHKA_DATA", str(tmp_path))
    result = runner.invoke(app, ["eval", "--task", "stsb"])
    assert result.exit_code == 2
    assert "missing data" in result.output and "sts-test.csv" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "squad"], "unknown task 'squad'"),
        (["--task", "beir:nowhere"], "missing data: no BEIR directory 'nowhere'"),
        (["--dims", "384,500"], "dimension 500 is out of range"),
        (["--dims", "64,x"], "dims must be comma-separated integers"),
        (["--baselines", "lda"], "unknown baseline 'lda'"),
        (["--model", "nope"], "unknown model 'nope'"),
    ],
)
def test_eval_bad_input_exits_2(args, message):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
