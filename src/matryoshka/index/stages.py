"""Value types of a search, shared by every backend: a funnel's stages, their stats, and results.

A funnel is text (``32:1000,128:100``, ``binary@384:300``: each stage ``[precision@]dim:keep``) or a
list of :class:`Stage`; a search returns a :class:`SearchResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import DimensionError, MatryoshkaError

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder

PRECISION_NAMES = ("float", "int8", "binary")


@dataclass(frozen=True)
class Stage:
    """One step of a funnel: score at ``dim`` in ``precision``, keep the best ``keep`` rows."""

    dim: int
    keep: int
    precision: str = "float"

    def __str__(self) -> str:
        prefix = "" if self.precision == "float" else f"{self.precision}@"
        return f"{prefix}{self.dim}:{self.keep}"


@dataclass
class StageStats:
    """What one stage of a search did: rows it kept per query, seconds, bytes of vectors or codes read."""

    stage: str
    kept: int
    seconds: float
    bytes_read: int


Records = Callable[[], tuple[list[list[str]], list[list[str | None]]]]


@dataclass
class SearchResult:
    """Per query: final-stage scores and row numbers (``-1`` pads), best first, and the ``ids`` and
    ``texts`` of those rows; per stage: rows kept, time, bytes read.

    ``ids`` and ``texts`` are looked up when first read (``records``), not during the search: a caller
    that wants only scores and row numbers, as from a faiss search, skips the lookups (22 of 369 us
    per query, one 100k-row binary funnel at a time)."""

    scores: np.ndarray
    rows: np.ndarray
    records: Records = field(repr=False, compare=False)
    stages: list[StageStats] = field(default_factory=list)
    funnel: str = ""
    answered: list[str] = field(default_factory=list)  # per query, the stage whose ranking answered

    @cached_property
    def _records(self) -> tuple[list[list[str]], list[list[str | None]]]:
        return self.records()

    def fetched(self) -> SearchResult:
        """This result with its ids and texts looked up now (the index's SQLite connection serves the
        thread that opened it, so a result leaving that thread fetches first)."""
        self._records  # noqa: B018 - the lookup is the point
        return self

    @property
    def ids(self) -> list[list[str]]:
        return self._records[0]

    @property
    def texts(self) -> list[list[str | None]]:
        return self._records[1]


def parse_funnel(text: str, full_dim: int, k: int) -> list[Stage]:
    """``"32:1000,128:100"`` (each ``[precision@]dim:keep``, dim may be ``full``) -> stages ending at
    full:k."""
    stages = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        precision, _, rest = part.rpartition("@")
        dim_text, _, keep_text = rest.partition(":")
        try:
            dim = full_dim if dim_text == "full" else int(dim_text)
            keep = int(keep_text) if keep_text else k
        except ValueError:
            raise MatryoshkaError(f"bad funnel stage {part!r}: expected DIM:KEEP, e.g. 32:1000") from None
        if (precision or "float") not in PRECISION_NAMES:
            raise MatryoshkaError(f"bad funnel stage {part!r}: precision must be one of {PRECISION_NAMES}")
        if keep < 1:
            raise MatryoshkaError(f"bad funnel stage {part!r}: keep must be at least 1")
        stages.append(Stage(dim, keep, precision or "float"))
    if not stages:
        raise MatryoshkaError(f"empty funnel {text!r}")
    if (stages[-1].dim, stages[-1].precision) != (full_dim, "float"):
        stages.append(Stage(full_dim, k))
    return [*stages[:-1], Stage(stages[-1].dim, k, stages[-1].precision)]


def stages_text(stages: list[Stage]) -> str:
    return ",".join(str(s) for s in stages)


def query_vectors(
    queries: str | Sequence[str] | np.ndarray, full_dim: int, encoder: Callable[[], Encoder]
) -> np.ndarray:
    """Full-dim float32 query vectors: given vectors checked against the index's dim, texts encoded
    with the index's model (``encoder`` is called only when there are texts, so it may load lazily)."""
    if isinstance(queries, np.ndarray):
        vectors = np.atleast_2d(queries).astype(np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != full_dim:
            raise DimensionError(f"query vectors have {vectors.shape[-1]} dims, the index holds {full_dim}")
        return vectors
    texts = [queries] if isinstance(queries, str) else list(queries)
    if not texts:
        raise MatryoshkaError("no queries given")
    return encoder().encode_full(texts)
