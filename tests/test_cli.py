import json

import numpy as np
import pytest
from typer.testing import CliRunner

from matryoshka import truncate
from matryoshka.cli import app
from matryoshka.quantize import Int8Codes

runner = CliRunner()


@pytest.fixture
def text_file(tmp_path, sentences):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(sentences[:5]) + "\n")
    return path


def test_encode_text_file(tmp_path, text_file, encoder, sentences):
    out = tmp_path / "out.npy"
    result = runner.invoke(app, ["encode", str(text_file), "--dim", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # the same five texts in one batch, as the CLI encodes them (int8 vectors depend on batch companions)
    np.testing.assert_allclose(np.load(out), truncate(encoder.encode_full(sentences[:5]), 64), atol=1e-6)


def test_encode_jsonl_int8(tmp_path, sentences, encoder):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(json.dumps({"_id": str(i), "text": s}) + "\n" for i, s in enumerate(sentences[:5]))
    )
    result = runner.invoke(
        app, ["encode", str(path), "-d", "32", "-p", "int8", "-o", str(tmp_path / "c.npy")]
    )
    assert result.exit_code == 0, result.output
    codes = Int8Codes.load(tmp_path / "c.npz")
    assert codes.codes.shape == (5, 32)
    decoded = codes.dequantize()
    cosine = np.sum(decoded * truncate(encoder.encode_full(sentences[:5]), 32), 1) / np.linalg.norm(
        decoded, axis=1
    )
    assert cosine.min() > 0.99


@pytest.mark.parametrize("columns", ["200", "60"])
def test_models_lists_default(columns):
    result = runner.invoke(app, ["models"], env={"COLUMNS": columns})  # a narrow terminal too
    assert result.exit_code == 0
    assert "all-MiniLM-L6-v2" in result.output and "384" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dim", "0"], "dimension 0 is out of range"),
        (["--dim", "-4"], "dimension -4 is out of range"),
        (["--dim", "385"], "dimension 385 is out of range: must be between 1 and 384"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--precision", "int4"], "unknown precision 'int4'"),
    ],
)
def test_encode_bad_options_exit_2(tmp_path, text_file, args, message):
    result = runner.invoke(app, ["encode", str(text_file), "--out", str(tmp_path / "o.npy"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.npy").exists()


def test_unsupported_dim_names_supported_dims(tmp_path, text_file, monkeypatch):
    import shutil

    from matryoshka.models import resolve_model

    shutil.copytree(resolve_model().path, tmp_path / "m")
    (tmp_path / "m" / "matryoshka.json").write_text('{"supported_dims": [384, 64]}')
    result = runner.invoke(
        app, ["encode", str(text_file), "-m", str(tmp_path / "m"), "-d", "32", "-o", "x.npy"]
    )
    assert result.exit_code == 2
    assert "dimension 32 is not supported by this model; supported dims: 384, 64" in result.output


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("", "empty.txt", "is empty"),
        ("\n  \n", "blank.txt", "is empty"),
        ('{"text": "a"}\n{"title": "b"}\n', "bad.jsonl", "bad.jsonl:2: no string field 'text'"),
        ('{"text": "a"\n', "broken.jsonl", "broken.jsonl:1: not valid JSON"),
        (None, "missing.txt", "cannot read"),
        (b"\xff\xfe\x00bad", "binary.txt", "cannot read"),
    ],
)
def test_encode_bad_input_files_exit_2(tmp_path, content, name, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["encode", str(path), "--out", str(tmp_path / "o.npy")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_installed_entry_point_reports_errors_without_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "matryoshka"
    proc = subprocess.run(
        [str(script), "encode", str(tmp_path / "nope.txt"), "-o", "x.npy"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot read") and "Traceback" not in proc.stderr
