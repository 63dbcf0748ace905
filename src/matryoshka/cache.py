"""On-disk cache of full-dimension embeddings, keyed by model fingerprint + texts.

Every prefix is a ``truncate`` of the full vectors, so evaluating or indexing at many dims costs one
encoding pass, and a second run costs none. The cache lives outside the repo ($MATRYOSHKA_CACHE,
default ~/.cache/matryoshka) so every checkout of the project shares it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder


def cache_dir() -> Path:
    return Path(os.environ.get("MATRYOSHKA_CACHE", Path.home() / ".cache" / "matryoshka"))


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cached_encode_full(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode_full(texts)``, read from the cache when this model already encoded these texts."""
    texts = list(texts)
    path = cache_dir() / "embeddings" / f"{encoder.fingerprint}-{texts_fingerprint(texts)}.npy"
    if path.exists():
        try:
            vectors = np.load(path)
            if vectors.shape == (len(texts), encoder.full_dim):
                return vectors
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed below
    vectors = encoder.encode_full(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(temporary, vectors)
    os.replace(temporary, path)  # atomic: readers never see a half-written file
    return vectors
