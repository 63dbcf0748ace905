"""The multi-prefix objective that fits ``linear``, ``mlp`` and ``select`` adapters.

For a mini-batch of anchors (corpus vectors, plus optional query-like vectors), the candidates are
the anchors' faiss-precomputed full-dim nearest neighbours in the corpus plus random corpus vectors.
At every prefix dim, the student's similarity distribution over the candidates is pulled towards
the frozen full-dim one (listwise KL with a temperature, so the top of each neighbour list matters
most), plus a small pairwise cosine-matching term; with (query, positive) pairs, an in-batch-negatives
InfoNCE term is added at every prefix. Neighbours are computed once, training is mini-batched, so
the cost grows linearly with the number of vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from matryoshka.adapter import Adapter, mean_last_rotation, pca_rotation
from matryoshka.dims import truncate

EXACT_NEIGHBOURS_MAX = 200_000  # above this many corpus vectors, neighbours come from an IVF index


def nearest(corpus: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    """Ids of each anchor's ``k`` nearest corpus vectors by inner product (faiss; IVF for large corpora)."""
    import faiss

    dim = corpus.shape[1]
    if len(corpus) <= EXACT_NEIGHBOURS_MAX:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(4 * math.sqrt(len(corpus)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(corpus[rng.choice(len(corpus), min(len(corpus), 64 * lists), replace=False)])
        index.nprobe = 16
    index.add(np.ascontiguousarray(corpus, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(anchors, dtype=np.float32), min(k, len(corpus)))
    return ids


def train(
    vectors: np.ndarray,
    kind: str,
    dims: Sequence[int],
    queries: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
    neighbours: int = 10,
    random_candidates: int = 256,
    batch_size: int = 256,
    epochs: float = 10.0,  # chosen on bench/generalise.py's sets (2 fell short of centred PCA there)
    max_steps: int = 4000,
    learning_rate: float | None = None,
    temperature: float = 0.05,
    cosine_weight: float = 1.0,
    pair_weight: float = 1.0,
    pair_scale: float = 20.0,
    dim_weights: Sequence[float] | None = None,
    hidden: int = 256,
    init: str = "pca",
    orthogonal: bool = True,
    fixed_mean_axis: bool = False,
    seed: int = 0,
) -> tuple[Adapter, str]:
    """Fit a ``linear``/``mlp``/``select`` adapter; returns it and a description of the objective.

    ``init="pca"`` starts from the centred PCA rotation and learns in the centred frame (the teacher's
    full-dim neighbours and similarities are those of the centred vectors), ``"mean-last"`` from
    :func:`mean_last_rotation` (no centring: a rotation that folds into a model), ``"identity"`` from
    plain truncation; ``orthogonal`` keeps the matrix a rotation
    (Cayley map of a learned skew matrix), so full-dim similarities stay exactly those of the input.
    ``fixed_mean_axis`` (with ``mean-last``): the rotation turns only the axes orthogonal to the mean
    direction, which stays the last coordinate, so every shorter prefix stays centred in effect (its
    axes are orthogonal to the mean) while the full dim keeps the input's own cosines.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, rotation = pca_rotation(vectors)
    if init == "mean-last" and kind != "select":
        mean, rotation = np.zeros_like(mean), mean_last_rotation(vectors)
    elif init == "identity":
        rotation = np.eye(len(mean), dtype=np.float32)
    corpus = torch.from_numpy(vectors)
    anchors = vectors if queries is None else np.concatenate([vectors, queries])
    anchor_self = np.concatenate([np.arange(len(vectors)), np.full(len(anchors) - len(vectors), -1)])
    centred = init == "pca" and kind != "select"  # the teacher's frame: the adapter's own
    frame = (lambda x: truncate(x - mean)) if centred else (lambda x: x)
    neighbour_ids = torch.from_numpy(nearest(frame(vectors), frame(anchors), neighbours + 1))
    anchors_t, mean_t = torch.from_numpy(anchors), torch.from_numpy(mean)
    weights = list(dim_weights) if dim_weights is not None else [1.0] * len(dims)

    full_dim = vectors.shape[1]
    params: dict[str, torch.nn.Parameter] = {}
    if kind == "select":
        variance = np.log((vectors - mean).var(axis=0) + 1e-12)
        params["score"] = torch.nn.Parameter(torch.from_numpy((variance - variance.mean()) / variance.std()))
    else:
        base = torch.from_numpy(rotation.copy())
        if orthogonal:  # weight = base @ cayley(skew): stays a rotation, so the full dim keeps every ranking
            params["skew"] = torch.nn.Parameter(torch.zeros(full_dim, full_dim))
            skew_mask = torch.ones(full_dim, full_dim)
            if fixed_mean_axis and init == "mean-last" and kind != "select":
                skew_mask[-1, :] = skew_mask[:, -1] = 0  # the last axis (the mean direction) stays put
        else:
            params["weight"] = torch.nn.Parameter(base.clone())
        if kind == "mlp":
            params["w1"] = torch.nn.Parameter(torch.randn(full_dim, hidden) / math.sqrt(full_dim))
            params["b1"] = torch.nn.Parameter(torch.zeros(hidden))
            params["w2"] = torch.nn.Parameter(torch.zeros(hidden, full_dim))
            params["b2"] = torch.nn.Parameter(torch.zeros(full_dim))
    logit_scale = torch.nn.Parameter(torch.full((len(dims),), math.log(1 / temperature)))
    lr = learning_rate or (1e-2 if kind == "select" else 1e-3)
    optimiser = torch.optim.Adam([*params.values(), logit_scale], lr=lr)

    def current_weight() -> torch.Tensor:
        if "skew" in params:
            skew = (params["skew"] - params["skew"].T) * skew_mask
            identity = torch.eye(full_dim)
            return base @ torch.linalg.solve(identity - skew, identity + skew)
        return params["weight"]

    def prefixes(x: torch.Tensor, weight: torch.Tensor | None) -> list[torch.Tensor]:
        """Unit-norm prefix of the adapted ``x`` at every dim (masked full vectors for ``select``)."""
        centred = x - mean_t
        if kind == "select":
            score = params["score"]
            ranked = torch.sort(score.detach(), descending=True).values
            out = []
            for dim in dims:
                threshold = ranked[dim - 1] if dim == full_dim else (ranked[dim - 1] + ranked[dim]) / 2
                soft = torch.sigmoid((score - threshold) / 0.1)
                hard = (score >= ranked[dim - 1]).float()
                out.append(F.normalize(centred * (hard + soft - soft.detach()), dim=-1))
            return out
        adapted = centred @ weight
        if kind == "mlp":
            hidden_act = F.gelu(centred @ params["w1"] + params["b1"], approximate="tanh")
            adapted = adapted + hidden_act @ params["w2"] + params["b2"]
        return [F.normalize(adapted[:, :dim], dim=-1) for dim in dims]

    steps = min(max_steps, max(1, math.ceil(epochs * len(anchors) / batch_size)))
    bar = tqdm(range(steps), desc=f"fitting {kind} adapter", disable=not progress)
    for _ in bar:
        batch = rng.choice(len(anchors), min(batch_size, len(anchors)), replace=False)
        candidate_ids = torch.unique(
            torch.cat(
                [
                    neighbour_ids[batch].flatten(),
                    torch.from_numpy(rng.choice(len(vectors), min(random_candidates, len(vectors)))),
                ]
            )
        )
        candidate_ids = candidate_ids[candidate_ids >= 0]
        anchor_batch, candidates = anchors_t[batch], corpus[candidate_ids]
        is_self = torch.from_numpy(anchor_self[batch])[:, None] == candidate_ids[None, :]
        # Full-dim cosines in the adapter's own frame (centred when it centres): the pairwise term's
        # reference, and the listwise teacher of a centred fit.
        reference = F.normalize(anchor_batch - mean_t, dim=-1) @ F.normalize(candidates - mean_t, dim=-1).T
        teacher = reference if centred else anchor_batch @ candidates.T
        target = F.softmax((teacher / temperature).masked_fill(is_self, -1e4), dim=-1)
        loss = torch.zeros(())
        weight_now = current_weight() if kind != "select" else None
        for weight, scale, a, c in zip(
            weights,
            logit_scale.exp(),
            prefixes(anchor_batch, weight_now),
            prefixes(candidates, weight_now),
            strict=True,
        ):
            student = a @ c.T
            log_probs = F.log_softmax((student * scale).masked_fill(is_self, -1e4), dim=-1)
            term = F.kl_div(log_probs, target, reduction="batchmean")
            if cosine_weight:
                term = term + cosine_weight * ((student - reference)[~is_self] ** 2).mean()
            loss = loss + weight * term
        if pairs is not None and pair_weight:
            chosen = rng.choice(len(pairs[0]), min(batch_size, len(pairs[0])), replace=False)
            labels = torch.arange(len(chosen))
            for weight, q, p in zip(
                weights,
                prefixes(torch.from_numpy(pairs[0][chosen]), weight_now),
                prefixes(torch.from_numpy(pairs[1][chosen]), weight_now),
                strict=True,
            ):
                loss = loss + pair_weight * weight * F.cross_entropy(pair_scale * q @ p.T, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")

    objective = (
        f"listwise neighbour KL (k={neighbours}, +{random_candidates} random, tau={temperature})"
        f" + {cosine_weight} x pairwise cosine MSE at dims {list(dims)}"
        + (" with query-like anchors" if queries is not None else "")
        + (f" + {pair_weight} x in-batch InfoNCE on pairs" if pairs is not None else "")
    )
    if kind == "select":
        order = torch.argsort(params["score"].detach(), descending=True).numpy()
        permutation = np.zeros((full_dim, full_dim), np.float32)
        permutation[order, np.arange(full_dim)] = 1
        return Adapter(kind, mean, permutation), objective
    mlp = None
    if kind == "mlp":
        mlp = tuple(params[name].detach().numpy().copy() for name in ("w1", "b1", "w2", "b2"))
    return Adapter(kind, mean, current_weight().detach().numpy().copy(), mlp), objective
