import json

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka.cli import app
from matryoshka.index import MatryoshkaIndex

runner = CliRunner()


@pytest.fixture
def vector_files(tmp_path, full_vectors, sentences):
    np.save(tmp_path / "v.npy", full_vectors)
    lines = [json.dumps({"_id": f"d{i}", "text": s}) for i, s in enumerate(sentences)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "t100.jsonl").write_text("\n".join(lines[:100]) + "\n")
    np.save(tmp_path / "v100.npy", full_vectors[:100])
    return tmp_path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_build_resume_search_delete_compact(vector_files, sentences):
    root = vector_files
    out = root / "idx"
    first = invoke(
        "index", "build", "--vectors", root / "v100.npy", "--texts", root / "t100.jsonl", "-o", out
    )
    assert first.exit_code == 0, first.output
    assert MatryoshkaIndex.open(out).store.rows == 100
    resumed = invoke("index", "build", "--vectors", root / "v.npy", "--texts", root / "t.jsonl", "-o", out)
    assert resumed.exit_code == 0, resumed.output
    assert f"indexed {len(sentences) - 100} rows (resumed: 100 of its rows were there)" in resumed.output
    info = json.loads(invoke("index", "info", out, "--verify").output)
    assert info["rows"] == len(sentences) and info["verified"] and info["source"]["kind"] == "vectors"
    assert info["funnel"].endswith("384:10")

    text_query = invoke("search", out, "a man plays a guitar")
    assert text_query.exit_code == 2 and "no recorded model" in text_query.output

    deleted = invoke("index", "delete", out, "d5", "d7", "missing")
    assert (
        deleted.exit_code == 0
        and "deleted 2 rows" in deleted.output
        and "not found: missing" in deleted.output
    )
    compacted = invoke("index", "compact", out)
    assert compacted.exit_code == 0 and f"{len(sentences) - 2} rows" in compacted.output
    index = MatryoshkaIndex.open(out)
    assert index.store.rows_of(["d5", "d6", "d8"]) == {"d6": 5, "d8": 6}


