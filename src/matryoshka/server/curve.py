"""The page's retention curve: how much of the full-dim quality each prefix keeps, measured here.

Computed once per server, on first request: Spearman correlation of cosine vs gold similarity on a
fixed sample of STS-B test pairs, at each dim, relative to the full dim. The full vectors come from the
shared embedding cache, so every later server start with the same model costs nothing.
"""

from __future__ import annotations

import numpy as np

from matryoshka.cache import cached_encode_full
from matryoshka.datasets import load_stsb
from matryoshka.dims import truncate
from matryoshka.encoder import Encoder
from matryoshka.eval.metrics import spearman

CURVE_PAIRS = 300
CANDIDATE_DIMS = (8, 16, 32, 64, 128, 256, 384, 512, 768, 1024)


def curve_dims(encoder: Encoder) -> list[int]:
    """The model's declared dims, else powers of two below the full dim and the full dim."""
    if encoder.info.supported_dims:
        return sorted(encoder.info.supported_dims)
    return [d for d in CANDIDATE_DIMS if d < encoder.full_dim] + [encoder.full_dim]


def retention_curve(encoder: Encoder, pairs: int = CURVE_PAIRS) -> dict:
    """STS-B Spearman per dim on the first ``pairs`` test pairs, and its ratio to the full-dim value."""
    data = load_stsb("test")
    first, second, gold = data.first[:pairs], data.second[:pairs], data.scores[:pairs]
    vectors = cached_encode_full(encoder, first + second)
    left, right = vectors[: len(first)], vectors[len(first) :]
    dims = curve_dims(encoder)
    scores = [spearman(np.sum(truncate(left, dim) * truncate(right, dim), axis=1), gold) for dim in dims]
    full = scores[-1]
    return {
        "model": encoder.info.name,
        "metric": "Spearman (cosine vs gold)",
        "dataset": "STS-B test",
        "pairs": len(gold),
        "dims": dims,
        "scores": scores,
        "retention": [score / full for score in scores],
        "source": "computed by this server at first request (embeddings from the shared cache)",
    }
