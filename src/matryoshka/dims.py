"""The one primitive of the toolkit: keep a leading prefix of each vector and L2-renormalise it.

Every module that shortens vectors calls :func:`truncate`; every module that accepts a dimension
checks it with :func:`validate_dim`. Nothing else slices and renormalises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from matryoshka.errors import DimensionError

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


def validate_dim(dim: object, full_dim: int, supported: Sequence[int] | None = None) -> int:
    """Return ``dim`` as an int, or raise :class:`DimensionError` saying what is allowed.

    A dimension is an integer in ``[1, full_dim]``; where the model declares the dims it was
    trained for (``supported``), it must be one of those.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
        if isinstance(dim, float) and dim.is_integer():
            dim = int(dim)
        else:
            raise DimensionError(f"dimension must be an integer, got {dim!r}")
    dim = int(dim)
    if not 1 <= dim <= full_dim:
        raise DimensionError(f"dimension {dim} is out of range: must be between 1 and {full_dim}")
    if supported and dim not in supported:
        allowed = ", ".join(str(d) for d in sorted(supported, reverse=True))
        raise DimensionError(f"dimension {dim} is not supported by this model; supported dims: {allowed}")
    return dim


def truncate(x: ArrayT, dim: int | None = None) -> ArrayT:
    """First ``dim`` coordinates of each row, L2-renormalised (zero rows stay zero).

    Works on numpy arrays and torch tensors, 1-D (one vector) or 2-D (one vector per row), and keeps
    the input's type and float dtype. ``dim=None`` keeps every coordinate and only renormalises.
    Gradients flow through the torch path, and only into the kept coordinates.

    Example:
        >>> truncate(np.array([3.0, 4.0, 12.0]), 2)
        array([0.6, 0.8])
    """
    if x.ndim not in (1, 2):
        raise DimensionError(f"expected a 1-D or 2-D array of vectors, got shape {tuple(x.shape)}")
    full_dim = x.shape[-1]
    dim = full_dim if dim is None else validate_dim(dim, full_dim)
    prefix = x[..., :dim]
    if isinstance(x, np.ndarray):
        if prefix.dtype.kind != "f":
            prefix = prefix.astype(np.float32)
        # Norms in float32 at least, so float16 prefixes do not overflow when squared. np.linalg.norm's
        # own sum of squares, without its checks (faster for one query).
        wide = prefix if prefix.dtype.itemsize >= 4 else prefix.astype(np.float32)
        norms = np.sqrt(np.add.reduce(wide * wide, axis=-1, keepdims=True))
        norms[norms == 0] = 1
        return (prefix / norms).astype(prefix.dtype, copy=False)
    import torch

    norms = torch.linalg.vector_norm(prefix.float(), dim=-1, keepdim=True)
    return (prefix / torch.where(norms == 0, torch.ones_like(norms), norms)).to(prefix.dtype)
