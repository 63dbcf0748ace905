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

from matryoshka.dims import validate_dim
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.quantize import bytes_per_vector

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

    def bytes_per_vector(self, dtype: str) -> int:
        """Bytes of each row the stage reads: its codes, or (a float stage) the prefix stored in ``dtype``."""
        return bytes_per_vector(self.dim, dtype if self.precision == "float" else self.precision)


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
    that wants only scores and row numbers, as from a faiss search, skips the lookups."""

    scores: np.ndarray
    rows: np.ndarray
    records: Records = field(repr=False, compare=False)
    stages: list[StageStats] = field(default_factory=list)
    funnel: str = ""

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
    """``"32:1000,128:100"`` -> stages ending at full:k. Each stage is ``[precision@]dim:keep`` (dim may
    be ``full``); the last stage keeps ``k``. A funnel ends with a float stage at the full dim unless
    its last stage is written without a keep: ``"64"`` alone is an exact search at the 64-dim prefix."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise MatryoshkaError(f"empty funnel {text!r}")
    stages = []
    for part in parts:
        precision, _, rest = part.rpartition("@")
        dim_text, _, keep_text = rest.partition(":")
        try:
            dim = full_dim if dim_text == "full" else int(dim_text)
            keep = int(keep_text) if keep_text else k
        except ValueError:
            raise MatryoshkaError(f"bad funnel stage {part!r}: expected DIM:KEEP, e.g. 32:1000") from None
        if (precision or "float") not in PRECISION_NAMES:
            raise MatryoshkaError(f"bad funnel stage {part!r}: precision must be one of {PRECISION_NAMES}")
        stages.append(Stage(dim, keep, precision or "float"))
    final = ":" not in parts[-1]
    if not final and (stages[-1].dim, stages[-1].precision) != (full_dim, "float"):
        stages.append(Stage(full_dim, k))
    return checked_funnel(stages, full_dim, k)


def checked_funnel(stages: list[Stage], full_dim: int, k: int) -> list[Stage]:
    """``stages`` with the last keeping ``k``, or a clear error: dims within the full dim, and no stage
    keeping fewer rows than the ``k`` asked for (it would silently cut the answer short)."""
    if not stages:
        raise MatryoshkaError("a funnel needs at least one stage")
    if k < 1:
        raise MatryoshkaError(f"k must be at least 1, got {k}")
    for stage in stages:
        validate_dim(stage.dim, full_dim)
        if stage.keep < k and stage is not stages[-1]:
            raise MatryoshkaError(f"funnel stage {stage} keeps fewer rows than the {k} asked for")
    return [*stages[:-1], Stage(stages[-1].dim, k, stages[-1].precision)]


def stages_text(stages: list[Stage], full_dim: int) -> str:
    """The funnel's text, read back by :func:`parse_funnel` (a last stage short of the full dim is
    written without its keep, so it stays the last)."""
    parts = [str(s) for s in stages]
    last = stages[-1]
    if (last.dim, last.precision) != (full_dim, "float"):
        parts[-1] = parts[-1].rpartition(":")[0]
    return ",".join(parts)


def scaled_funnel(text: str, full_dim: int, k: int) -> list[Stage]:
    """A saved funnel (a calibrated default, a plan's choice; its last stage keeps the k it was chosen
    for) for top-``k``: every shortlist grows by ``k`` over that k, never shrinks."""
    chosen_for = int(text.rpartition(":")[2])
    stages = parse_funnel(text, full_dim, chosen_for)
    grow = max(1.0, k / chosen_for)
    widened = [Stage(s.dim, int(s.keep * grow), s.precision) for s in stages[:-1]]
    return checked_funnel([*widened, stages[-1]], full_dim, k)


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


def checked_rows(
    vectors: np.ndarray,
    full_dim: int,
    ids: Sequence[str] | None = None,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[dict | None] | None = None,
) -> tuple[np.ndarray, list[str] | None]:
    """Rows to add, refused before anything is written unless they are finite ``full_dim``-dim vectors
    with one id, text and metadata (each when given) per vector and distinct ids; float32, ids as text."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != full_dim:
        raise DimensionError(f"vectors have shape {vectors.shape}, the index holds {full_dim}-dim rows")
    if not np.isfinite(vectors).all():
        raise MatryoshkaError("vectors contain NaN or infinite values")
    for name, values in (("ids", ids), ("texts", texts), ("metadata", metadata)):
        if values is not None and len(values) != len(vectors):
            raise MatryoshkaError(f"{len(values)} {name} for {len(vectors)} vectors")
    ids = None if ids is None else [str(key) for key in ids]
    if ids is not None and len(set(ids)) != len(ids):
        raise MatryoshkaError("ids in one batch must be distinct")
    return vectors, ids
