"""MatryoshkaIndex: the small, stable Python face of an index directory (create/open/add/delete/search).

The planner and the Milvus back end build on this: a funnel is a list of :class:`Stage`, a search
returns ids, scores, texts and per-stage stats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index import writer
from matryoshka.index.funnel import calibrate_funnel, precision_cascade
from matryoshka.index.rotation import check_rotation, load_rotation, save_rotation
from matryoshka.index.search import funnel_search, load_prefix
from matryoshka.index.stages import SearchResult, Stage, StageStats, parse_funnel, query_vectors, stages_text
from matryoshka.index.store import DEFAULT_BOUNDARIES, Store, write_manifest

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder
    from matryoshka.index.adaptive import DepthModel
    from matryoshka.index.planner import Plan

DEFAULT_K = 10


class MatryoshkaIndex:
    """An index directory opened for reading and writing. See ``docs`` in the module for the layout."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.resident: dict[int, np.ndarray] = {}
        self._encoder: Encoder | None = None
        self._graphs: dict[int, object] = {}
        self._rotation: np.ndarray | None = None
        self.stage_seconds: dict[str, float] = {}  # latency-budget mode's running stage timings

    # ---- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        model: str | os.PathLike | Encoder | None = None,
        full_dim: int | None = None,
        chunks: Sequence[int] = DEFAULT_BOUNDARIES,
        dtype: str = "float16",
        int8_dim: int | None = None,
        binary_dim: int | None = None,
        vectors_from: str | None = None,
        backend: str = "local",
        rotation: np.ndarray | None = None,
        **milvus_options: object,
    ) -> MatryoshkaIndex:
        """A new empty index for ``model``'s vectors (or bare ``full_dim`` vectors with no model).

        ``rotation``: an orthogonal matrix applied to every vector and query (``rotation.fit_rotation``
        makes one from sample vectors), so vectors that do not nest get prefixes that do.
        ``backend="milvus"`` makes a :class:`~matryoshka.index.milvus.MilvusIndex` at ``path`` (a Milvus
        Lite ``.db`` file or ``http://host:19530``); ``milvus_options`` go to its ``create``."""
        if backend != "local":
            if rotation is not None:
                raise MatryoshkaError("rotation is a local index option: Milvus stores vectors as given")
            return _milvus(backend).create(path, model, full_dim, **milvus_options)  # type: ignore[return-value]
        source: dict = {"kind": "vectors" if vectors_from else "model", "path": vectors_from}
        if model is not None:
            encoder = model if hasattr(model, "fingerprint") else _encoder(model)
            source.update(model=encoder.info.name, fingerprint=encoder.fingerprint)
            if full_dim is not None and full_dim != encoder.full_dim:
                raise DimensionError(
                    f"model {encoder.info.name} makes {encoder.full_dim}-dim vectors, not {full_dim}"
                )
            full_dim = encoder.full_dim
        elif full_dim is None:
            raise MatryoshkaError("an index needs a model or the full dim of its vectors")
        matrix = None if rotation is None else check_rotation(rotation, full_dim)
        index = cls(Store.create(path, full_dim, tuple(chunks), dtype, int8_dim, binary_dim, source))
        if matrix is not None:
            index._update_manifest(rotation=save_rotation(index.store.root, matrix))
        return index

    @classmethod
    def open(
        cls, path: str | os.PathLike, load_dim: int | None = None, backend: str = "local", **milvus_options
    ) -> MatryoshkaIndex:
        """Open an index; ``load_dim`` reads that prefix into memory now (else on the first search)."""
        if backend != "local":
            return _milvus(backend).open(path, **milvus_options)  # type: ignore[return-value]
        index = cls(Store(path))
        if load_dim is not None:
            index.load(load_dim)
        return index

    def load(self, dim: int) -> None:
        """Hold the re-normalised ``dim`` prefix of every row in memory (reads only the chunks it needs)."""
        if dim not in self.resident:
            self.resident[dim] = load_prefix(self.store, dim)

    def close(self) -> None:
        self.store.close()

    # ---- writing --------------------------------------------------------------------------------
    def add(
        self,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
    ) -> int:
        """Append one committed batch: given vectors, or ``texts`` encoded with the index's model."""
        if vectors is None:
            if texts is None:
                raise MatryoshkaError("add needs vectors or texts")
            vectors = self.encoder.encode_full(list(texts))
        rows = writer.append(self.store, self.rotated(vectors), ids, texts, metadata)
        self._forget_memory()
        return rows

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Tombstone rows by id; returns the ids that were not found."""
        return writer.delete(self.store, ids)

    def compact(self) -> int:
        """Drop tombstoned rows for good (new file generation); returns the live row count."""
        rows = writer.compact(self.store)
        self._forget_memory()
        return rows

    def _forget_memory(self) -> None:
        self.resident.clear()
        self._graphs.clear()

    def calibrate(self, k: int = DEFAULT_K) -> list[Stage]:
        """Pick the default funnel on the index's own rows and record it in the manifest."""
        stages = calibrate_funnel(self.store, self.resident, k)
        self._update_manifest(funnel=stages_text(stages))
        return stages

    def plan(
        self,
        memory_gb: float | None = None,
        latency_ms: float | None = None,
        recall: float | None = None,
        k: int = DEFAULT_K,
        queries: np.ndarray | None = None,
        save: bool = True,
        sample: int | None = None,
    ) -> Plan:
        """Measure candidate funnels on a calibration sample (``queries``: a query log) and choose
        within the budgets (``sample`` calibration queries, by default ``planner.CALIBRATION_QUERIES``);
        saved in the manifest. Prefixes the plan does not hold leave RAM."""
        from matryoshka.index.planned import new_plan

        queries = None if queries is None else self.rotated(queries)
        plan = new_plan(self, k, memory_gb, latency_ms, recall, queries, sample)
        for dim in set(self.resident) - set(plan.chosen.resident):
            del self.resident[dim]
        self.store.release_copies()  # sign-bit prefixes measured while planning
        if save:
            self._update_manifest(plan=plan.to_json())
        return plan

    def saved_plan(self) -> tuple[Plan | None, bool]:
        """The saved plan (or None) and whether the index has grown past it (stale)."""
        from matryoshka.index.planned import plan_is_stale, saved_plan

        plan = saved_plan(self)
        return plan, plan is not None and plan_is_stale(self, plan)

    def train_adaptive(
        self,
        k: int = DEFAULT_K,
        queries: np.ndarray | None = None,
        funnel: str | None = None,
        target_recall: float | None = None,
    ) -> DepthModel:
        """Fit per-query depth (margin, predictor and rank rules) on up to ``DEPTH_QUERIES`` (1000) logged
        queries, or held-in rows when none are given; saved with the index."""
        from matryoshka.index.planned import train

        model, _ = train(self, k, None if queries is None else self.rotated(queries), funnel, target_recall)
        self._update_manifest(adaptive=model.record(model.save(self.store.root)))
        return model

    def _update_manifest(self, **changes: object) -> None:
        manifest = json.loads(json.dumps(self.store.manifest)) | changes
        write_manifest(self.store.root, manifest)
        self.store.manifest = manifest

    # ---- queries --------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The model that made this index's vectors (checked by fingerprint), for text queries."""
        if self._encoder is None:
            self.use_encoder(_encoder(self._model_name()))
        assert self._encoder is not None
        return self._encoder

    def _model_name(self) -> str:
        name = self.store.manifest["source"].get("model")
        if not name:
            raise MatryoshkaError("this index holds vectors from no recorded model: search it with vectors")
        return name

    def use_encoder(self, encoder: Encoder) -> None:
        """Encode text queries with ``encoder``; refused unless it is the model that made the index."""
        source = self.store.manifest["source"]
        if source.get("fingerprint") and encoder.fingerprint != source["fingerprint"]:
            raise MatryoshkaError(
                f"queries from model {encoder.info.name} ({encoder.fingerprint}) cannot search an index "
                f"of vectors from {source.get('model')} ({source['fingerprint']})"
            )
        if encoder.full_dim != self.store.full_dim:
            raise DimensionError(
                f"model makes {encoder.full_dim}-dim vectors, the index holds {self.store.full_dim}"
            )
        self._encoder = encoder

    def stages_for(
        self, k: int, dim: int | None = None, funnel: str | None = None, precision: str | None = None
    ) -> list[Stage]:
        """Stages of a search: one exact stage at ``dim``, a funnel, a precision cascade, or the default."""
        if sum(option is not None for option in (dim, funnel, precision)) > 1:
            raise MatryoshkaError("give at most one of dim, funnel and precision")
        full = self.store.full_dim
        if dim is not None:
            return [Stage(dim, k)]
        if funnel is not None:
            return parse_funnel(funnel, full, k)
        if precision is not None:
            return precision_cascade(precision, self.store, k)
        if self.store.manifest.get("funnel") is None:
            return calibrate_funnel(self.store, self.resident, k)
        stages = parse_funnel(self.store.manifest["funnel"], full, DEFAULT_K)
        grow = max(1.0, k / DEFAULT_K)
        return [*(Stage(s.dim, int(s.keep * grow), s.precision) for s in stages[:-1]), Stage(full, k)]

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = DEFAULT_K,
        dim: int | None = None,
        funnel: str | list[Stage] | None = None,
        precision: str | None = None,
        hnsw: bool = False,
        plan: str | Plan | None = None,
        latency_ms: float | None = None,
        recall: float | None = None,
        adaptive: bool | str = False,
    ) -> SearchResult:
        """Top ``k`` rows per query (texts are encoded with the index's model, vectors used as given).

        Budgets instead of a funnel: ``plan`` ("auto" or a Plan), ``recall`` (fastest saved-frontier
        plan reaching it), ``latency_ms`` (deepest stage finished in time), ``adaptive`` (per-query
        depth, "predictor" or "margin"); see planned.py."""
        if k < 1:
            raise MatryoshkaError(f"k must be at least 1, got {k}")
        vectors = self._query_vectors(queries)
        if plan is not None or latency_ms is not None or recall is not None or adaptive:
            if dim is not None or funnel is not None or precision is not None or hnsw:
                raise MatryoshkaError("budgets replace dim, funnel, precision and hnsw: give one")
            from matryoshka.index.planned import planned_search

            found = planned_search(self, vectors, k, plan, latency_ms, recall, adaptive)
            result = self._result(*found[:4])
            result.answered = found[4]
            return result
        stages = funnel if isinstance(funnel, list) else self.stages_for(k, dim, funnel, precision)
        first = stages[0]
        if first.precision == "float" and not hnsw:
            self.load(first.dim)
        candidates = self._graph_candidates if hnsw else None
        scores, rows, stats = funnel_search(self.store, vectors, stages, self.resident, candidates)
        return self._result(scores, rows, stats, stages)

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

        return SearchResult(scores, rows, records, stats, stages_text(stages))

    # ---- approximate first stage --------------------------------------------------------------------
    def build_hnsw(self, dim: int = 32, neighbours: int = 32, ef_construction: int = 40) -> Path:
        """An HNSW graph (faiss) over the ``dim`` prefix only, saved next to the data."""
        from matryoshka.index.graph import build_graph, save_graph

        self.load(dim)
        graph = build_graph(self.resident[dim], neighbours, ef_construction)
        name = f"g{self.store.manifest['generation']}-hnsw-{dim}.faiss"
        save_graph(graph, self.store.root / name)
        self._update_manifest(hnsw={**self.store.manifest.get("hnsw", {}), str(dim): name})
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
        """Manifest facts plus live and deleted row counts."""
        manifest = self.store.manifest
        deleted = len(self.store.deleted_rows())
        keys = (
            "source",
            "full_dim",
            "chunks",
            "dtype",
            "int8_dim",
            "binary_dim",
            "rows",
            "funnel",
            "format_version",
        )
        return {key: manifest.get(key) for key in keys} | {
            "rotated": "rotation" in manifest,
            "live": manifest["rows"] - deleted,
            "deleted": deleted,
        }


def _milvus(backend: str) -> type:
    if backend != "milvus":
        raise MatryoshkaError(f"unknown index backend {backend!r}: use local or milvus")
    from matryoshka.index.milvus import MilvusIndex

    return MilvusIndex


def _encoder(model: str | os.PathLike) -> Encoder:
    from matryoshka.encoder import Encoder

    return Encoder(model)
