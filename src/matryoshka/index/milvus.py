"""The index API on Milvus: Milvus Lite (a local ``.db`` file) or a Milvus server/cluster (``http://...``).

Layout (one for every Milvus version; 2.3 refuses two vector fields in one collection): an index ``C``
is two collections joined by the primary key ``id``:

- ``C``: ``id`` and the ``truncate``d prefix ``v{prefix_dim}`` under the ANN index chosen at create
  (FLAT or HNSW): the first stage, small enough to keep in memory. Its properties record the
  model, fingerprint and dims, so another model is refused.
- ``C_full``: ``id``, ``text``, ``metadata`` (JSON) and the full unit vector ``full`` (FLAT index).

The rerank at full dim searches ``C_full`` with an ``id in [...]`` filter on the shortlist, on the
server (faster than fetching the full vectors to score them here: docs/benchmarks.md, milvus). Rows go
to ``C_full`` (upsert) before ``C``, so a row a search can find has its full vector and text.

Writes mark the index dirty; the next ``search``/``info``/``close`` flushes once (Milvus Lite keeps
unflushed rows in a slow buffer; servers index only flushed segments and rate-limit flushes). The
first read after a write runs at Strong consistency, later ones at Bounded (Strong waits for the
server's next time tick on every request). ``SearchResult.rows`` holds each hit's rank (``-1`` pads):
Milvus rows have no row numbers; ``ids`` are the primary keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate, validate_dim
from matryoshka.errors import MatryoshkaError
from matryoshka.index.source import checked_encoder, encoder_for, model_source, recorded_encoder
from matryoshka.index.stages import (
    SearchResult,
    Stage,
    StageStats,
    checked_funnel,
    checked_rows,
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
INDEX_TYPES = ("FLAT", "HNSW")  # HNSW beat IVF_FLAT in QPS and recall at both shortlists measured
INDEX_BUILD_PARAMS = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}}
DEFAULT_EF = 64  # HNSW search breadth; raised to the shortlist when that is larger (Milvus needs ef >= limit)
DEFAULT_TIMEOUT = 10.0  # seconds per Milvus call
MAX_LIMIT = 16384  # Milvus's largest top-k per search
INSERT_BATCH = 1000
BUSY = ("rate limit", "too many requests")  # a server's answers when it throttles
TEXT_LIMIT = 65535
PROPERTY = "matryoshka."
SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")  # other targets are Milvus Lite files


class MilvusUnavailable(MatryoshkaError):
    """The Milvus server could not be reached or stopped answering (HTTP servers map this to 503)."""


def _message(exc: BaseException) -> str:
    """One line of a pymilvus/gRPC error: its message without the code dump and stack."""
    text = getattr(exc, "message", None) or getattr(exc, "details", lambda: None)() or str(exc)
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text[:300] + ("..." if len(text) > 300 else "")


def _mentions(exc: BaseException, *words: str) -> bool:
    return any(word in str(exc).lower() for word in words)


def _unauthenticated(exc: BaseException | None) -> str | None:
    """The server's reason when ``exc`` comes from a refused token (gRPC UNAUTHENTICATED), else None."""
    import grpc

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # chains may loop
        seen.add(id(exc))
        if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return exc.details()
        exc = exc.__cause__ or exc.__context__
    return None


def _transient(exc: BaseException) -> bool:
    """The server was unavailable or busy (after pymilvus's own retries), not a bad request."""
    from pymilvus.exceptions import MilvusException, MilvusUnavailableException

    if isinstance(exc, MilvusUnavailableException | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, MilvusException) and _mentions(exc, "unavailable", "deadline", "connect", *BUSY)


@contextmanager
def milvus_errors(what: str, uri: str) -> Iterator[None]:
    """pymilvus and gRPC errors as one-line MatryoshkaErrors (no traceback reaches a user)."""
    import grpc
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except (MilvusException, grpc.RpcError, ConnectionError, TimeoutError) as exc:
        kind = MilvusUnavailable if _transient(exc) or isinstance(exc, grpc.RpcError) else MatryoshkaError
        raise kind(f"Milvus {what} at {uri} failed: {_message(exc)}") from None


def is_server(target: str) -> bool:
    return str(target).startswith(SERVER_SCHEMES)


