import numpy as np
import pytest

from matryoshka import Encoder
from matryoshka.datasets import load_stsb


# How closely one backend's vectors of the same texts agree when the texts are batched differently:
# int8's dynamic quantisation takes activation ranges per batch, so batch companions move a vector a
# little (min cosine measured on 32 STS-B sentences: 0.988 at 384 dims, 0.986 at 64, 0.962 at 8);
# float backends agree to rounding.
def rebatch_min_cosine(dim: int) -> float:
    return 0.98 if dim >= 64 else 0.95


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The default encoder on CPU: its backend follows $MATRYOSHKA_BACKEND (the suite passes with each)."""
    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def same_vectors(encoder):
    """Check that two arrays are the same texts' vectors from ``encoder``, batched differently."""

    def check(found: np.ndarray, expected: np.ndarray) -> None:
        assert found.shape == expected.shape
        if encoder.backend == "onnx-int8":
            cosines = np.sum(np.atleast_2d(found) * np.atleast_2d(expected), axis=1)
            assert cosines.min() >= rebatch_min_cosine(found.shape[-1])
        else:
            np.testing.assert_allclose(found, expected, atol=1e-6)

    return check


def assert_same_top_k(scores, keys, expected_scores, expected_keys, atol: float = 1e-5) -> None:
    """Tie-tolerant top-k check (as faiss.contrib's): the same scores rank by rank, and the same rows
    except among those tied with the k-th score, which may come in any order or be swapped for one
    another."""
    np.testing.assert_allclose(scores, expected_scores, atol=atol)
    for found, expected, ranked in zip(keys, expected_keys, np.asarray(expected_scores), strict=True):
        tied = np.isclose(ranked, ranked[-1], atol=atol)
        assert list(found[: (~tied).sum()]) == list(expected[: (~tied).sum()])
        assert set(found) - set(expected) <= set(found[(~tied).sum() :])


@pytest.fixture(scope="session")
def same_top_k():
    return assert_same_top_k


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """300 distinct real sentences from the STS-B test split."""
    pairs = load_stsb("test")
    return list(dict.fromkeys(pairs.first + pairs.second))[:300]


@pytest.fixture(scope="session")
def full_vectors(encoder, sentences):
    return encoder.encode_full(sentences)
