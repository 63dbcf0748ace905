"""The index API on Milvus: Milvus Lite (a local ``.db`` file) or a Milvus server/cluster (``http://...``).

Layout (one for every Milvus version; 2.3 refuses two vector fields in one collection): an index named
``C`` is two collections joined by the primary key ``id``:

- ``C``: ``id`` and the ``truncate``d prefix vector ``v{prefix_dim}`` under the ANN index chosen at
  create (FLAT, HNSW, IVF_FLAT). It is the first stage of a funnel and the one small enough to keep in
  memory; its properties record the model, fingerprint and dims, so another model is refused.
- ``C_full``: ``id``, ``text``, ``metadata`` (JSON) and the full unit vector ``full`` (FLAT index).

A funnel search is a Milvus search on ``C`` keeping the shortlist, then a rerank at full dim:
``rerank="client"`` fetches the shortlisted full vectors and scores them here; ``"server"`` searches
``C_full`` restricted to the shortlist by an ``id in [...]`` filter. A row is written to ``C_full``
(upsert) before ``C``, so a row a search can find always has its full vector and text.

Writes mark the index dirty; the next ``search``/``info``/``close`` flushes once (Milvus Lite keeps
unflushed rows in a slow buffer; servers index only flushed segments and rate-limit flushes), and the
first read after a write runs at Strong consistency, later ones at Bounded (Strong waits for the
server's next time tick on every request). Milvus rows have no row numbers: ``SearchResult.rows``
holds each hit's rank (``-1`` pads) and ``ids`` are the primary keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from matryoshka.dims import truncate, validate_dim
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index.search import top_k
from matryoshka.index.stages import (
    SearchResult,
    Stage,
    StageStats,
    checked_funnel,
    parse_funnel,
    query_vectors,
    stages_text,
)

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder

DEFAULT_COLLECTION = "matryoshka"
FULL_SUFFIX = "_full"
LAYOUT = "prefix+full"  # recorded in the properties; the single-collection layout before it is refused
DEFAULT_PREFIX_DIM = 64
DEFAULT_SHORTLIST_FACTOR = 20  # first pass keeps k * 20 rows unless the funnel says otherwise
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
INDEX_BUILD_PARAMS = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}}
DEFAULT_EF = 64  # HNSW search breadth; raised to the shortlist when that is larger (Milvus needs ef >= limit)
DEFAULT_NPROBE = 16  # IVF lists probed per search (of nlist = 128)
RERANK_PLACES = ("client", "server")
DEFAULT_RERANK = "server"  # measured faster on a server by bench/milvus.py (docs/benchmarks.md, milvus)
DEFAULT_TIMEOUT = 10.0  # seconds per Milvus call
MAX_LIMIT = 16384  # Milvus's largest top-k per search
INSERT_BATCH = 1000
RETRIES = 4
TEXT_LIMIT = 65535
PROPERTY = "matryoshka."
T = TypeVar("T")


class MilvusUnavailable(MatryoshkaError):
    """The Milvus server could not be reached or stopped answering (HTTP servers map this to 503)."""


def _message(exc: BaseException) -> str:
    """One line of a pymilvus/gRPC error: its message without the code dump and stack."""
    text = getattr(exc, "message", None) or getattr(exc, "details", lambda: None)() or str(exc)
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text[:300] + ("..." if len(text) > 300 else "")


def _unauthenticated(exc: BaseException) -> str | None:
    """The server's reason when ``exc`` comes from a refused token (gRPC UNAUTHENTICATED), else None."""
    import grpc

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and all(seen is not other for other in chain):  # chains may loop
        chain.append(seen)
        if isinstance(seen, grpc.RpcError) and seen.code() == grpc.StatusCode.UNAUTHENTICATED:
            return seen.details()
        seen = seen.__cause__ or seen.__context__
    return None


def _transient(exc: BaseException) -> bool:
    """Errors worth retrying: the server was briefly unavailable or busy, not a bad request."""
    from pymilvus.exceptions import MilvusException, MilvusUnavailableException

    if isinstance(exc, MilvusUnavailableException | ConnectionError | TimeoutError):
        return True
    text = str(exc).lower()
    return isinstance(exc, MilvusException) and any(
        word in text for word in ("unavailable", "deadline", "rate limit", "too many requests", "connect")
    )


