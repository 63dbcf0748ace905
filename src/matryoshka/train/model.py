"""MatryoshkaModel: transformer + mean pooling + optional linear projection head + normalisation,
saved as a plain sentence-transformers directory plus ``matryoshka.json`` (what it was trained for)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.models import METADATA_FILE, resolve_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

PROJECTION_INITS = ("identity", "pca")


class MatryoshkaModel:
    """Builds, holds and saves the sentence-transformers model being trained.

    Args:
        base: a built-in model name or a sentence-transformers directory (its transformer is reused).
        projection: output size of a linear head after pooling (``None``: the hidden size with a ``pca``
            init, no head with ``identity``).
        projection_init: ``identity`` (the head starts as the first ``projection`` coordinates, extra
            outputs small random) or ``pca`` (the head starts as the PCA rotation of the base model's
            embeddings of ``pca_texts``, so every prefix starts as the best linear prefix).
        max_seq_length: token limit of the transformer.
        device: where to put it (the GPU when present by default).
    """

    def __init__(
        self,
        base: str | os.PathLike | None = None,
        projection: int | None = None,
        projection_init: str = "identity",
        pca_texts: Sequence[str] | None = None,
        max_seq_length: int | None = None,
        device: str | None = None,
        seed: int = 12,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if projection_init not in PROJECTION_INITS:
            raise MatryoshkaError(f"unknown projection init {projection_init!r}: use identity or pca")
        if projection is not None and projection < 1:
            raise MatryoshkaError(f"projection size must be positive, got {projection}")
        self.base_info = resolve_model(base)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        st = SentenceTransformer(str(self.base_info.path), device=device, local_files_only=True)
        if max_seq_length:
            st.max_seq_length = max_seq_length
        if projection is None and projection_init == "pca":
            projection = int(st.get_embedding_dimension())
        self.projection = projection
        if projection is not None:
            self._add_projection(st, projection, projection_init, pca_texts, seed)
        self.st: SentenceTransformer = st

    @property
    def full_dim(self) -> int:
        return int(self.st.get_embedding_dimension())

    def _add_projection(self, st, out_dim: int, init: str, pca_texts, seed: int) -> None:
        """Append a linear Dense layer and a normalisation to the base model's modules."""
        import torch

        hidden = int(st.get_embedding_dimension())
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(out_dim, hidden, generator=generator) * (0.01 / hidden**0.5)
        bias = torch.zeros(out_dim)
        if init == "pca":
            if not pca_texts:
                raise MatryoshkaError("a PCA-initialised projection needs texts to fit the PCA on")
            vectors = st.encode(list(pca_texts), batch_size=64, convert_to_numpy=True).astype(np.float64)
            mean = vectors.mean(axis=0)
            _, _, components = np.linalg.svd(vectors - mean, full_matrices=False)
            rows = min(out_dim, len(components))
            weight[:rows] = torch.tensor(components[:rows], dtype=torch.float32)
            bias[:rows] = -torch.tensor(components[:rows] @ mean, dtype=torch.float32)
        else:
            rows = min(out_dim, hidden)
            weight[:rows, :rows] = torch.eye(rows)
        # The head goes after the base model's output (normalised where the base normalises), so it sees
        # exactly the vectors the PCA was fitted on.
        append_linear(st, weight, bias)

    def save(self, path: str | os.PathLike, metadata: dict) -> Path:
        """Write the sentence-transformers directory and ``matryoshka.json`` (dims and recipe)."""
        return save_trained(self.st, path, metadata)


def append_linear(st: SentenceTransformer, weight, bias=None) -> None:
    """Append ``x -> x @ weight.T (+ bias)`` (torch tensors, ``weight`` shaped out x in) and a Normalize
    to the model's modules, so every output is unit-norm again."""
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    out_dim, in_dim = weight.shape
    dense = Dense(
        in_dim,
        out_dim,
        bias=bias is not None,
        activation_function=torch.nn.Identity(),
        init_weight=weight,
        init_bias=bias,
    )
    st.append(dense.to(st.device)).append(Normalize())


def save_trained(st: SentenceTransformer, path: str | os.PathLike, metadata: dict) -> Path:
    path = Path(path)
    st.save(str(path))
    dims = sorted({int(d) for d in metadata.get("supported_dims", [])}, reverse=True)
    meta = {"name": path.name, "full_dim": int(st.get_embedding_dimension()), **metadata}
    meta["supported_dims"] = dims or None
    (path / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return path
