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
from matryoshka.index import MatryoshkaIndex


class IndexService:
    """An index directory opened for serving text queries of ``encoder``'s model."""

    def __init__(self, path: str | os.PathLike, encoder: Encoder, any_layers: bool = False) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matryoshka-index")
        self.index, self.default_funnel, self.rows = self._thread.submit(
            self._open, encoder, any_layers
        ).result()
        self.dtype = self.index.store.manifest["dtype"]

    def _open(self, encoder: Encoder, any_layers: bool) -> tuple[MatryoshkaIndex, str, int]:
        index = MatryoshkaIndex.open(self.path)
        index.use_encoder(encoder, any_layers)  # refuses an index built from another model's vectors
        info = index.info()
        if info["live"] == 0:
            raise MatryoshkaError(f"index {self.path} is empty: add documents before serving it")
        index.prepare()
        return index, info["funnel"], int(info["live"])

    def describe(self) -> dict:
        return {"name": self.name, "rows": self.rows, "default_funnel": self.default_funnel}

    async def search(self, vector: np.ndarray, k: int, funnel: str | None = None, budget: dict | None = None):
        """Top ``k`` for one full-dim query vector through ``funnel`` (None: the index's default), or
        the saved plan's funnel for a ``budget`` (``{"recall": R}`` or ``{"latency_ms": L}``)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._search, vector, k, funnel, budget
        )

    def _search(self, vector: np.ndarray, k: int, funnel: str | None, budget: dict | None):
        chosen = self._planned(budget) if budget else funnel
        stages = self.index.stages_for(chosen, k)
        return self.index.search(vector[None, :], k, funnel=chosen).fetched(), stages

    def _planned(self, budget: dict):
        plan = self.index.saved_plan()
        if plan is None:
            raise PlanMissing(
                f"index {self.name} has no saved plan: run `matryoshka index plan {self.path}` first"
            )
        if "recall" in budget:
            return plan.for_recall(budget["recall"])
        return plan.for_latency(budget["latency_ms"])

    def close(self) -> None:
        self._thread.submit(self.index.close).result()
        self._thread.shutdown()


class PlanMissing(MatryoshkaError):
    """A budget asked of an index with no saved plan: the server answers 409."""
