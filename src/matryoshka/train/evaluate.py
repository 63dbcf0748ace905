"""Per-dim dev scores during training: one full-dim encode of the dev set, every prefix by truncate.

Scored pairs give Spearman x100 per dim; (anchor, positive) pairs give MRR@10 x100 of each anchor's
positive among all dev positives. Metrics come from :mod:`matryoshka.eval.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from matryoshka.dims import truncate
from matryoshka.eval.metrics import mrr_at_k, spearman
from matryoshka.train.data import TrainingData

MRR_DEPTH = 10


def encode_full(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return truncate(np.asarray(vectors, dtype=np.float32))


def pair_scores(dev: TrainingData, full: dict[str, np.ndarray], dims: Sequence[int]) -> dict[str, float]:
    """``{metric_dim: score x100}`` from full-dim vectors of the dev texts (keyed by text)."""
    columns = [c for c in dev.columns if c != "score"]
    first = np.stack([full[t] for t in dev.columns[columns[0]]])
    second = np.stack([full[t] for t in dev.columns[columns[1]]])
    scores = {}
    for dim in dims:
        a, b = truncate(first, dim), truncate(second, dim)
        if dev.kind == "scored":
            scores[f"spearman_{dim}"] = 100 * spearman((a * b).sum(-1), dev.columns["score"])
        else:
            similarity = a @ b.T
            top = np.argsort(-similarity, axis=1)[:, :MRR_DEPTH]
            run = {str(i): {str(j): float(similarity[i, j]) for j in row} for i, row in enumerate(top)}
            qrels = {str(i): {str(i): 1} for i in range(len(a))}
            scores[f"mrr@10_{dim}"] = 100 * mrr_at_k(run, qrels, MRR_DEPTH)
    return scores


class DimEvaluator(SentenceEvaluator):
    """A sentence-transformers evaluator reporting one dev score per trained dim."""

    def __init__(self, dev: TrainingData, dims: Sequence[int], name: str = "dev") -> None:
        super().__init__()
        self.dev = dev
        self.dims = sorted(dims, reverse=True)
        self.name = name
        self.metric = "spearman" if dev.kind == "scored" else "mrr@10"
        self.primary_metric = f"{self.metric}_{self.dims[-1]}"

    def __call__(self, model, output_path=None, epoch: float = -1, steps: int = -1) -> dict[str, float]:
        texts = self.dev.texts()
        full = dict(zip(texts, encode_full(model, texts), strict=True))
        metrics = pair_scores(self.dev, full, self.dims)
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
