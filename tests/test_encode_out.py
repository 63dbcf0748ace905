"""`encode --out` into a folder that cannot take the file fails at once, before the model loads."""

from typer.testing import CliRunner

from matryoshka.cli import app

runner = CliRunner()


def encode(texts, out, *extra):
    return runner.invoke(app, ["encode", str(texts), "--out", str(out), *extra])


def test_encode_refuses_an_output_folder_that_is_missing_or_a_file_path_that_is_a_folder(tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("a cat on a mat\nthe dog barks\n")
    out = tmp_path / "no-such-dir" / "o.npy"
    result = encode(texts, out)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: --out {out}: the folder {out.parent} does not exist"
    # checked before the model is even looked up (so before encoding anything)
    result = encode(texts, out, "--model", "no-such-model")
    assert result.output.strip() == f"error: --out {out}: the folder {out.parent} does not exist"
    result = encode(texts, tmp_path)
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: --out {tmp_path} is a folder: give a file name, e.g. {tmp_path / 'vectors.npy'}"
    )
