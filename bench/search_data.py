"""The two vector sets of bench/search.py: real MiniLM embeddings and a synthetic Matryoshka-like set.

Real (a): sentences of the staged data sets (SciFact titles and abstracts split into sentences,
Flickr8k captions, STS-B sentences), de-duplicated and shuffled with a fixed seed; the first
``corpus_size`` are the corpus, the next ``query_count`` are held-out queries (texts never indexed).
Encoded once at full dim through the shared embedding cache.

Synthetic (b): unit vectors whose coordinate variance decays along the dimension like a Matryoshka
model's (leading coordinates carry most of the signal), drawn around cluster centres; see
:func:`synthetic_vectors`.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np

from matryoshka.datasets import data_path

SEED = 20261123
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
MIN_CHARS = 20
ENCODE_SLICE = 10_000


def staged_sentences() -> list[str]:
    """Distinct sentences of SciFact (titles, abstracts), Flickr8k captions and STS-B, in a fixed order."""
    texts: list[str] = []
    with data_path("scifact", "corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts += [doc["title"], *SENTENCE_END.split(doc["text"])]
    with data_path("flickr8k_caption_pairs", "Flickr8k.token.txt").open(encoding="utf-8") as handle:
        for line in handle:
            caption = line.split("\t", 1)[-1].strip().removesuffix(" .")
            texts.append(caption)
    for split in ("train", "dev", "test"):
        with data_path("stsb", f"sts-{split}.csv").open(encoding="utf-8") as handle:
            for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 7:
                    texts += [row[5], row[6]]
    unique = [t.strip() for t in dict.fromkeys(texts) if len(t.strip()) >= MIN_CHARS]
    order = np.random.default_rng(SEED).permutation(len(unique))
    return [unique[i] for i in order]


def real_texts(corpus_size: int = 100_000, query_count: int = 1000) -> tuple[list[str], list[str]]:
    """(corpus texts, held-out query texts)."""
    texts = staged_sentences()
    if len(texts) < corpus_size + query_count:
        raise SystemExit(f"only {len(texts)} staged sentences, need {corpus_size + query_count}")
    return texts[:corpus_size], texts[corpus_size : corpus_size + query_count]


def real_vectors(corpus_size: int = 100_000, query_count: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Full-dim MiniLM vectors of :func:`real_texts`, encoded through the cache in slices of
    ``ENCODE_SLICE`` texts (a slow encoding run keeps what it finished)."""
    from matryoshka.cache import cached_encode_full
    from matryoshka.encoder import Encoder

    corpus, queries = real_texts(corpus_size, query_count)
    encoder = Encoder(device="cpu", batch_size=128)
    query_vectors = cached_encode_full(encoder, queries)
    slices = [
        cached_encode_full(encoder, corpus[start : start + ENCODE_SLICE])
        for start in range(0, len(corpus), ENCODE_SLICE)
    ]
    return np.concatenate(slices), query_vectors


def synthetic_vectors(
    rows: int = 1_000_000, query_count: int = 1000, dim: int = 384, clusters: int = 1000, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors with a decaying spectrum around clusters, and queries drawn the same way.

    Coordinate ``j`` has scale ``(1 + j / 16) ** -0.75`` (a power-law decay, so a 32-dim prefix holds
    about half of the variance, as in MiniLM-style Matryoshka embeddings). Each vector is a cluster centre
    (Gaussian with that scale) plus per-vector noise of the same shape at 0.8x strength, then L2-normalised.
    Queries are fresh draws around the same centres (held out, never in the corpus).
    """
    rng = np.random.default_rng(seed)
    scale = ((1 + np.arange(dim) / 16) ** -0.75).astype(np.float32)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):
            size = min(100_000, count - start)
            block = centres[rng.integers(0, clusters, size)]
            block += 0.8 * rng.standard_normal((size, dim), dtype=np.float32) * scale
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + size] = block
        return out

    return draw(rows), draw(query_count)
