import numpy as np
import pytest
from scipy.stats import spearmanr

from matryoshka import DimensionError, truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.quantize import (
    PRECISIONS,
    BinaryCodes,
    Int8Codes,
    bytes_per_vector,
    calibrate_int8,
    score,
    to_binary,
    to_int8,
)


def test_int8_codes_reconstruct_hand_example():
    # Column ranges [0, 255] and [-255, 255]: steps of exactly 1 and 2.
    x = np.array([[0.0, -255.0], [255.0, 255.0], [100.0, 1.0], [100.4, 2.2]], dtype=np.float32)
    codes = to_int8(x)
    np.testing.assert_array_equal(codes.codes, [[-128, -128], [127, 127], [-28, 0], [-28, 1]])
    np.testing.assert_allclose(codes.dequantize(), [[0, -255], [255, 255], [100, 1], [100, 3]], atol=1e-4)


def test_binary_codes_pack_sign_bits():
    codes = to_binary(np.array([[1.0, -1.0, 0.5, 0.0, -2.0, 3.0, 1.0, 1.0, -1.0]]))
    assert codes.dim == 9 and codes.bits.shape == (1, 2)
    np.testing.assert_array_equal(codes.bits, [[0b10100111, 0b00000000]])
    np.testing.assert_array_equal(codes.signs(), [[1, -1, 1, -1, -1, 1, 1, 1, -1]])


def test_asymmetric_scores_equal_decoded_dot_products():
    rng = np.random.default_rng(0)
    vectors, queries = truncate(rng.normal(size=(50, 16))), truncate(rng.normal(size=(3, 16)))
    codes = to_int8(vectors)
    np.testing.assert_allclose(score(queries, codes), queries @ codes.dequantize().T, atol=1e-5)
    binary = to_binary(vectors)
    np.testing.assert_allclose(score(queries, binary), queries @ np.sign(vectors).T / 4, atol=1e-6)


def test_int8_round_trip_keeps_cosine_on_real_embeddings(full_vectors):
    for dim in (384, 64):
        prefix = truncate(full_vectors, dim)
        decoded = to_int8(prefix).dequantize()
        cosine = np.sum(prefix * decoded, 1) / np.linalg.norm(decoded, axis=1)
        assert cosine.min() >= 0.99, (dim, cosine.min())


def test_binary_scores_keep_the_ranking_of_real_embeddings(full_vectors):
    queries, corpus = full_vectors[:20], full_vectors[20:]
    exact = queries @ corpus.T
    coded = score(queries, to_binary(corpus))
    rho = np.mean([spearmanr(e, c).statistic for e, c in zip(exact, coded, strict=True)])
    assert rho >= 0.85, rho


def test_int8_ranges_from_another_sample_and_save_round_trip(tmp_path, full_vectors):
    ranges = calibrate_int8(full_vectors[:100])
    codes = to_int8(full_vectors[100:], ranges)
    np.testing.assert_array_equal(codes.starts, ranges[0])
    loaded = Int8Codes.load(codes.save(tmp_path / "codes.npy"))
    np.testing.assert_array_equal(loaded.codes, codes.codes)
    np.testing.assert_array_equal(loaded.steps, codes.steps)


def test_dimension_mismatches_are_refused():
    with pytest.raises(DimensionError, match="queries have 3 dims, codes have 4"):
        score(np.ones((1, 3)), BinaryCodes(np.zeros((2, 1), np.uint8), 4))
    with pytest.raises(DimensionError, match="ranges are for 2 dims"):
        to_int8(np.ones((2, 3)), (np.zeros(2), np.ones(2)))


def test_bytes_per_vector_in_every_precision():
    sizes = {p: (bytes_per_vector(384, p), bytes_per_vector(12, p)) for p in PRECISIONS}
    assert sizes == {"float32": (1536, 48), "float16": (768, 24), "int8": (384, 12), "binary": (48, 2)}
    with pytest.raises(MatryoshkaError, match="unknown precision 'float'"):
        bytes_per_vector(64, "float")