def connect(uri: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT):
    """A ``MilvusClient``; a path ending in ``.db`` starts Milvus Lite, ``http(s)://host:port`` reaches a
    server. A refused token or an unreachable server is a :class:`MatryoshkaError`."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for name in ("pymilvus", "pymilvus.milvus_client"):  # its retries log to stderr; the error says it once
        logging.getLogger(name).setLevel(logging.CRITICAL)
    uri = str(uri) if is_server(uri) else os.path.abspath(uri)
    if not uri.endswith(".db") and not is_server(uri):
        raise MatryoshkaError(f"a Milvus Lite file must end in .db, got {uri} (or give http://host:19530)")
    try:
        client = MilvusClient(uri=uri, token=token or "", timeout=timeout)
        client.list_collections()  # a server with authorization checks the token here
        return client
    except MilvusException as exc:
        if refusal := _unauthenticated(exc):
            raise MatryoshkaError(f"Milvus at {uri} refused the token: {refusal}") from None
        hint = " (Milvus Lite lets one process at a time open a file)" if uri.endswith(".db") else ""
        raise MilvusUnavailable(f"cannot reach Milvus at {uri}: {_message(exc)}{hint}") from None


def release(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` so another process can open the file."""
    if str(uri).endswith(".db"):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(os.path.abspath(uri))


