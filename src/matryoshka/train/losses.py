"""Multi-scale (Matryoshka) losses: one forward pass per batch, the base loss on every prefix.

:class:`MatryoshkaTrainingLoss` is shaped like a sentence-transformers loss (a module holding the model,
called with ``(sentence_features, labels)``), so it plugs into ``SentenceTransformerTrainer``. Each
prefix comes from :func:`matryoshka.dims.truncate` of the one full-dim batch, never from a re-encode.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError

BASE_LOSSES = ("infonce", "cosent")
WEIGHTINGS = ("uniform", "decreasing", "importance", "full-heavy")


def dim_weights(
    dims: Sequence[int], weights: str | Sequence[float] = "uniform", alpha: float = 0.8
) -> list[float]:
    """One weight per dim of ``dims`` (sorted largest first): a named scheme or an explicit list.

    ``decreasing`` gives 1, 1/2, 1/3... from the full dim down, ``importance`` alpha**i,
    ``full-heavy`` 1.0 for the full dim and 0.5 for every smaller one (the MRL reference code).
    """
    dims = sorted(dims, reverse=True)
    if not isinstance(weights, str):
        values = [float(w) for w in weights]
        if len(values) != len(dims):
            raise MatryoshkaError(f"{len(values)} weights given for {len(dims)} dims: give one per dim")
        if any(w < 0 for w in values) or not any(values):
            raise MatryoshkaError("weights must be non-negative and not all zero")
        return values
    if weights == "uniform":
        return [1.0] * len(dims)
    if weights == "decreasing":
        return [1.0 / (i + 1) for i in range(len(dims))]
    if weights == "importance":
        return [alpha**i for i in range(len(dims))]
    if weights == "full-heavy":
        return [1.0] + [0.5] * (len(dims) - 1)
    raise MatryoshkaError(f"unknown weights {weights!r}: use {', '.join(WEIGHTINGS)} or a list of numbers")


def info_nce(prefixes: list[Tensor], temperature: float = 0.05, symmetric: bool = False) -> Tensor:
    """In-batch negatives InfoNCE (multiple-negatives ranking) on unit vectors.

    ``prefixes[0]`` are anchors, ``prefixes[1]`` their positives, any further column hard negatives;
    every other row's positive (and every hard negative) is a negative. ``symmetric`` adds the
    positive-to-anchor direction and averages the two.
    """
    anchors, candidates = prefixes[0], torch.cat(prefixes[1:])
    target = torch.arange(len(anchors), device=anchors.device)
    loss = F.cross_entropy(anchors @ candidates.T / temperature, target)
    if symmetric:
        backward = F.cross_entropy(prefixes[1] @ anchors.T / temperature, target)
        loss = (loss + backward) / 2
    return loss


def cosent(prefixes: list[Tensor], labels: Tensor, scale: float = 20.0) -> Tensor:
    """CoSENT for graded pairs: log(1 + sum exp(scale * (cos_j - cos_i))) over label_i > label_j."""
    cosines = (prefixes[0] * prefixes[1]).sum(-1) * scale
    labels = labels.view(-1).to(cosines.dtype)
    differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
    ordered = labels[:, None] > labels[None, :]
    zero = torch.zeros(1, device=cosines.device, dtype=cosines.dtype)
    return torch.logsumexp(torch.cat([zero, differences[ordered]]), dim=0)


def similarity_distillation(prefix: list[Tensor], full: list[Tensor], temperature: float) -> Tensor:
    """KL from the full dim's in-batch similarity distribution (detached) to the prefix's, per anchor."""
    candidates_prefix, candidates_full = torch.cat(prefix[1:]), torch.cat(full[1:])
    student = F.log_softmax(prefix[0] @ candidates_prefix.T / temperature, dim=-1)
    teacher = F.softmax((full[0] @ candidates_full.T / temperature).detach(), dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean")


class MatryoshkaTrainingLoss(nn.Module):
    """Weighted sum of a base loss over nested prefixes, from one forward pass of ``model``.

    Args:
        model: the SentenceTransformer being trained.
        base: ``"infonce"`` (anchor, positive[, negative] columns) or ``"cosent"`` (pairs + score).
        dims: prefix sizes; the model's full dim is always included.
        weights: a scheme of :func:`dim_weights` or one number per dim.
        dims_per_step: train a random subset of this many dims each step (the full dim always among them).
        distill: weight of pulling each prefix's in-batch similarities toward the full dim's (0: off).
        temperature: InfoNCE temperature (CoSENT uses scale 1/temperature), also the distillation's.
        symmetric: add InfoNCE's positive-to-anchor term.
    """

    def __init__(
        self,
        model: nn.Module,
        base: str = "infonce",
        dims: Sequence[int] = (384, 256, 128, 64, 32, 16, 8),
        weights: str | Sequence[float] = "uniform",
        dims_per_step: int | None = None,
        distill: float = 0.0,
        temperature: float = 0.05,
        symmetric: bool = False,
        alpha: float = 0.8,
        seed: int = 12,
    ) -> None:
        super().__init__()
        if base not in BASE_LOSSES:
            raise MatryoshkaError(f"unknown loss {base!r}: use {' or '.join(BASE_LOSSES)}")
        if temperature <= 0:
            raise MatryoshkaError(f"temperature must be positive, got {temperature}")
        self.model = model
        self.base = base
        full_dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
        if full_dim and any(d > full_dim or d < 1 for d in dims):
            raise MatryoshkaError(f"dims {list(dims)} must lie between 1 and the model's full dim {full_dim}")
        dims = sorted(set(dims) | ({full_dim} if full_dim else set()), reverse=True)
        self.dims: list[int] = dims
        self.weights = dict(zip(dims, dim_weights(dims, weights, alpha), strict=True))
        self.dims_per_step = dims_per_step
        self.distill = distill
        self.temperature = temperature
        self.symmetric = symmetric
        self.active_dims: list[int] | None = None  # set by a DimSchedule; None: every dim
        self.last_terms: dict[str, float] = {}
        self._random = random.Random(seed)

    @property
    def full_dim(self) -> int:
        return self.dims[0]

    def step_dims(self) -> list[int]:
        """The dims trained this step: the schedule's active dims, sampled down to ``dims_per_step``."""
        dims = list(self.active_dims or self.dims)
        if self.dims_per_step and self.dims_per_step < len(dims):
            keep = [self.full_dim] if self.full_dim in dims else []
            rest = [d for d in dims if d not in keep]
            keep += self._random.sample(rest, self.dims_per_step - len(keep))
            dims = sorted(keep, reverse=True)
        return dims

    def base_loss(self, prefixes: list[Tensor], labels: Tensor | None) -> Tensor:
        if self.base == "cosent":
            if labels is None or len(prefixes) != 2:
                raise MatryoshkaError("the cosent loss needs two text columns and a score column")
            return cosent(prefixes, labels, 1.0 / self.temperature)
        if len(prefixes) < 2:
            raise MatryoshkaError("the infonce loss needs an anchor and a positive column")
        return info_nce(prefixes, self.temperature, self.symmetric)

    def embed(self, sentence_features: Iterable[dict[str, Tensor]]) -> list[Tensor]:
        """Full-dim embeddings of each column: the one forward pass of this step."""
        return [self.model(features)["sentence_embedding"] for features in sentence_features]

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = self.embed(sentence_features)
        return self.loss_from_embeddings(embeddings, labels)

    def loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None = None) -> Tensor:
        full = [truncate(e) for e in embeddings]
        total = embeddings[0].new_zeros(())
        terms: dict[str, float] = {}
        for dim in self.step_dims():
            prefixes = full if dim == self.full_dim else [truncate(e, dim) for e in embeddings]
            value = self.base_loss(prefixes, labels)
            total = total + self.weights[dim] * value
            terms[f"loss_{dim}"] = float(value.detach())
            if self.distill and dim != self.full_dim:
                distilled = similarity_distillation(prefixes, full, self.temperature)
                total = total + self.distill * distilled
                terms[f"distill_{dim}"] = float(distilled.detach())
        self.last_terms = terms
        return total

    def get_config_dict(self) -> dict:
        return {
            "base": self.base,
            "dims": self.dims,
            "weights": [self.weights[d] for d in self.dims],
            "dims_per_step": self.dims_per_step,
            "distill": self.distill,
            "temperature": self.temperature,
            "symmetric": self.symmetric,
        }