def test_model_index_answers_text_queries(vector_files, sentences):
    root, out = vector_files, vector_files / "m"
    built = invoke(
        "index", "build", "--vectors", root / "v.npy", "--texts", root / "t.jsonl", "-m", "minilm", "-o", out
    )
    assert built.exit_code == 0, built.output
    result = invoke("search", out, sentences[3], "-k", "2", "--funnel", "32:100,128:20", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["results"][0]["id"] == "d3" and found["results"][0]["score"] == pytest.approx(1, abs=1e-3)
    assert [(s["stage"], s["kept"]) for s in found["stages"]] == [
        ("32:100", 100),
        ("128:20", 20),
        ("384:2", 2),
    ]
    shown = invoke("search", out, sentences[3], "-k", "1")
    assert shown.exit_code == 0 and "d3" in shown.output
    cascade = invoke("search", out, sentences[3], "-k", "1", "--funnel", "binary@384:1000,int8@384:100")
    assert cascade.exit_code == 0 and "d3" in cascade.output
    for args, message in [
        (["--dim", "0"], "dimension 0 is out of range"),
        (["--funnel", "32:x"], "bad funnel stage '32:x'"),
        (["--funnel", "int4@64:100"], "precision must be one of"),
        (["--dim", "64", "--funnel", "32:100"], "give at most one of --funnel, --dim"),
        (["-k", "200", "--funnel", "32:100"], "funnel stage 32:100 keeps fewer rows than the 200 asked for"),
        (["--recall", "0.9"], f"no saved plan: run `matryoshka index plan {out}` first"),
        (["--latency-ms", "2"], "no saved plan"),
    ]:
        bad = invoke("search", out, "query", *args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output


def test_search_reads_the_saved_plan_and_never_writes(vector_files, sentences):
    root, out = vector_files, vector_files / "p"
    args = ["--vectors", root / "v.npy", "--texts", root / "t.jsonl", "-m", "minilm", "-o", out]
    assert invoke("index", "build", *args).exit_code == 0
    planned = invoke("index", "plan", out, "--recall", "0.9", "--sample", "50")
    assert planned.exit_code == 0, planned.output
    plan = MatryoshkaIndex.open(out).saved_plan()
    manifest = (out / "manifest.json").read_bytes()
    for options, candidate in [
        (["--plan"], plan.chosen),
        (["--recall", "0.95"], plan.for_recall(0.95)),
        (["--latency-ms", "50"], plan.for_latency(50)),
        ([], plan.chosen),  # a fresh saved plan is the default
    ]:
        found = invoke("search", out, sentences[3], *options, "--json")
        assert found.exit_code == 0, found.output
        assert json.loads(found.output)["funnel"] == candidate.funnel
    for options in (["--dim", "64"], ["--funnel", "binary@384:100"], ["-k", "200"]):
        assert invoke("search", out, sentences[3], *options).exit_code == 0
    assert (out / "manifest.json").read_bytes() == manifest


def test_add_checks_ids_before_encoding_and_skips_existing(vector_files):
    root, out = vector_files, vector_files / "s"
    invoke("index", "build", "--vectors", root / "v100.npy", "--texts", root / "t100.jsonl", "-o", out)
    again = invoke("index", "add", out, "--vectors", root / "v.npy", "--texts", root / "t.jsonl")
    assert again.exit_code == 2 and "100 ids are already in the index" in again.output
    assert MatryoshkaIndex.open(out).store.rows == 100  # nothing was added
    resumed = invoke(
        "index", "add", out, "--vectors", root / "v.npy", "--texts", root / "t.jsonl", "--skip-existing"
    )
    assert resumed.exit_code == 0 and "(100 already there)" in resumed.output, resumed.output
    index = MatryoshkaIndex.open(out)
    assert index.live_rows == len(np.load(root / "v.npy")) and index.store.rows_of(["d0", "d150"]) == {
        "d0": 0,
        "d150": 150,
    }


def test_build_into_an_index_of_another_corpus_is_refused(vector_files, tmp_path):
    root, out = vector_files, vector_files / "o"
    invoke("index", "build", "--vectors", root / "v100.npy", "--texts", root / "t100.jsonl", "-o", out)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"another line {i}" for i in range(100)) + "\n")
    np.save(tmp_path / "o.npy", np.load(root / "v100.npy")[::-1])
    refused = invoke("index", "build", "--vectors", tmp_path / "o.npy", "--texts", other, "-o", out)
    assert refused.exit_code == 2 and "built from another corpus (100 rows are not in it)" in refused.output
    lines = [json.loads(line) for line in (root / "t100.jsonl").read_text().splitlines()]
    (tmp_path / "same_ids.jsonl").write_text(
        "".join(json.dumps({**r, "text": "changed"}) + "\n" for r in lines)
    )
    changed = invoke(
        "index", "build", "--vectors", root / "v100.npy", "--texts", tmp_path / "same_ids.jsonl", "-o", out
    )
    assert changed.exit_code == 2 and "(id 'd0' holds another text)" in changed.output
    assert MatryoshkaIndex.open(out).store.rows == 100
    not_a_dir = invoke(
        "index", "build", "--vectors", root / "v100.npy", "--texts", root / "t100.jsonl", "-o", other
    )
    assert not_a_dir.exit_code == 2 and "is a file, not an index directory" in not_a_dir.output


def test_cli_errors_on_bad_inputs(tmp_path, vector_files):
    root = vector_files
    assert "not a matryoshka index" in invoke("index", "info", tmp_path).output
    mismatch = invoke(
        "index", "build", "--vectors", root / "v100.npy", "--texts", root / "t.jsonl", "-o", root / "x"
    )
    assert mismatch.exit_code == 2 and "has 100 rows but" in mismatch.output
    neither = invoke("index", "build", "-o", root / "y")
    assert neither.exit_code == 2 and "give a corpus" in neither.output


def test_rotated_build_answers_text_queries(vector_files, sentences):
    root, out = vector_files, vector_files / "r"
    args = ["index", "build", "--vectors", root / "v.npy", "--texts", root / "t.jsonl", "-m", "minilm"]
    built = invoke(*args, "--rotate", "-o", out)
    assert built.exit_code == 0, built.output
    assert json.loads(invoke("index", "info", out).output)["rotated"]
    result = invoke("search", out, sentences[3], "-k", "1", "--dim", "32", "--json")
    found = json.loads(result.output)["results"][0]
    assert found["id"] == "d3" and found["score"] == pytest.approx(1, abs=1e-3)  # the query is rotated too
    unrotatable = invoke("index", "build", root / "t.jsonl", "--rotate", "-o", root / "u")
    assert unrotatable.exit_code == 2 and "--rotate is fitted on --vectors" in unrotatable.output
