"""The local index: a directory of memory-mapped chunk files, codes and SQLite rows (``store.py``),
searched through funnels (``search.py``), with a default funnel and plans from ``planner.py``.

A search never writes: the default funnel is calibrated when rows are added or compacted and saved
in the manifest; budgets are resolved by :meth:`MatryoshkaIndex.plan` before any search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import MatryoshkaError
from matryoshka.index import planner, writer
from matryoshka.index.planner import Candidate, Plan
from matryoshka.index.rotation import check_rotation, load_rotation, save_rotation
from matryoshka.index.search import funnel_search, load_prefix
from matryoshka.index.source import checked_encoder, model_source, recorded_encoder
from matryoshka.index.stages import (
    SearchResult,
    Stage,
    StageStats,
    checked_funnel,
    parse_funnel,
    query_vectors,
    scaled_funnel,
    stages_text,
)
from matryoshka.index.store import DEFAULT_BOUNDARIES, Store

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder

DEFAULT_K = 10
Funnel = str | list[Stage] | Candidate


class MatryoshkaIndex:
    """An index directory opened for reading and writing."""

    backend = "local"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.resident: dict[int, np.ndarray] = {}  # re-normalised float32 prefixes held in RAM, by dim
        self._encoder: Encoder | None = None
        self._graphs: dict[int, object] = {}
        self._rotation: np.ndarray | None = None
        self._plan: tuple[dict, Plan] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        target: str | os.PathLike,
        model: str | os.PathLike | Encoder | None = None,
        full_dim: int | None = None,
        chunks: Sequence[int] = DEFAULT_BOUNDARIES,
        dtype: str = "float16",
        int8_dim: int | None = None,
        binary_dim: int | None = None,
        vectors_from: str | None = None,
        rotation: np.ndarray | None = None,
    ) -> MatryoshkaIndex:
        """A new empty index directory for ``model``'s vectors (or bare ``full_dim`` vectors).

        ``rotation``: an orthogonal matrix applied to every vector and query (``rotation.fit_rotation``
        makes one from sample vectors), so vectors that do not nest get prefixes that do."""
        _, full_dim, recorded = model_source(model, full_dim)
        source = {"kind": "vectors" if vectors_from else "model", "path": vectors_from, **recorded}
        matrix = None if rotation is None else check_rotation(rotation, full_dim)
        index = cls(Store.create(target, full_dim, tuple(chunks), dtype, int8_dim, binary_dim, source))
        if matrix is not None:
            index.store.update_manifest(rotation=save_rotation(index.store.root, matrix))
        return index

    @classmethod
    def open(cls, target: str | os.PathLike) -> MatryoshkaIndex:
        return cls(Store(target))

    def load(self, dim: int) -> None:
        """Hold the re-normalised ``dim`` prefix of every row in memory (reads only the chunks it needs)."""
        if dim not in self.resident:
            self.resident[dim] = load_prefix(self.store, dim)

    def close(self) -> None:
        self.store.close()

    @property
    def live_rows(self) -> int:
        return self.store.live_rows

    # ---- writing --------------------------------------------------------------------------------
    def add(
        self,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
    ) -> int:
        """Append one committed batch (given vectors, or ``texts`` encoded with the index's model);
        returns the live row count. The first add calibrates the default funnel, and so does each add
        that doubles the rows it was calibrated on (a cost bounded by twice the last calibration)."""
        if vectors is None:
            if texts is None:
                raise MatryoshkaError("add needs vectors or texts")
            vectors = self.encoder.encode_full(list(texts))
        writer.append(self.store, self.rotated(vectors), ids, texts, metadata)
        self._forget_memory()
        if self.live_rows > 2 * (self.store.manifest.get("funnel_rows") or 0):
            self.calibrate()
        return self.live_rows

    def texts_of(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The text of each of ``ids`` the index holds (live rows only)."""
        rows = self.store.rows_of([str(i) for i in ids])
        found = self.store.records(np.array(list(rows.values()), dtype=np.int64))
        return {key: text for key, text, _ in found}

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Tombstone rows by id; returns the ids that were not found."""
        return writer.delete(self.store, ids)

    def compact(self) -> int:
        """Drop tombstoned rows for good (new file generation); returns the live row count."""
        rows = writer.compact(self.store)
        self._forget_memory()
        self.calibrate()
        return rows

    def _forget_memory(self) -> None:
        self.resident.clear()
        self._graphs.clear()

    def _hold_only(self, dims: set[int]) -> None:
        """After measuring funnels: keep only the prefixes the chosen one reads, free sign-bit copies."""
        for dim in set(self.resident) - dims:
            del self.resident[dim]
        self.store.release_copies()

    def _refresh(self) -> None:
        if self.store.refresh():  # another process committed: prefixes and graphs of the old rows go
            self._forget_memory()

    def calibrate(self) -> str:
        """Calibrate the default funnel on the index's own rows (``planner.default_funnel``) and save it
        with the row count it saw; returns it."""
        stages = planner.default_funnel(self.store, self.resident, DEFAULT_K)
        self._hold_only({stages[0].dim} if stages[0].precision == "float" else set())
        funnel = stages_text(stages, self.store.full_dim)
        self.store.update_manifest(funnel=funnel, funnel_rows=self.live_rows)
        return funnel

    def plan(
        self,
        memory_gb: float | None = None,
        latency_ms: float | None = None,
        recall: float | None = None,
        k: int = DEFAULT_K,
        queries: np.ndarray | None = None,
        save: bool = True,
        sample: int = planner.CALIBRATION_QUERIES,
    ) -> Plan:
        """Measure candidate funnels on ``sample`` calibration queries (``queries``: a query log, else
        held-in rows) and choose within the budgets; saved in the manifest, where a search with no
        funnel finds it. Prefixes the chosen funnel does not hold leave RAM."""
        log = None if queries is None else self.rotated(queries)
        made = planner.make_plan(
            self.store, self.resident, k, memory_gb, latency_ms, recall, log, sample=sample
        )
        self._hold_only(set(made.chosen.resident))
        if save:
            self.store.update_manifest(plan=made.to_json())
        return made

    def saved_plan(self) -> Plan | None:
        """The plan in the manifest (read once per manifest, since a default search asks each time)."""
        record = self.store.manifest.get("plan")
        if not record:
            return None
        if self._plan is None or self._plan[0] is not record:
            self._plan = (record, Plan.from_json(record))
        return self._plan[1]

    # ---- queries --------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The model that made this index's vectors (checked by fingerprint), for text queries."""
        if self._encoder is None:
            self.use_encoder(recorded_encoder(self.store.manifest["source"], "index"))
        assert self._encoder is not None
        return self._encoder

    def use_encoder(self, encoder: Encoder, any_layers: bool = False) -> None:
        """Encode text queries with ``encoder``; refused unless it is the model that made the index (at
        the same depth, unless ``any_layers``)."""
        source = self.store.manifest["source"]
        self._encoder = checked_encoder(encoder, source, self.store.full_dim, "search an index", any_layers)

    def default_funnel(self) -> str | Candidate:
        """What a search with no funnel runs: the saved plan's choice while the index has not outgrown
        it, else the calibrated default, else (too few rows to calibrate) a popcount scan of every sign
        bit keeping ``30 * k``, then the full dim."""
        plan = self.saved_plan()
        if plan is not None and not plan.is_stale(self.live_rows):
            return plan.chosen
        manifest = self.store.manifest
        if manifest.get("funnel"):
            return manifest["funnel"]
        full_dim = manifest["full_dim"]
        return stages_text(
            [Stage(manifest["binary_dim"], 30 * DEFAULT_K, "binary"), Stage(full_dim, DEFAULT_K)], full_dim
        )

    def stages_for(self, funnel: Funnel | None = None, k: int = DEFAULT_K) -> list[Stage]:
        """The stages a search for top-``k`` runs: a funnel as given (text or stages), a plan's
        candidate, or with None the default funnel widened for ``k``."""
        full = self.store.full_dim
        if funnel is None:
            funnel = self.default_funnel()
            if isinstance(funnel, str):
                return scaled_funnel(funnel, full, k)
        if isinstance(funnel, Candidate):
            return funnel.stages(full, k)
        if isinstance(funnel, list):
            return checked_funnel(funnel, full, k)
        return parse_funnel(funnel, full, k)

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = DEFAULT_K,
        funnel: Funnel | None = None,
        hnsw: bool = False,
    ) -> SearchResult:
        """Top ``k`` rows per query (texts are encoded with the index's model, vectors used as given)
        through ``funnel``: text like ``binary@384:300`` or ``32:1000,128:100`` (``64`` alone: exact at
        that prefix), a list of stages, or a plan's candidate; None runs :meth:`default_funnel`.
        ``hnsw``: the first stage's shortlist comes from the prefix graph (:meth:`build_hnsw`)."""
        self._refresh()
        stages = self.stages_for(funnel, k)
        vectors = self._query_vectors(queries)
        held = self.prepare(funnel, hnsw)
        candidates = self._graph_candidates if hnsw else None
        scores, rows, stats = funnel_search(self.store, vectors, stages, held, candidates)
        return self._result(scores, rows, stats, stages)

    def prepare(self, funnel: Funnel | None = None, hnsw: bool = False) -> dict[int, np.ndarray]:
        """The prefixes a search through ``funnel`` reads from RAM, loaded now if they are not held (a
        server calls this at start so its first query does not pay): a plan's resident dims only (its
        memory budget), else a float first stage's prefix and whatever else is held."""
        funnel = self.default_funnel() if funnel is None else funnel
        if isinstance(funnel, Candidate):
            for dim in funnel.resident:
                self.load(dim)
            return {dim: self.resident[dim] for dim in funnel.resident}
        first = self.stages_for(funnel, 1)[0]  # the first stage does not depend on k
        if first.precision == "float" and not hnsw:
            self.load(first.dim)
        return self.resident

    def _query_vectors(self, queries: str | Sequence[str] | np.ndarray) -> np.ndarray:
        return self.rotated(query_vectors(queries, self.store.full_dim, lambda: self.encoder))

    def rotated(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index stores them: through its rotation, if it has one (other shapes pass
        through unchanged, for the caller's own dimension check)."""
        record = self.store.manifest.get("rotation")
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if record is None or vectors.ndim != 2 or vectors.shape[1] != self.store.full_dim:
            return vectors
        if self._rotation is None:
            self._rotation = load_rotation(self.store.root, record, self.store.full_dim)
        return vectors @ self._rotation

    def _result(
        self, scores: np.ndarray, rows: np.ndarray, stats: list[StageStats], stages: list[Stage]
    ) -> SearchResult:
        store, generation = self.store, self.store.manifest["generation"]

        def records() -> tuple[list[list[str]], list[list[str | None]]]:
            if store.manifest["generation"] != generation:
                raise MatryoshkaError("index compacted since this search (rows renumbered): search again")
            found = store.records(rows[rows >= 0])
            lookup = dict(zip(rows[rows >= 0].tolist(), found, strict=True))
            ids = [[lookup[r][0] for r in query_rows if r >= 0] for query_rows in rows.tolist()]
            texts = [[lookup[r][1] for r in query_rows if r >= 0] for query_rows in rows.tolist()]
            return ids, texts

        return SearchResult(scores, rows, records, stats, stages_text(stages, store.full_dim))

    # ---- approximate first stage ----------------------------------------------------------------
    def build_hnsw(self, dim: int = 32, neighbours: int = 32, ef_construction: int = 40) -> Path:
        """An HNSW graph (faiss) over the ``dim`` prefix only, saved next to the data."""
        from matryoshka.index.graph import build_graph, save_graph

        self.load(dim)
        graph = build_graph(self.resident[dim], neighbours, ef_construction)
        name = f"g{self.store.manifest['generation']}-hnsw-{dim}.faiss"
        save_graph(graph, self.store.root / name)
        self.store.update_manifest(hnsw={**self.store.manifest.get("hnsw", {}), str(dim): name})
        self._graphs[dim] = graph
        return self.store.root / name

    def _graph_candidates(self, queries: np.ndarray, stage: Stage) -> np.ndarray:
        from matryoshka.index.graph import graph_candidates, load_graph

        if stage.dim not in self._graphs:
            name = self.store.manifest.get("hnsw", {}).get(str(stage.dim))
            if name is None:
                raise MatryoshkaError(f"no HNSW graph at dim {stage.dim}: build one first (build_hnsw)")
            self.load(stage.dim)
            self._graphs[stage.dim] = load_graph(self.store.root / name, self.resident[stage.dim])
        return graph_candidates(self._graphs[stage.dim], queries, stage, self.store.deleted_rows())

    def info(self) -> dict:
        """Manifest facts, the default funnel, and live and deleted row counts."""
        self._refresh()
        manifest = self.store.manifest
        keys = ("source", "full_dim", "chunks", "dtype", "int8_dim", "binary_dim", "rows", "format_version")
        default = self.default_funnel()
        return {key: manifest.get(key) for key in keys} | {
            "backend": self.backend,
            "funnel": default.funnel if isinstance(default, Candidate) else default,
            "rotated": "rotation" in manifest,
            "live": self.live_rows,
            "deleted": len(self.store.deleted_rows()),
        }
