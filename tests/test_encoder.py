import numpy as np
import pytest

from matryoshka import DimensionError, Encoder, MatryoshkaError, truncate
from matryoshka.quantize import BinaryCodes, Int8Codes


def test_full_embeddings_match_sentence_transformers(encoder, sentences, full_vectors):
    reference = encoder.model.encode(sentences[:16], normalize_embeddings=True)
    if encoder.backend == "onnx-int8":  # quantised: checked by cosine (tests/test_onnx_backend.py)
        assert np.min(np.sum(full_vectors[:16] * reference, axis=1)) > 0.98
    else:
        atol = 1e-5 if encoder.backend == "onnx" else 1e-6
        np.testing.assert_allclose(full_vectors[:16], reference, atol=atol)
    assert full_vectors.shape == (300, 384) and full_vectors.dtype == np.float32


@pytest.mark.parametrize("dim", [256, 64, 8])
def test_prefix_equals_truncated_full_and_has_unit_norm(encoder, sentences, full_vectors, dim, same_vectors):
    out = encoder.encode(sentences[:32], dim=dim)
    assert out.shape == (32, dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, truncate(encoder.encode_full(sentences[:32]), dim), atol=1e-6)
    same_vectors(out, truncate(full_vectors[:32], dim))


def test_single_string_gives_one_vector(encoder, sentences, full_vectors, same_vectors):
    out = encoder.encode(sentences[0], dim=64)
    assert out.shape == (64,)
    np.testing.assert_allclose(out, truncate(encoder.encode_full([sentences[0]])[0], 64), atol=1e-6)
    same_vectors(out, truncate(full_vectors[0], 64))


def test_encode_many_runs_one_forward_pass(encoder, sentences, monkeypatch):
    calls = []
    # the forward pass: the torch module's forward, or the ONNX Runtime session's run
    target, name = (
        (encoder.model, "forward") if encoder.backend == "torch" else (encoder.runner.session, "run")
    )
    original = getattr(target, name)
    monkeypatch.setattr(target, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    encoder.encode_full(sentences[:40])
    one_pass = len(calls)
    calls.clear()
    out = encoder.encode_many(sentences[:40], dims=[384, 128, 32])
    assert len(calls) == one_pass >= 1  # three dims cost the forward passes of one encoding
    assert sorted(out) == [32, 128, 384]
    np.testing.assert_allclose(out[32], truncate(out[384], 32), atol=1e-6)


def test_precisions(encoder, sentences):
    half = encoder.encode(sentences[:10], dim=64, precision="float16")
    assert half.dtype == np.float16 and half.shape == (10, 64)
    int8 = encoder.encode(sentences[:10], dim=64, precision="int8")
    assert isinstance(int8, Int8Codes) and int8.codes.dtype == np.int8 and int8.codes.shape == (10, 64)
    binary = encoder.encode(sentences[:10], dim=64, precision="binary")
    assert isinstance(binary, BinaryCodes) and binary.bits.shape == (10, 8)


def test_bad_requests_are_refused(encoder):
    with pytest.raises(DimensionError, match="between 1 and 384"):
        encoder.encode(["x"], dim=385)
    with pytest.raises(MatryoshkaError, match="unknown precision"):
        encoder.encode(["x"], precision="int4")
    with pytest.raises(MatryoshkaError, match="must be a string"):
        encoder.encode(["x", 3])
    assert encoder.encode([], dim=8).shape == (0, 8)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(MatryoshkaError, match="unknown model 'no-such-model'"):
        Encoder("no-such-model")
