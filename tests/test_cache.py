import numpy as np

from matryoshka import Encoder
from matryoshka.cache import cached_encode_full


def test_second_call_reads_the_cache_and_does_no_encoding(
    tmp_path, monkeypatch, sentences, full_vectors, same_vectors
):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    encoder = Encoder(device="cpu")
    calls = []
    original = encoder.encode_full
    monkeypatch.setattr(encoder, "encode_full", lambda texts: calls.append(len(texts)) or original(texts))
    first = cached_encode_full(encoder, sentences[:20])
    second = cached_encode_full(encoder, sentences[:20])
    assert calls == [20]
    np.testing.assert_array_equal(first, second)
    same_vectors(second, full_vectors[:20])
    cached_encode_full(encoder, sentences[:21])  # other texts, other entry
    assert calls == [20, 21]


def test_damaged_entry_is_recomputed(tmp_path, monkeypatch, sentences, full_vectors, same_vectors):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    encoder = Encoder(device="cpu")
    cached_encode_full(encoder, sentences[:5])
    (entry,) = (tmp_path / "embeddings").glob("*.npy")
    entry.write_bytes(b"not an array")
    same_vectors(cached_encode_full(encoder, sentences[:5]), full_vectors[:5])
