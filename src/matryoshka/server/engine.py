"""The serving engine: concurrent requests share forward passes through a bounded micro-batching queue.

Requests wait at most ``batch_wait_ms`` for company, then up to ``max_batch`` texts go through one
``Encoder.encode_full`` call in a single worker thread, so the event loop never runs the model. The
queue is bounded in texts (``max_queue``, counting texts waiting and being encoded): a request that
does not fit is refused at once (:class:`Overloaded`) instead of piling up latency for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from matryoshka.encoder import Encoder


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and let the client retry."""


class EncodeTimeout(Exception):
    """The request waited longer than the engine's timeout."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class EmbeddingEngine:
    """Micro-batching front of an :class:`Encoder`; create, ``await start()``, ``await embed(texts)``.

    Args:
        encoder: the model; every request is answered from ``encoder.encode_full``.
        max_batch: most texts encoded together (1 disables batching across requests); the encoder
            sorts them by length and runs forward passes of its own ``batch_size``.
        max_queue: most texts admitted at once (waiting or being encoded); more gets :class:`Overloaded`.
        batch_wait_ms: how long the first request of a batch waits for others to join it.
        timeout_s: how long a request may wait for its vectors before :class:`EncodeTimeout`.
        on_batch: called with each forward pass's size (metrics).
    """

    def __init__(
        self,
        encoder: Encoder,
        max_batch: int = 64,
        max_queue: int = 256,
        batch_wait_ms: float = 5.0,
        timeout_s: float = 30.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.encoder = encoder
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_ms / 1000
        self.timeout_s = timeout_s
        self.on_batch = on_batch
        self.admitted = 0  # texts of the requests still waiting for their vectors
        self._queue: asyncio.Queue[_Job] | None = None
        self._held: _Job | None = None  # a job that did not fit the previous batch
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Load the model (in the worker thread) and start batching."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="matryoshka-encode")
        self._queue = asyncio.Queue()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, ["warm up"])
        self._worker = asyncio.create_task(self._batch_loop(), name="matryoshka-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Full-dim unit vectors of ``texts`` and each text's token count."""
        if self._queue is None:
            raise RuntimeError("the engine is not started")
        if self.admitted + len(texts) > self.max_queue:
            raise Overloaded(f"the server is busy ({self.admitted} texts queued, limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.admitted += len(texts)  # counted back exactly once, when this request gets its answer
        self._queue.put_nowait(_Job(texts, future))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise EncodeTimeout(f"no result within {self.timeout_s:g}s; the server is overloaded") from None
        finally:
            self.admitted -= len(texts)

    async def run_exclusive(self, function: Callable, *args):
        """Run ``function(*args)`` in the worker thread, between forward passes (the model is not shared)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _forward(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Runs in the worker thread: one forward pass, plus the token count of each text."""
        vectors = self.encoder.encode_full(texts)
        tokens = self.encoder.model.preprocess(texts)["attention_mask"].sum(dim=1).tolist()
        return vectors, [int(n) for n in tokens]

    async def _next_batch(self) -> list[_Job]:
        assert self._queue is not None
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.texts)
        deadline = time.perf_counter() + self.batch_wait_s
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(job.texts) > self.max_batch:
                self._held = job
                break
            batch.append(job)
            size += len(job.texts)
        return batch

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [job for job in batch if not job.future.done()]  # timed-out jobs are dropped
            if not live:
                continue
            texts = [text for job in live for text in job.texts]
            try:
                vectors, tokens = await loop.run_in_executor(self._executor, self._forward, texts)
            except Exception as exc:  # a failed pass fails its requests, not the engine
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                if self.on_batch is not None:
                    self.on_batch(len(texts))
                start = 0
                for job in live:
                    end = start + len(job.texts)
                    if not job.future.done():
                        job.future.set_result((vectors[start:end], tokens[start:end]))
                    start = end
