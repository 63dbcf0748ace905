import pytest

from matryoshka import Encoder
from matryoshka.datasets import load_stsb


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """300 distinct real sentences from the STS-B test split."""
    pairs = load_stsb("test")
    return list(dict.fromkeys(pairs.first + pairs.second))[:300]


@pytest.fixture(scope="session")
def full_vectors(encoder, sentences):
    return encoder.encode_full(sentences)