class MilvusIndex:
    """The :class:`~matryoshka.index.backends.Index` protocol on a pair of Milvus collections; ``ef``
    (HNSW search breadth) is an attribute, set at create/open or later, rather than per search."""

    backend = "milvus"

    def __init__(
        self,
        client,
        collection: str,
        properties: dict[str, str],
        uri: str = "",
        ef: int | None = None,
    ) -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self.full_collection = collection + FULL_SUFFIX
        self.full_dim = int(properties["full_dim"])
        self.prefix_dim = int(properties["prefix_dim"])
        self.index_type = properties.get("index_type", "FLAT")
        self.properties = properties
        self.ef = DEFAULT_EF if ef is None else int(ef)
        self._encoder: Encoder | None = None
        self._dirty = False  # rows written since the last flush
        self._unseen = False  # rows written since the last Strong read

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
        ef: int | None = None,
    ) -> MilvusIndex:
        """A new index (or the existing one, if it was made for the same model and dims)."""
        encoder, full_dim, properties = model_source(model, full_dim)
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
            if not client.has_collection(collection):
                _create(client, collection, properties)
                index = cls(client, collection, properties, target, ef)
            else:
                index = cls._from_collection(client, collection, target, ef)
                del properties["index_type"]  # an existing collection keeps its own index
                held = index.properties
                if clash := ", ".join(f"{key}={v}" for key, v in properties.items() if held.get(key) != v):
                    made = ", ".join(
                        f"{key}={held[key]}" for key in ("model", "full_dim", "prefix_dim") if key in held
                    )
                    raise MatryoshkaError(
                        f"collection {collection!r} at {target} holds {made}; it cannot take {clash}"
                    )
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
        ef: int | None = None,
    ) -> MilvusIndex:
        """An existing index; with ``model``, refused unless that model made its vectors."""
        target = str(target)
        if not is_server(target) and not os.path.exists(target):
            raise MatryoshkaError(f"no Milvus Lite file at {target}")
        client = connect(target, token, timeout)
        with milvus_errors("open", target):
            if not client.has_collection(collection):
                raise MatryoshkaError(f"no collection {collection!r} at {target}")
            index = cls._from_collection(client, collection, target, ef)
        if model is not None:
            index.use_encoder(encoder_for(model))
        return index

    @classmethod
    def _from_collection(cls, client, collection: str, uri: str, ef: int | None) -> MilvusIndex:
        described = client.describe_collection(collection).get("properties", {})
        properties = {k.removeprefix(PROPERTY): v for k, v in described.items() if k.startswith(PROPERTY)}
        full = collection + FULL_SUFFIX
        if "full_dim" not in properties:
            raise MatryoshkaError(f"collection {collection!r} was not made by matryoshka (no dims recorded)")
        if properties.get("layout") != LAYOUT:
            raise MatryoshkaError(
                f"collection {collection!r} has the single-collection layout of an older matryoshka "
                "(two vector fields, refused by Milvus 2.3): rebuild it with `index build`"
            )
        if not client.has_collection(full):
            raise MatryoshkaError(f"collection {collection!r} lacks its full-vector collection {full!r}")
        for name in (collection, full):  # a reopened collection is released
            client.load_collection(name)
        return cls(client, collection, properties, uri, ef)

    def flush(self) -> None:
        """Seal the rows written since the last flush (once per burst of writes, not per batch). A
        server's flush rate limit leaves the index dirty: unflushed rows are still searchable there."""
        from pymilvus.exceptions import MilvusException

        if not self._dirty:
            return
        try:
            for name in (self.full_collection, self.collection):
                self.client.flush(name)
            self._dirty = False
        except MilvusException as exc:
            if not _mentions(exc, *BUSY):
                raise

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
        vectors, ids = checked_rows(vectors, self.full_dim, ids, texts, metadata)
        count = len(vectors)
        with milvus_errors("add", self.uri):
            if ids is None:
                start = self.live_rows()
                ids = [str(start + i) for i in range(count)]
            full, prefix = truncate(vectors), truncate(vectors, self.prefix_dim)
            with tqdm(total=count, unit="row", disable=not progress) as bar:
                for start in range(0, count, batch_size):
                    stop = min(start + batch_size, count)
                    try:
                        self._insert(ids, texts, metadata, full, prefix, start, stop)
                    except (MatryoshkaError, MilvusException) as exc:
                        unavailable = isinstance(exc, MilvusUnavailable) or _transient(exc)
                        kind = MilvusUnavailable if unavailable else MatryoshkaError
                        where = f"{start} of {count} rows were stored, none from id {ids[start]} on"
                        raise kind(f"{_message(exc)}; {where}") from None
                    bar.update(stop - start)
            return self.live_rows()

    def _insert(self, ids, texts, metadata, full, prefix, start: int, stop: int) -> None:
        # Milvus does not enforce unique primary keys: refuse a repeated id before writing the batch.
        if found := self._get(self.collection, ids[start:stop], ["id"]):
            shown = " ".join(sorted(row["id"] for row in found)[:5])
            raise MatryoshkaError(f"ids already in the collection: {shown}")
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
        self.client.upsert(self.full_collection, rows)
        self.client.insert(
            self.collection,
            [{"id": ids[i], self.prefix_field: prefix[i].tolist()} for i in range(start, stop)],
        )

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
                    self.client.delete(name, ids=sorted(found))
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
        return self.client.get(collection, ids=ids, output_fields=fields, consistency_level=self._level())

    # ---- queries --------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self.use_encoder(recorded_encoder(self.properties, "collection"))
        assert self._encoder is not None
        return self._encoder

    def use_encoder(self, encoder: Encoder, any_layers: bool = False) -> None:
        """Encode text queries with ``encoder``; refused unless it is the model that made the vectors (at
        the same depth, unless ``any_layers``)."""
        refusal = f"use collection {self.collection!r}"
        self._encoder = checked_encoder(encoder, self.properties, self.full_dim, refusal, any_layers)

    def stages_for(self, funnel: str | list[Stage] | None = None, k: int = 10) -> list[Stage]:
        """The funnel's stages: ``prefix:k*20 -> full:k`` by default; the prefix or the full dim alone is
        one exact stage."""
        if isinstance(funnel, str):
            stages = parse_funnel(funnel, self.full_dim, k)
        else:
            default = [Stage(self.prefix_dim, k * DEFAULT_SHORTLIST_FACTOR), Stage(self.full_dim, k)]
            stages = checked_funnel(default if funnel is None else list(funnel), self.full_dim, k)
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
        """Top ``k`` per query: first stage on the prefix collection, rerank at full dim on the server."""
        if hnsw:
            raise MatryoshkaError(
                f"hnsw=True is a local-index option: this Milvus index's first stage is {self.index_type}, "
                "chosen at create (index_type=HNSW)"
            )
        vectors = query_vectors(queries, self.full_dim, lambda: self.encoder)
        stages = self.stages_for(funnel, k)
        first = stages[0]
        with milvus_errors("search", self.uri):
            self.flush()
            level = self._level()
            started = time.perf_counter()
            prefixes = truncate(vectors, first.dim)
            ids, scores = self._search(prefixes, first.keep, level, full=first.dim == self.full_dim)
            stats = [StageStats(str(first), max(map(len, ids), default=0), time.perf_counter() - started, 0)]
            if len(stages) == 2:
                started = time.perf_counter()
                ids, scores = self._rerank(truncate(vectors), ids, k, level)
                stats.append(StageStats(str(stages[1]), k, time.perf_counter() - started, 0))
        return self._result(ids, scores, stats, stages)

    def _search(self, vectors: np.ndarray, limit: int, level: str, *, full: bool, filter: str = ""):
        """The ids and scores (inner products) of the top ``limit`` rows per query, from the full
        collection or the prefix one (through its ANN index, with ``ef``)."""
        if full:
            collection, field, params = self.full_collection, "full", {}
        else:
            params = {"ef": max(self.ef, limit)} if self.index_type == "HNSW" else {}
            collection, field = self.collection, self.prefix_field
        hits = self.client.search(
            collection,
            data=vectors.tolist(),
            anns_field=field,
            limit=limit,
            filter=filter,
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": params},
            consistency_level=level,
        )
        ids = [[hit["id"] for hit in row] for row in hits]
        return ids, [[hit["distance"] for hit in row] for row in hits]

    def _rerank(self, queries: np.ndarray, shortlists: list[list[str]], k: int, level: str):
        """Search the full collection once per query, restricted to its shortlist by a filter."""
        ids, scores = [], []
        for query, shortlist in zip(queries, shortlists, strict=True):
            found, best = [[]], [[]]  # an empty shortlist has no hits (and no "id in []" filter)
            if shortlist:
                where = f"id in {json.dumps(shortlist)}"
                found, best = self._search(query[None], k, level, full=True, filter=where)
            ids += found
            scores += best
        return ids, scores

    def _result(self, ids: list[list[str]], scores: list[list[float]], stats, stages) -> SearchResult:
        """Scores padded with ``-inf`` and each hit's rank as its row (``-1`` pads); texts on demand."""
        width = max(map(len, ids), default=0)
        score_matrix = np.full((len(ids), width), -np.inf, dtype=np.float32)
        rows = np.full((len(ids), width), -1, dtype=np.int64)
        for i, query_scores in enumerate(scores):
            score_matrix[i, : len(query_scores)] = query_scores
            rows[i, : len(query_scores)] = np.arange(len(query_scores))

        def records() -> tuple[list[list[str]], list[list[str | None]]]:
            text = self.texts_of(sorted({key for query_ids in ids for key in query_ids}))
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
            "source": {key: self.properties.get(key) for key in ("model", "fingerprint", "layers")},
            "full_dim": self.full_dim,
            "prefix_dim": self.prefix_dim,
            "prefix_field": self.prefix_field,
            "index_type": self.index_type,
            "live": live,
            "ef": self.ef,
        }