def _rate_limited(exc: BaseException) -> bool:
    return "rate limit" in str(exc).lower() or "too many requests" in str(exc).lower()


def with_retries(call: Callable[[], T], what: str, attempts: int = RETRIES, delay: float = 0.5) -> T:
    """``call()`` retried with doubling back-off on transient errors; other errors pass through."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts - 1:
                if _transient(exc):
                    raise MilvusUnavailable(
                        f"Milvus {what} failed after {attempts} tries: {_message(exc)}"
                    ) from None
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


@contextmanager
def milvus_errors(what: str, uri: str) -> Iterator[None]:
    """pymilvus and gRPC errors as one-line MatryoshkaErrors (no traceback reaches a user)."""
    import grpc
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MatryoshkaError:
        raise
    except (MilvusException, grpc.RpcError, ConnectionError, TimeoutError) as exc:
        kind = MilvusUnavailable if _transient(exc) or isinstance(exc, grpc.RpcError) else MatryoshkaError
        raise kind(f"Milvus {what} at {uri} failed: {_message(exc)}") from None


def is_server(target: str) -> bool:
    return str(target).startswith(("http://", "https://", "tcp://", "unix:"))


def connect(uri: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """A ``MilvusClient``; a path ending in ``.db`` starts Milvus Lite, ``http(s)://host:port`` reaches a
    server. A refused token or an unreachable server is a :class:`MatryoshkaError`."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for name in ("pymilvus", "pymilvus.milvus_client"):  # its retries log to stderr; the error says it once
        logging.getLogger(name).setLevel(logging.CRITICAL)
    uri = str(uri)
    if not is_server(uri):
        uri = os.path.abspath(uri)
        if not uri.endswith(".db"):
            raise MatryoshkaError(
                f"a Milvus Lite file must end in .db, got {uri} (or give http://host:19530)"
            )
    try:
        client = MilvusClient(uri=uri, token=token or "", timeout=timeout)
        client.list_collections()  # a server with authorization checks the token here
        return client
    except MilvusException as exc:
        refusal = _unauthenticated(exc)
        if refusal:
            raise MatryoshkaError(f"Milvus at {uri} refused the token: {refusal}") from None
        text = _message(exc)
        hint = " (Milvus Lite lets one process at a time open a file)" if uri.endswith(".db") else ""
        raise MilvusUnavailable(f"cannot reach Milvus at {uri}: {text}{hint}") from None


