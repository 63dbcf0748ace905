"""2D Matryoshka loss: a fixed list of (layers, dim) pairs, each embedding pooled from that layer.

Starbucks (Zhuang et al.) trains a fixed ladder of sub-models, small layer counts with small dims,
rather than sentence-transformers' random layers and dims (``Matryoshka2dLoss``). One forward pass
gives every layer's hidden states; the model's own modules after the transformer (pooling, any head,
normalisation) turn each listed layer's states into its embedding, exactly what
``Encoder(layers=n)`` computes when it runs the first n layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.layers import layer_stack
from matryoshka.train.losses import BASE_LOSSES, cosent, info_nce, similarity_distillation


def ladder(layers: Sequence[int], dims: Sequence[int], depth: int) -> list[tuple[int, int]]:
    """(layers, dim) pairs: the largest layer counts with the largest dims, rank by rank, and every dim
    at the model's full depth (``layers`` 2,3,4,6 with dims 384,256,128,64,32: (2, 64), (3, 128),
    (4, 256), then (6, d) for every d)."""
    layers, dims = sorted(set(layers), reverse=True), sorted(set(dims), reverse=True)
    if any(not 1 <= n <= depth for n in layers):
        raise MatryoshkaError(f"layers {sorted(layers)} must lie between 1 and the model's depth {depth}")
    if len(layers) > len(dims):
        raise MatryoshkaError(f"{len(layers)} layer counts need at least as many dims, got {len(dims)}")
    pairs = {(n, d) for n, d in zip(layers, dims, strict=False)} | {(depth, d) for d in dims}
    return sorted(pairs, key=lambda pair: (-pair[0], -pair[1]))


def layer_embeddings(model, features: dict[str, Tensor], layers: Iterable[int]) -> dict[int, Tensor]:
    """The sentence embedding pooled from each of ``layers`` (1-based) by ``model``'s later modules."""
    transformer = model[0]
    config = transformer.auto_model.config
    before = config.output_hidden_states
    config.output_hidden_states = True
    try:
        output = transformer(features)
    finally:
        config.output_hidden_states = before
    states = output["all_layer_embeddings"]  # [0] is the embedding layer's output
    found = {}
    for n in layers:
        pooled = {**output, "token_embeddings": states[n]}
        for module in list(model)[1:]:
            pooled = module(pooled)
        found[n] = pooled["sentence_embedding"]
    return found


class LayerDimLoss(nn.Module):
    """Sum of a base loss over (layers, dim) pairs, from one forward pass of ``model``.

    Args:
        model: the SentenceTransformer being trained.
        base: ``"infonce"`` (anchor, positive[, negative] columns) or ``"cosent"`` (pairs + score).
        pairs: (layers, dim) pairs, e.g. from :func:`ladder`; the largest is the full model.
        distill: weight of pulling each pair's in-batch similarities toward the full model's (0: off).
        temperature: InfoNCE temperature (CoSENT uses scale 1/temperature), also the distillation's.
        symmetric: add InfoNCE's positive-to-anchor term.

    Example:
        >>> loss = LayerDimLoss(model, "cosent", ladder([2, 3, 6], [384, 128, 64], 6))
    """

    def __init__(
        self,
        model: nn.Module,
        base: str,
        pairs: Sequence[tuple[int, int]],
        distill: float = 0.0,
        temperature: float = 0.05,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        if base not in BASE_LOSSES:
            raise MatryoshkaError(f"unknown loss {base!r}: use {' or '.join(BASE_LOSSES)}")
        depth, full_dim = len(layer_stack(model)), model.get_embedding_dimension()
        if any(not 1 <= n <= depth or not 1 <= d <= full_dim for n, d in pairs):
            raise MatryoshkaError(f"pairs {list(pairs)} must lie within {depth} layers and {full_dim} dims")
        self.model = model
        self.base = base
        self.pairs = sorted(set(pairs), key=lambda pair: (-pair[0], -pair[1]))
        self.full = self.pairs[0]
        self.distill = distill
        self.temperature = temperature
        self.symmetric = symmetric
        self.last_terms: dict[str, float] = {}

    @property
    def dims(self) -> list[int]:
        return sorted({d for _, d in self.pairs}, reverse=True)

    @property
    def layers(self) -> list[int]:
        return sorted({n for n, _ in self.pairs})

    def base_loss(self, prefixes: list[Tensor], labels: Tensor | None) -> Tensor:
        if self.base == "cosent":
            if labels is None or len(prefixes) != 2:
                raise MatryoshkaError("the cosent loss needs two text columns and a score column")
            return cosent(prefixes, labels, 1.0 / self.temperature)
        return info_nce(prefixes, self.temperature, self.symmetric)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        columns = [layer_embeddings(self.model, features, self.layers) for features in sentence_features]
        full = [truncate(column[self.full[0]], self.full[1]) for column in columns]
        total, terms = full[0].new_zeros(()), {}
        for n, dim in self.pairs:
            prefixes = [truncate(column[n], dim) for column in columns]
            value = self.base_loss(prefixes, labels)
            total = total + value
            terms[f"loss_{n}x{dim}"] = float(value.detach())
            if self.distill and (n, dim) != self.full:
                distilled = similarity_distillation(prefixes, full, self.temperature)
                total = total + self.distill * distilled
                terms[f"distill_{n}x{dim}"] = float(distilled.detach())
        self.last_terms = terms
        return total

    def get_config_dict(self) -> dict:
        return {
            "base": self.base,
            "pairs": [list(pair) for pair in self.pairs],
            "distill": self.distill,
            "temperature": self.temperature,
            "symmetric": self.symmetric,
        }
