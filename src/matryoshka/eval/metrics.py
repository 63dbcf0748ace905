"""Metrics, in one place: everything that scores rankings or similarities lives here."""

from __future__ import annotations

import numpy as np


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int | None = None) -> float:
    """Mean fraction of each query's exact top-k ids that ``found`` also returns in its top k.

    Both are ``(queries, >= k)`` id arrays (as the ``I`` of a search); ``k`` defaults to ``exact``'s width.
    """
    found, exact = np.atleast_2d(found), np.atleast_2d(exact)
    k = exact.shape[1] if k is None else k
    if len(found) != len(exact):
        raise ValueError(f"found has {len(found)} queries, exact has {len(exact)}")
    hits = [len(np.intersect1d(f[:k], e[:k])) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k)
