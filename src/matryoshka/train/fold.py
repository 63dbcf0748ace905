"""The recipe's second step: fit a linear adapter on the training texts and fold it into the model.

Training decides how good the full dim is; the post-hoc adapter (:mod:`matryoshka.train.adapter`, a
rotation fitted so every prefix keeps the full-dim neighbours) then orders the coordinates so the
prefixes nest. A rotation changes no full-dim similarity, so the full dim keeps every score of the
fine-tune. Folded in as a bias-free linear layer before the final normalisation, it is part of the
sentence-transformers model itself: plain ``SentenceTransformer(path, truncate_dim=64)``, ``Encoder``,
the ONNX export and the server all serve the adapted vectors.

Measured at the issue's full set-ups (docs/training.md): STS-B 8 dims 70.88 -> 74.64 at an unchanged
85.84 full dim; SciFact 64 dims 52.34 -> 62.25 over a full-dim-only fine-tune.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from matryoshka.adapter import Adapter
from matryoshka.errors import MatryoshkaError
from matryoshka.train.adapter import fit_adapter, sentence_queries
from matryoshka.train.data import TrainingData
from matryoshka.train.model import append_linear


def fit_on_training_texts(
    st, data: TrainingData, dims: Sequence[int], threads: int = 1, progress: bool = False
) -> Adapter:
    """A linear adapter fitted on the model's vectors of the training texts (for a BEIR set: its whole
    corpus, with the documents' own sentences as query-like anchors; no query or qrel is used).
    ``progress``: say what is encoded and show the encoding and fitting bars (minutes on a CPU)."""
    texts = data.corpus if data.corpus is not None else data.texts()
    queries = sentence_queries(texts) if data.corpus is not None else []
    if progress:
        extra = f" and {len(queries)} of their sentences as query-like anchors" if queries else ""
        print(f"adapter step: encoding {len(texts)} training texts{extra} with the model", file=sys.stderr)

    def encode(batch: list[str]) -> np.ndarray:
        vectors = st.encode(batch, batch_size=64, convert_to_numpy=True, show_progress_bar=progress)
        return np.asarray(vectors, dtype=np.float32)

    return fit_adapter(
        encode(texts),
        "linear",
        dims,
        queries=encode(queries) if queries else None,
        threads=threads,
        progress=progress,
        candidates=("start", "trained"),  # only an uncentred rotation folds into the model
        init="mean-last",
        epochs=2.0,  # the fold's setting when the training recipe was measured (docs/training.md)
    )


def fold_adapter(st, adapter: Adapter) -> None:
    """Append ``x -> x @ adapter.weight`` and a normalisation to the model's modules (after its own
    output, normalised where the model normalises: the vectors the adapter was fitted on)."""
    import torch

    if adapter.kind != "linear" or adapter.mlp is not None or np.any(adapter.mean):
        raise MatryoshkaError(f"only an uncentred linear adapter folds into a model, not {adapter.kind!r}")
    append_linear(st, torch.from_numpy(np.ascontiguousarray(adapter.weight.T)))
