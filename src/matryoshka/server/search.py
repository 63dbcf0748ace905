"""Search for the server: one index, opened and searched in its own thread.

The index keeps a SQLite connection that belongs to the thread that opened it, and its in-memory
prefixes are filled on first use; a single dedicated thread keeps both safe and keeps numpy work off
the event loop. Queries are encoded by the serving engine (so they share its micro-batches).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from matryoshka.encoder import Encoder
from matryoshka.errors import MatryoshkaError
from matryoshka.index import MatryoshkaIndex, Stage
from matryoshka.index.stages import parse_funnel, stages_text

DEFAULT_K = 10


def bytes_per_vector(stage: Stage, stored_itemsize: int) -> int:
    """Bytes each vector costs at a stage's prefix and precision, as the index stores it."""
    if stage.precision == "binary":
        return -(-stage.dim // 8)
    if stage.precision == "int8":
        return stage.dim
    return stage.dim * stored_itemsize


class IndexService:
    """An index directory opened for serving text queries of ``encoder``'s model."""

    def __init__(self, path: str | os.PathLike, encoder: Encoder) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matryoshka-index")
        self.index, self.default_funnel, self.rows = self._thread.submit(self._open, encoder).result()
        self.itemsize = np.dtype(self.index.store.manifest["dtype"]).itemsize

    def _open(self, encoder: Encoder) -> tuple[MatryoshkaIndex, str, int]:
        index = MatryoshkaIndex.open(self.path)
        index.use_encoder(encoder)  # refuses an index built from another model's vectors
        info = index.info()
        if info["live"] == 0:
            raise MatryoshkaError(f"index {self.path} is empty: add documents before serving it")
        # An uncalibrated index would re-calibrate on every default search: pick its funnel once here.
        funnel = info["funnel"] or stages_text(index.stages_for(DEFAULT_K))
        first = index.stages_for(DEFAULT_K, funnel=funnel)[0]
        if first.precision == "float":
            index.load(first.dim)  # read the default first stage's prefix now, not on the first query
        return index, funnel, int(info["live"])

    def describe(self) -> dict:
        return {"name": self.name, "rows": self.rows, "default_funnel": self.default_funnel}

    async def search(
        self,
        vector: np.ndarray,
        k: int,
        dim: int | None = None,
        funnel: str | None = None,
        budget: dict | None = None,
    ) -> tuple[object, list[Stage]]:
        """Top ``k`` for one full-dim query vector: exact at ``dim``, through ``funnel``, within a planner
        ``budget`` (``{"recall": R}`` or ``{"latency_ms": L}``), or through the default funnel."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._search, vector, k, dim, funnel, budget
        )

    def _search(self, vector: np.ndarray, k: int, dim: int | None, funnel: str | None, budget: dict | None):
        if budget:
            result = self.index.search(vector[None, :], k, **budget).fetched()
            return result, parse_funnel(result.funnel, self.index.store.full_dim, k)
        if dim is None and funnel is None:
            funnel = self.default_funnel
        stages = self.index.stages_for(k, dim=dim, funnel=funnel)
        return self.index.search(vector[None, :], k, funnel=stages).fetched(), stages

    def close(self) -> None:
        self._thread.submit(self.index.close).result()
        self._thread.shutdown()