def release(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` so another process can open the file."""
    if str(uri).endswith(".db"):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(os.path.abspath(uri))


class MilvusIndex:
    """The :class:`~matryoshka.index.backends.Index` protocol on a pair of Milvus collections.

    ``rerank`` (``client``/``server``), ``ef`` (HNSW) and ``nprobe`` (IVF) are attributes, set at
    create/open or later, rather than per search."""

    backend = "milvus"

    def __init__(
        self,
        client,
        collection: str,
        properties: dict[str, str],
        uri: str = "",
        rerank: str | None = None,
        ef: int | None = None,
        nprobe: int | None = None,
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self.full_collection = collection + FULL_SUFFIX
        self.full_dim = int(properties["full_dim"])
        self.prefix_dim = int(properties["prefix_dim"])
        self.index_type = properties.get("index_type", "FLAT")
        self.properties = properties
        self.rerank = rerank or DEFAULT_RERANK
        if self.rerank not in RERANK_PLACES:
            raise MatryoshkaError(f"rerank must be one of {', '.join(RERANK_PLACES)}, got {self.rerank!r}")
        self.ef = DEFAULT_EF if ef is None else int(ef)
        self.nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        self._encoder: Encoder | None = None
        self._dirty = False  # rows written since the last flush
        self._unseen = False  # rows written since the last Strong read

    def _retry(self, call: Callable[[], T], what: str) -> T:
        return with_retries(call, f"{what} at {self.uri}")

    @property
    def prefix_field(self) -> str:
        return f"v{self.prefix_dim}"

    # ---- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        target: str | os.PathLike,
        model: str | os.PathLike | Encoder | None = None,
        full_dim: int | None = None,
        prefix_dim: int = DEFAULT_PREFIX_DIM,
        index_type: str = "FLAT",
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options,
    ) -> MilvusIndex:
        """A new index (or the existing one, if it was made for the same model and dims). ``options``:
        ``rerank``, ``ef``, ``nprobe``."""
        properties: dict[str, str] = {}
        encoder = None
        if model is not None:
            encoder = model if hasattr(model, "fingerprint") else _encoder(model)
            if full_dim is not None and full_dim != encoder.full_dim:
                raise DimensionError(
                    f"model {encoder.info.name} makes {encoder.full_dim}-dim vectors, not {full_dim}"
                )
            full_dim = encoder.full_dim
            properties.update(model=encoder.info.reference, fingerprint=encoder.fingerprint)
        elif full_dim is None:
            raise MatryoshkaError("an index needs a model or the full dim of its vectors")
        prefix_dim = validate_dim(prefix_dim, full_dim)
        if prefix_dim == full_dim:
            raise MatryoshkaError(f"the prefix dim must be below the full dim {full_dim}")
        index_type = index_type.upper()
        if index_type not in INDEX_TYPES:
            raise MatryoshkaError(f"index type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        properties.update(
            full_dim=str(full_dim), prefix_dim=str(prefix_dim), index_type=index_type, layout=LAYOUT
        )
        target = str(target)
        client = connect(target, token, timeout)
        with milvus_errors("create", target):
            if client.has_collection(collection):
                index = cls._from_collection(client, collection, target, **options)
                wanted = {key: value for key, value in properties.items() if key != "index_type"}
                clash = {key: v for key, v in wanted.items() if index.properties.get(key) != v}
                if clash:
                    raise MatryoshkaError(
                        f"collection {collection!r} at {target} holds {index._describe()}; it cannot take "
                        f"{', '.join(f'{key}={value}' for key, value in clash.items())}"
                    )
            else:
                properties["index_type"] = _create(client, collection, properties)
                index = cls(client, collection, properties, target, **options)
        if encoder is not None:
            index.use_encoder(encoder)
        return index

    @classmethod
    def open(
        cls,
        target: str | os.PathLike,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        model: str | os.PathLike | Encoder | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options,
    ) -> MilvusIndex:
        """An existing index; with ``model``, refused unless that model made its vectors. ``options``:
        ``rerank``, ``ef``, ``nprobe``."""
        target = str(target)
        if not is_server(target) and not os.path.exists(target):
            raise MatryoshkaError(f"no Milvus Lite file at {target}")
        client = connect(target, token, timeout)
        with milvus_errors("open", target):
            if not client.has_collection(collection):
                raise MatryoshkaError(f"no collection {collection!r} at {target}")
            index = cls._from_collection(client, collection, target, **options)
        if model is not None:
            index.use_encoder(model if hasattr(model, "fingerprint") else _encoder(model))
        return index

    @classmethod
    def _from_collection(cls, client, collection: str, uri: str, **options) -> MilvusIndex:
        described = client.describe_collection(collection).get("properties", {})
        properties = {k.removeprefix(PROPERTY): v for k, v in described.items() if k.startswith(PROPERTY)}
        if "full_dim" not in properties:
            raise MatryoshkaError(f"collection {collection!r} was not made by matryoshka (no dims recorded)")
        if properties.get("layout") != LAYOUT:
            raise MatryoshkaError(
                f"collection {collection!r} has the single-collection layout of an older matryoshka "
                "(two vector fields, refused by Milvus 2.3): rebuild it with `index build`"
            )
        if not client.has_collection(collection + FULL_SUFFIX):
            raise MatryoshkaError(
                f"collection {collection!r} lacks its full-vector collection {collection + FULL_SUFFIX!r}"
            )
        for name in (collection, collection + FULL_SUFFIX):  # a reopened collection is released
            with_retries(lambda name=name: client.load_collection(name), f"load at {uri}")
        return cls(client, collection, properties, uri, **options)

    def _describe(self) -> str:
        keys = ("model", "full_dim", "prefix_dim")
        return ", ".join(f"{key}={self.properties[key]}" for key in keys if key in self.properties)

    def flush(self) -> None:
        """Seal the rows written since the last flush (once per burst of writes, not per batch). A
        server's flush rate limit leaves the index dirty: unflushed rows are still searchable there."""
        from pymilvus.exceptions import MilvusException

        if not self._dirty:
            return
        try:
            for name in (self.full_collection, self.collection):
                self.client.flush(name)
        except MilvusException as exc:
            if not _rate_limited(exc):
                raise
            return
        self._dirty = False

    def wait_indexed(self, timeout: float = 600.0) -> None:
        """Flush, then wait until a server has built the first-stage index over every row (searches
        before that scan unindexed segments). Milvus Lite reports no progress and returns at once."""
        with milvus_errors("index wait", self.uri):
            self.flush()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                described = self.client.describe_index(self.collection, self.prefix_field) or {}
                if "indexed_rows" not in described or (
                    described.get("pending_index_rows", 0) == 0
                    and described["indexed_rows"] >= described.get("total_rows", 0)
                ):
                    return
                time.sleep(1.0)
        raise MatryoshkaError(
            f"the {self.index_type} index of {self.collection!r} was not built in {timeout:.0f} s"
        )

    def close(self) -> None:
        """Flush pending writes, close the client and, for Milvus Lite, stop this process's server."""
        try:
            with milvus_errors("flush", self.uri):
                self.flush()
        finally:
            self.client.close()
            release(self.uri)

    # ---- writing --------------------------------------------------------------------------------
    def add(
        self,
        vectors: np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        metadata: Sequence[dict | None] | None = None,
        batch_size: int = INSERT_BATCH,
        progress: bool = False,
    ) -> int:
        """Insert rows in batches (each retried on transient errors); returns the live row count.

        Each batch goes to the full collection (upsert) and then to the prefix one; a failure stops
        at that batch with an error saying how many rows were stored, and a repeat of the call with
        the remaining ids completes it."""
        from pymilvus.exceptions import MilvusException
        from tqdm import tqdm

        if vectors is None:
            if texts is None:
                raise MatryoshkaError("add needs vectors or texts")
            vectors = self.encoder.encode_full(list(texts))
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.full_dim:
            raise DimensionError(f"vectors have {vectors.shape[-1]} dims, the index holds {self.full_dim}")
        count = len(vectors)
        for name, values in (("ids", ids), ("texts", texts), ("metadata", metadata)):
            if values is not None and len(values) != count:
                raise MatryoshkaError(f"{len(values)} {name} for {count} vectors")
        with milvus_errors("add", self.uri):
            if ids is None:
                start = self.live_rows()
                ids = [str(start + i) for i in range(count)]
            ids = [str(key) for key in ids]
            if len(set(ids)) != count:
                raise MatryoshkaError("ids must be distinct")
            full = truncate(vectors)
            prefix = truncate(vectors, self.prefix_dim)
            stored = 0
            with tqdm(total=count, unit="row", disable=not progress) as bar:
                for start in range(0, count, batch_size):
                    stop = min(start + batch_size, count)
                    try:
                        self._refuse_existing(
                            ids[start:stop]
                        )  # before writing: a refused batch writes nothing
                        self._insert(ids, texts, metadata, full, prefix, start, stop)
                    except (MatryoshkaError, MilvusException) as exc:
                        kind = MilvusUnavailable if isinstance(exc, MilvusUnavailable) else MatryoshkaError
                        where = f"{stored} of {count} rows were stored, none from id {ids[start]} on"
                        raise kind(f"{_message(exc)}; {where}") from None
                    stored = stop
                    bar.update(stop - start)
            return self.live_rows()

    def _insert(self, ids, texts, metadata, full, prefix, start: int, stop: int) -> None:
        self._dirty = self._unseen = True
        rows = [
            {
                "id": ids[i],
                "text": "" if texts is None or texts[i] is None else texts[i][:TEXT_LIMIT],
                "metadata": {} if metadata is None or metadata[i] is None else metadata[i],
                "full": full[i].tolist(),
            }
            for i in range(start, stop)
        ]
        self._retry(lambda: self.client.upsert(self.full_collection, rows), "insert")
        first = [{"id": ids[i], self.prefix_field: prefix[i].tolist()} for i in range(start, stop)]
        self._retry(lambda: self.client.insert(self.collection, first), "insert")

    def _refuse_existing(self, ids: list[str]) -> None:
        """Milvus does not enforce unique primary keys, so a repeated id would make a duplicate row."""
        found = self._get(self.collection, ids, ["id"])
        if found:
            shown = " ".join(sorted(row["id"] for row in found)[:5])
            raise MatryoshkaError(f"ids already in the collection: {shown}")

    def texts_of(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The text of each of ``ids`` the collection holds."""
        with milvus_errors("fetch", self.uri):
            found = self._get(self.full_collection, [str(i) for i in ids], ["text"])
        return {row["id"]: row.get("text") or None for row in found}

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete rows by id; returns the ids that were not found."""
        ids = [str(i) for i in ids]
        with milvus_errors("delete", self.uri):
            found = {row["id"] for row in self._get(self.collection, ids, ["id"])}
            if found:
                self._dirty = self._unseen = True
                for name in (self.collection, self.full_collection):  # the searchable side first
                    self._retry(lambda name=name: self.client.delete(name, ids=sorted(found)), "delete")
        return [i for i in ids if i not in found]

    def live_rows(self) -> int:
        with milvus_errors("count", self.uri):
            result = self.client.query(
                self.collection, filter="", output_fields=["count(*)"], consistency_level=self._level()
            )
        return int(result[0]["count(*)"])

    def _level(self) -> str:
        """Strong for the first read after this process wrote, Bounded after (see the module doc)."""
        if self._unseen:
            self._unseen = False
            return "Strong"
        return "Bounded"

    def _get(self, collection: str, ids: list[str], fields: list[str]) -> list[dict]:
        if not ids:
            return []
        level = self._level()
        return self._retry(
            lambda: self.client.get(collection, ids=ids, output_fields=fields, consistency_level=level),
            "fetch",
        )

    # ---- queries --------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            if not self.properties.get("model"):
                raise MatryoshkaError(
                    "this collection holds vectors from no recorded model: search with vectors"
                )
            self.use_encoder(_encoder(self.properties["model"]))
        assert self._encoder is not None
        return self._encoder

    def use_encoder(self, encoder: Encoder) -> None:
        """Encode text queries with ``encoder``; refused unless it is the model that made the vectors."""
        fingerprint = self.properties.get("fingerprint")
        if fingerprint and encoder.fingerprint != fingerprint:
            raise MatryoshkaError(
                f"model {encoder.info.name} ({encoder.fingerprint}) cannot use collection "
                f"{self.collection!r} of vectors from {self.properties.get('model')} ({fingerprint})"
            )
        if encoder.full_dim != self.full_dim:
            raise DimensionError(
                f"model makes {encoder.full_dim}-dim vectors, the index holds {self.full_dim}"
            )
        self._encoder = encoder

    def stages_for(self, funnel: str | list[Stage] | None = None, k: int = 10) -> list[Stage]:
        """The funnel's stages: ``prefix:k*20 -> full:k`` by default; the prefix or the full dim alone is
        one exact stage."""
        if funnel is None:
            stages = [Stage(self.prefix_dim, k * DEFAULT_SHORTLIST_FACTOR), Stage(self.full_dim, k)]
        elif isinstance(funnel, str):
            stages = parse_funnel(funnel, self.full_dim, k)
        else:
            stages = checked_funnel(list(funnel), self.full_dim, k)
        dims = [s.dim for s in stages]
        allowed = ([self.full_dim], [self.prefix_dim], [self.prefix_dim, self.full_dim])
        if any(s.precision != "float" for s in stages) or dims not in allowed:
            raise MatryoshkaError(
                f"this collection searches at dim {self.prefix_dim} (field {self.prefix_field}) then "
                f"{self.full_dim} (full), or at one of them alone; "
                f"funnel {stages_text(stages, self.full_dim)} is not that"
            )
        if stages[0].keep > MAX_LIMIT:
            raise MatryoshkaError(f"Milvus keeps at most {MAX_LIMIT} rows per search, not {stages[0].keep}")
        return stages

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        funnel: str | list[Stage] | None = None,
        hnsw: bool = False,
    ) -> SearchResult:
        """Top ``k`` per query: first stage on the prefix collection, rerank at full dim (``rerank``)."""
        if hnsw:
            raise MatryoshkaError(
                f"hnsw=True is a local-index option: this Milvus index's first stage is {self.index_type}, "
                "chosen at create (index_type=HNSW)"
            )
        if k < 1:
            raise MatryoshkaError(f"k must be at least 1, got {k}")
        if self.rerank not in RERANK_PLACES:
            raise MatryoshkaError(f"rerank must be one of {', '.join(RERANK_PLACES)}, got {self.rerank!r}")
        vectors = self._query_vectors(queries)
        stages = self.stages_for(funnel, k)
        with milvus_errors("search", self.uri):
            self.flush()
            level = self._level()
            first = stages[0]
            started = time.perf_counter()
            if first.dim == self.full_dim:
                hits = self._search(self.full_collection, "full", truncate(vectors), k, {}, level)
            else:
                params = self._first_params(first.keep)
                hits = self._search(
                    self.collection,
                    self.prefix_field,
                    truncate(vectors, first.dim),
                    first.keep,
                    params,
                    level,
                )
            ids = [[hit["id"] for hit in query_hits] for query_hits in hits]
            scores = [[hit["distance"] for hit in query_hits] for query_hits in hits]
            kept = max(map(len, ids), default=0)
            stats = [StageStats(str(first), kept, time.perf_counter() - started, 0)]
            if len(stages) == 2:
                started = time.perf_counter()
                place = self._rerank_client if self.rerank == "client" else self._rerank_server
                ids, scores, fetched = place(truncate(vectors), ids, k, level)
                stats.append(StageStats(str(stages[1]), k, time.perf_counter() - started, fetched))
        return self._result(ids, scores, k, stats, stages)

    def _first_params(self, keep: int) -> dict:
        if self.index_type == "HNSW":
            return {"ef": max(self.ef, keep)}
        if self.index_type == "IVF_FLAT":
            return {"nprobe": self.nprobe}
        return {}

    def _search(self, collection: str, field: str, vectors: np.ndarray, limit: int, params: dict,
                level: str, filter: str = ""):  # fmt: skip
        return self._retry(
            lambda: self.client.search(
                collection,
                data=vectors.tolist(),
                anns_field=field,
                limit=limit,
                filter=filter,
                output_fields=["id"],
                search_params={"metric_type": "IP", "params": params},
                consistency_level=level,
            ),
            "search",
        )

    def _rerank_client(self, queries: np.ndarray, shortlists: list[list[str]], k: int, level: str):
        """Fetch the shortlisted full vectors once (deduplicated) and score them here."""
        unique = sorted({key for shortlist in shortlists for key in shortlist})
        rows = self._get(self.full_collection, unique, ["full"])
        full = {row["id"]: row["full"] for row in rows}
        ids, scores = [], []
        for query, shortlist in zip(queries, shortlists, strict=True):
            present = [key for key in shortlist if key in full]
            if not present:
                ids.append([])
                scores.append([])
                continue
            matrix = np.asarray([full[key] for key in present], dtype=np.float32)
            best, columns = top_k((matrix @ query)[None], k)
            ids.append([present[c] for c in columns[0]])
            scores.append(best[0].tolist())
        return ids, scores, len(full) * self.full_dim * 4

    def _rerank_server(self, queries: np.ndarray, shortlists: list[list[str]], k: int, level: str):
        """Search the full collection once per query, restricted to its shortlist by a filter."""
        ids, scores = [], []
        for query, shortlist in zip(queries, shortlists, strict=True):
            if not shortlist:
                ids.append([])
                scores.append([])
                continue
            hits = self._search(self.full_collection, "full", query[None], k, {}, level,
                                filter=f"id in {json.dumps(shortlist)}")[0]  # fmt: skip
            ids.append([hit["id"] for hit in hits])
            scores.append([hit["distance"] for hit in hits])
        return ids, scores, 0

    def _query_vectors(self, queries: str | Sequence[str] | np.ndarray) -> np.ndarray:
        return query_vectors(queries, self.full_dim, lambda: self.encoder)

    def _result(self, ids: list[list[str]], scores: list[list[float]], k: int, stats, stages) -> SearchResult:
        ids = [query_ids[:k] for query_ids in ids]
        width = max(map(len, ids), default=0)
        score_matrix = np.full((len(ids), width), -np.inf, dtype=np.float32)
        rows = np.full((len(ids), width), -1, dtype=np.int64)
        for i, query_scores in enumerate(scores):
            score_matrix[i, : len(ids[i])] = query_scores[: len(ids[i])]
            rows[i, : len(ids[i])] = np.arange(len(ids[i]))

        def records() -> tuple[list[list[str]], list[list[str | None]]]:
            wanted = sorted({key for query_ids in ids for key in query_ids})
            with milvus_errors("fetch", self.uri):
                found = self._get(self.full_collection, wanted, ["text"])
            text = {row["id"]: row.get("text") or None for row in found}
            return ids, [[text.get(key) for key in query_ids] for query_ids in ids]

        return SearchResult(score_matrix, rows, records, stats, stages_text(stages, self.full_dim))

    def info(self) -> dict:
        """Model, dims, index type and search options, row count, and where the collections live."""
        with milvus_errors("info", self.uri):
            self.flush()
            live = self.live_rows()
        return {
            "backend": "milvus",
            "uri": self.uri,
            "collection": self.collection,
            "full_collection": self.full_collection,
            "source": {key: self.properties.get(key) for key in ("model", "fingerprint")},
            "full_dim": self.full_dim,
            "prefix_dim": self.prefix_dim,
            "prefix_field": self.prefix_field,
            "index_type": self.index_type,
            "live": live,
            "rerank": self.rerank,
            "ef": self.ef,
            "nprobe": self.nprobe,
        }


def _create(client, collection: str, properties: dict[str, str]) -> str:
    """The two collections, indexed and loaded, then the properties (last: a collection without them
    is not taken for an index). Returns the index type used: a deployment refusing it gets FLAT."""
    from pymilvus import DataType
    from pymilvus.exceptions import MilvusException

    full_dim, prefix_dim, index_type = (
        int(properties["full_dim"]),
        int(properties["prefix_dim"]),
        properties["index_type"],
    )
    full = client.create_schema(auto_id=False, enable_dynamic_field=False)
    full.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    full.add_field("text", DataType.VARCHAR, max_length=TEXT_LIMIT)
    full.add_field("metadata", DataType.JSON)
    full.add_field("full", DataType.FLOAT_VECTOR, dim=full_dim)
    prefix = client.create_schema(auto_id=False, enable_dynamic_field=False)
    prefix.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    prefix.add_field(f"v{prefix_dim}", DataType.FLOAT_VECTOR, dim=prefix_dim)

    def make(name: str, schema, field: str, kind: str) -> None:
        params = client.prepare_index_params()
        params.add_index(
            field, index_type=kind, metric_type="IP", params=INDEX_BUILD_PARAMS[kind], index_name=field
        )
        with_retries(lambda: client.create_collection(name, schema=schema), "create")
        with_retries(lambda: client.create_index(name, params), "create")
        with_retries(lambda: client.load_collection(name, _async=True), "load")

    try:
        make(collection + FULL_SUFFIX, full, "full", "FLAT")
        try:
            make(collection, prefix, f"v{prefix_dim}", index_type)
        except MilvusException as exc:
            if index_type == "FLAT":
                raise
            warnings.warn(
                f"this Milvus deployment refused a {index_type} index on v{prefix_dim} ({_message(exc)}); "
                "using FLAT",
                stacklevel=3,
            )
            if client.has_collection(collection):
                client.drop_collection(collection)
            index_type = "FLAT"
            make(collection, prefix, f"v{prefix_dim}", index_type)
        for name in (collection + FULL_SUFFIX, collection):  # both load at once; wait for them here
            _wait_loaded(client, name)
        properties = {**properties, "index_type": index_type}
        with_retries(
            lambda: client.alter_collection_properties(
                collection, {PROPERTY + key: value for key, value in properties.items()}
            ),
            "create",
        )
    except BaseException:
        for name in (collection, collection + FULL_SUFFIX):
            if client.has_collection(name):
                client.drop_collection(name)
        raise
    return index_type


def _wait_loaded(client, collection: str, timeout: float = 120.0) -> None:
    from pymilvus.client.types import LoadState

    deadline = time.monotonic() + timeout
    while client.get_load_state(collection)["state"] != LoadState.Loaded:
        if time.monotonic() > deadline:
            raise MatryoshkaError(f"Milvus did not load collection {collection!r} in {timeout:.0f} s")
        time.sleep(0.1)


def _encoder(model: str | os.PathLike) -> Encoder:
    from matryoshka.encoder import Encoder

    return Encoder(model)
