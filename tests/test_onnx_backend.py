"""ONNX backends: vectors against the torch reference on real sentences, and the export cache."""

import json
import shutil

import numpy as np
import pytest

from matryoshka import Encoder, MatryoshkaError, truncate
from matryoshka.onnx_backend import (
    BACKEND_ENV,
    DEFAULT_CPU_BACKEND,
    OnnxRunner,
    default_backend,
    ensure_export,
    export_path,
    is_intact,
    length_batches,
)

# Per backend: (elementwise atol, min cosine) against torch on the same texts. fp32 is the same
# computation in another runtime; int8 weights and activations move each vector a little.
TOLERANCE = {"onnx": (1e-5, 0.9999), "onnx-int8": (None, 0.98)}


@pytest.fixture(scope="module")
def torch_vectors(sentences):
    return Encoder(device="cpu", backend="torch").encode_full(sentences)


@pytest.fixture(scope="module")
def built_exports(encoder):
    """Both exports in the real cache (built once, shared with later runs), as the reference copies."""
    loader = Encoder(device="cpu", backend="torch")._load_model
    return {backend: ensure_export(encoder.info, backend, loader) for backend in ("onnx", "onnx-int8")}


def refuse_to_load():
    raise AssertionError("the export was rebuilt from the torch model")


def test_batches_cap_rows_and_padded_tokens_and_cover_every_text_once():
    lengths = np.array([256, 12, 40, 256, 9, 130, 12, 70, 256, 33] * 7)
    batches = length_batches(lengths, batch_size=8, tokens_per_batch=512)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(batch) <= 8 and len(batch) * lengths[batch].max() <= 512 for batch in batches)
    assert [len(batch) for batch in batches][-3:] == [2, 2, 2]  # 256-token texts go 2 per batch
    assert max(lengths[batches[0]]) <= min(lengths[batches[-1]])  # shortest first: little padding
    assert [len(b) for b in length_batches(np.array([900, 5]), 8, 512)] == [1, 1]  # one row always


def test_long_and_short_texts_in_one_call_match_torch(sentences):
    from matryoshka.datasets import data_path

    with data_path("scifact", "corpus.jsonl").open(encoding="utf-8") as handle:
        passages = [json.loads(next(handle))["text"] for _ in range(12)]
    texts = [text for pair in zip(passages, sentences[:12], strict=True) for text in pair]
    reference = Encoder(device="cpu", backend="torch", batch_size=64).encode_full(texts)
    vectors = Encoder(device="cpu", backend="onnx", batch_size=64).encode_full(texts)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_backend_matches_torch_reference_on_real_sentences(backend, sentences, torch_vectors):
    encoder = Encoder(device="cpu", backend=backend)
    vectors = encoder.encode_full(sentences)
    atol, min_cosine = TOLERANCE[backend]
    assert vectors.shape == torch_vectors.shape and vectors.dtype == np.float32
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() >= min_cosine
    if atol is not None:
        np.testing.assert_allclose(vectors, torch_vectors, atol=atol)
    else:
        assert cosines.mean() >= 0.99
    # Matryoshka truncation works the same on every backend: prefixes of one pass, renormalised.
    prefixes = encoder.encode_many(sentences[:50], dims=[384, 64])
    np.testing.assert_allclose(prefixes[64], truncate(prefixes[384], 64), atol=1e-6)
    prefix_cosines = np.sum(prefixes[64] * truncate(torch_vectors[:50], 64), axis=1)
    assert prefix_cosines.min() >= min_cosine - 0.01


def test_backend_is_part_of_the_fingerprint_and_defaults_follow_the_environment(monkeypatch):
    fingerprints = {Encoder(device="cpu", backend=b).fingerprint for b in ("torch", "onnx", "onnx-int8")}
    assert len(fingerprints) == 3
    assert Encoder(device="cpu", backend="torch").fingerprint == Encoder(backend="torch").info.fingerprint
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert Encoder(device="cpu").backend == "torch"
    monkeypatch.delenv(BACKEND_ENV)
    assert default_backend("cpu") == DEFAULT_CPU_BACKEND and default_backend("cuda") == "torch"


def test_bad_backends_are_refused():
    with pytest.raises(MatryoshkaError, match="unknown backend 'tensorrt'"):
        Encoder(backend="tensorrt")
    with pytest.raises(MatryoshkaError, match="runs on CPU"):
        Encoder(backend="onnx", device="cuda")


def test_export_cache_is_reused(tmp_path, monkeypatch, encoder, built_exports, sentences):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    for backend, source in built_exports.items():
        target = export_path(encoder.info, backend)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        shutil.copy(source.with_suffix(".sha256"), target.with_suffix(".sha256"))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "onnx").iterdir()}
    runner = OnnxRunner(encoder.info, "onnx-int8", refuse_to_load)  # loading torch would fail the test
    assert runner.path == export_path(encoder.info, "onnx-int8")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "onnx").iterdir()} == stamps
    assert runner.encode(sentences[:4], batch_size=4).shape == (4, 384)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_corrupt_cached_export_is_detected_and_rebuilt(
    tmp_path, monkeypatch, encoder, built_exports, sentences, backend
):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    for name, source in built_exports.items():
        target = export_path(encoder.info, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        shutil.copy(source.with_suffix(".sha256"), target.with_suffix(".sha256"))
    damaged = export_path(encoder.info, backend)
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 64] = b"\xff" * 64  # flipped bytes inside the weights
    damaged.write_bytes(bytes(content))
    assert not is_intact(damaged)
    # int8 is rebuilt from the intact fp32 export, with no torch model; fp32 needs the model again.
    loader = refuse_to_load if backend == "onnx-int8" else Encoder(device="cpu", backend="torch")._load_model
    rebuilt = OnnxRunner(encoder.info, backend, loader)
    assert is_intact(damaged)
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(built_exports[backend].parents[1]))
    reference = OnnxRunner(encoder.info, backend, refuse_to_load)
    np.testing.assert_allclose(
        rebuilt.encode(sentences[:20], 20), reference.encode(sentences[:20], 20), atol=1e-6
    )


def test_missing_digest_counts_as_damaged(tmp_path, monkeypatch, encoder, built_exports):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    target = export_path(encoder.info, "onnx")
    target.parent.mkdir(parents=True)
    shutil.copy(built_exports["onnx"], target)
    assert not is_intact(target)


def test_cli_backend_option_and_models_column(tmp_path, sentences, monkeypatch):
    from typer.testing import CliRunner

    from matryoshka.cli import app

    runner = CliRunner()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentences[:3]) + "\n")
    out = tmp_path / "out.npy"
    result = runner.invoke(app, ["encode", str(texts), "--backend", "onnx", "-d", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    expected = Encoder(device="cpu", backend="onnx").encode(sentences[:3], dim=64)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    result = runner.invoke(app, ["encode", str(texts), "--backend", "tvm", "-o", str(out)])
    assert result.exit_code == 2 and "unknown backend 'tvm'" in result.output
    monkeypatch.setenv(BACKEND_ENV, "onnx-int8")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "backend" in result.output and "onnx-int8" in result.output
