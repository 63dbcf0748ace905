"""Post-hoc Matryoshka adapters at run time: a small map applied to frozen full-dim vectors so their
prefixes work. Fitting lives in :mod:`matryoshka.train.adapter`; inference needs only this module.

Every kind is the same object: ``transform(x) = normalise((x - mean) @ weight + mlp(x - mean))``, whose
output is cut with :func:`matryoshka.dims.truncate` like any other vector.

- ``raw``: identity (plain truncation), the baseline to beat.
- ``pca``: the PCA rotation of the fitting vectors (centred, components by decreasing variance).
- ``select``: learned truncation: a permutation of the original coordinates, most important first.
- ``linear``: centring on the fitting mean, then a rotation initialised with the centred principal
  axes and trained with the multi-prefix objective (:mod:`matryoshka.train.adapter_objective`); full-dim
  rankings are those of the centred vectors. (Fitted with ``init="mean-last"``: no centring, a pure
  rotation that keeps the input's own full-dim rankings and folds into a model.)
- ``mlp``: ``linear`` plus a small residual MLP (zero-initialised, so it starts as ``linear``).

Fitting a ``linear``/``mlp`` adapter may keep its untrained start (centred PCA) instead, when held-out
rows say so (``meta["selection"]``, :mod:`matryoshka.train.adapter`).

An adapter is one ``.npz`` file (arrays plus JSON metadata: source model or provider, input dim, dims,
objective, kind, hash of the fitting vectors); saved into a model directory, the Encoder applies it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.models import ADAPTER_FILE

KINDS = ("linear", "mlp", "pca", "select", "raw")


def gelu(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU, the same as ``torch.nn.functional.gelu(approximate='tanh')``."""
    return 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


@dataclass
class Adapter:
    """A fitted map from a source's full-dim vectors to vectors whose prefixes are good embeddings."""

    kind: str
    mean: np.ndarray  # (input_dim,) subtracted first (zeros for raw)
    weight: np.ndarray  # (input_dim, input_dim)
    mlp: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # w1, b1, w2, b2
    meta: dict = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def dims(self) -> list[int]:
        return list(self.meta.get("dims", [self.input_dim]))

    @property
    def hash(self) -> str:
        """Identifies the map itself (changes whenever any parameter does)."""
        digest = hashlib.sha256(self.kind.encode())
        for array in (self.mean, self.weight, *(self.mlp or ())):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        return digest.hexdigest()[:16]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Unit-norm adapted vectors (float32); any prefix of them is then ``truncate(out, dim)``."""
        vectors = check_vectors(vectors, self.input_dim, "vectors")
        centred = vectors - self.mean
        out = centred @ self.weight
        if self.mlp is not None:
            w1, b1, w2, b2 = self.mlp
            out = out + gelu(centred @ w1 + b1) @ w2 + b2
        return truncate(out.astype(np.float32))

    def check_source(self, name: str, fingerprint: str | None = None) -> None:
        """Refuse vectors from a model other than the one this adapter was fitted on."""
        source = self.meta.get("source", {})
        fitted_fp = source.get("fingerprint")
        if source.get("model") is None:
            return  # fitted on a provider's .npy: nothing to compare but the dim
        # The fingerprint (model files) is the identity; a copied or renamed model directory keeps it.
        same = fitted_fp == fingerprint if fitted_fp and fingerprint else source["model"] == name
        if not same:
            raise MatryoshkaError(
                f"adapter was fitted for model {source['model']!r} (fingerprint {fitted_fp}), "
                f"not for {name!r} (fingerprint {fingerprint})"
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz``; a directory ``path`` gets ``matryoshka-adapter.npz`` inside it."""
        path = Path(path)
        if path.suffix != ".npz":
            path.mkdir(parents=True, exist_ok=True)
            path = path / ADAPTER_FILE
        arrays = {"mean": self.mean, "weight": self.weight}
        if self.mlp is not None:
            arrays.update(zip(("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2"), self.mlp, strict=True))
        meta = {**self.meta, "kind": self.kind, "input_dim": self.input_dim, "hash": self.hash}
        with path.open("wb") as handle:
            floats = {name: array.astype(np.float32) for name, array in arrays.items()}
            np.savez(handle, meta=np.array(json.dumps(meta)), **floats)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Adapter:
        """Read an adapter file (or the adapter inside a directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / ADAPTER_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise MatryoshkaError(f"cannot read adapter {path}: {exc}") from exc
        mlp = tuple(arrays[f"mlp_{p}"] for p in ("w1", "b1", "w2", "b2")) if "mlp_w1" in arrays else None
        return cls(kind=meta["kind"], mean=arrays["mean"], weight=arrays["weight"], mlp=mlp, meta=meta)


def check_vectors(vectors: np.ndarray, input_dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """2-D finite float32 vectors of the expected width, or a :class:`MatryoshkaError` saying why not."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise MatryoshkaError(f"{what} must be a 2-D numeric array, got {vectors.shape} ({vectors.dtype})")
    if input_dim is not None and vectors.shape[1] != input_dim:
        raise MatryoshkaError(f"{what} have {vectors.shape[1]} dims, the adapter expects {input_dim}")
    if not np.isfinite(vectors).all():
        raise MatryoshkaError(f"{what} contain NaN or infinite values")
    return vectors.astype(np.float32, copy=False)


def data_hash(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float32).tobytes()).hexdigest()[:16]


def pca_rotation(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and orthogonal rotation whose columns are principal axes by decreasing variance."""
    mean = vectors.mean(axis=0)
    centred = (vectors - mean).astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    order = np.argsort(-eigenvalues, kind="stable")
    return mean.astype(np.float32), eigenvectors[:, order].astype(np.float32)


def mean_last_rotation(vectors: np.ndarray) -> np.ndarray:
    """Orthogonal rotation: principal axes of the data with its mean direction projected out, then the
    mean direction itself as the last coordinate. No centring is needed: every prefix shorter than the
    full dim drops the direction all vectors share, and the full dim is an exact rotation of the input."""
    mean = vectors.mean(axis=0).astype(np.float64)
    direction = mean / np.linalg.norm(mean)
    complement = np.eye(len(mean)) - np.outer(direction, direction)
    centred = (vectors - mean) @ complement
    scatter = centred.T @ centred
    # The mean direction is an exact eigenvector of this matrix with the most negative eigenvalue, so it
    # comes last and every other axis is orthogonal to it.
    shifted = scatter - (np.trace(scatter) + 1) * np.outer(direction, direction)
    eigenvalues, eigenvectors = np.linalg.eigh(shifted)
    return eigenvectors[:, np.argsort(-eigenvalues, kind="stable")].astype(np.float32)