def _create(client, collection: str, properties: dict[str, str]) -> None:
    """The two collections, indexed and loaded, then the properties (last: a collection without them
    is not taken for an index)."""
    from pymilvus import DataType

    full_dim, prefix_dim = int(properties["full_dim"]), int(properties["prefix_dim"])
    index_type, prefix_field = properties["index_type"], f"v{prefix_dim}"
    full_name = collection + FULL_SUFFIX
    full = client.create_schema(auto_id=False, enable_dynamic_field=False)
    full.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    full.add_field("text", DataType.VARCHAR, max_length=TEXT_LIMIT)
    full.add_field("metadata", DataType.JSON)
    full.add_field("full", DataType.FLOAT_VECTOR, dim=full_dim)
    prefix = client.create_schema(auto_id=False, enable_dynamic_field=False)
    prefix.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    prefix.add_field(prefix_field, DataType.FLOAT_VECTOR, dim=prefix_dim)

    def make(name: str, schema, field: str, kind: str) -> None:
        params = client.prepare_index_params()
        params.add_index(
            field, index_type=kind, metric_type="IP", params=INDEX_BUILD_PARAMS[kind], index_name=field
        )
        client.create_collection(name, schema=schema)
        client.create_index(name, params)
        client.load_collection(name, _async=True)

    try:
        make(full_name, full, "full", "FLAT")
        make(collection, prefix, prefix_field, index_type)
        for name in (full_name, collection):  # both load at once; wait for them here
            _wait_loaded(client, name)
        stored = {PROPERTY + key: value for key, value in properties.items()}
        client.alter_collection_properties(collection, stored)
    except BaseException:
        for name in (collection, full_name):
            if client.has_collection(name):
                client.drop_collection(name)
        raise


def _wait_loaded(client, collection: str, timeout: float = 120.0) -> None:
    from pymilvus.client.types import LoadState

    deadline = time.monotonic() + timeout
    while client.get_load_state(collection)["state"] != LoadState.Loaded:
        if time.monotonic() > deadline:
            raise MatryoshkaError(f"Milvus did not load collection {collection!r} in {timeout:.0f} s")
        time.sleep(0.1)
