"""The index API on Milvus: Milvus Lite (a local ``.db`` file) or a Milvus server/cluster (``http://...``).

One collection holds, per row: the id (primary key), text, metadata (JSON), the ``truncate``d prefix
vector (field ``v{prefix_dim}``, the first-pass field, ANN-indexed) and the full vector (``full``, flat).
A funnel search is a Milvus search on the prefix field keeping the shortlist, then a rerank at full dim:
``rerank="client"`` fetches the shortlisted full vectors and scores them here; ``"server"`` searches the
full field restricted to the shortlist by an ``id in [...]`` filter. The model and dims live in the
collection's properties, so opening it with another model is refused. Milvus rows have no row numbers:
``SearchResult.rows`` holds each hit's rank (``-1`` pads) and ``ids`` are the primary keys.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
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

DEFAULT_URI = "./vectors.db"
DEFAULT_COLLECTION = "matryoshka"
DEFAULT_PREFIX_DIM = 64
DEFAULT_SHORTLIST_FACTOR = 20  # first pass keeps k * 20 rows unless the funnel says otherwise
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
INDEX_BUILD_PARAMS = {"FLAT": {}, "HNSW": {"M": 16, "efConstruction": 200}, "IVF_FLAT": {"nlist": 128}}
RERANK_PLACES = ("client", "server")
DEFAULT_RERANK = "client"  # measured faster on Milvus Lite, see docs/benchmarks.md (milvus section)
MAX_LIMIT = 16384  # Milvus's largest top-k per search
INSERT_BATCH = 1000
RETRIES = 4
TEXT_LIMIT = 65535
PROPERTY = "matryoshka."
T = TypeVar("T")


def _transient(exc: Exception) -> bool:
    """Errors worth retrying: the server was briefly unavailable or busy, not a bad request."""
    from pymilvus.exceptions import MilvusException, MilvusUnavailableException

    if isinstance(exc, MilvusUnavailableException | ConnectionError | TimeoutError):
        return True
    text = str(exc).lower()
    return isinstance(exc, MilvusException) and any(
        word in text for word in ("unavailable", "deadline", "rate limit", "too many requests")
    )


def with_retries(call: Callable[[], T], what: str, attempts: int = RETRIES, delay: float = 0.5) -> T:
    """``call()`` retried with doubling back-off on transient errors; other errors pass through."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if not _transient(exc) or attempt == attempts - 1:
                if _transient(exc):
                    raise MatryoshkaError(f"Milvus {what} failed after {attempts} tries: {exc}") from None
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def connect(uri: str, token: str | None = None, timeout: float = 10.0):
    """A ``MilvusClient``; a local path starts Milvus Lite, ``http(s)://host:port`` reaches a server."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    uri = str(uri)
    if not uri.startswith(("http://", "https://", "tcp://", "unix:")):
        uri = os.path.abspath(uri)
        if not uri.endswith(".db"):
            raise MatryoshkaError(
                f"a Milvus Lite file must end in .db, got {uri} (or give http://host:19530)"
            )
    try:
        return MilvusClient(uri=uri, token=token or "", timeout=timeout)
    except MilvusException as exc:
        hint = " (Milvus Lite lets one process at a time open a file)" if uri.endswith(".db") else ""
        raise MatryoshkaError(f"cannot reach Milvus at {uri}: {exc.message}{hint}") from None


def release(uri: str) -> None:
    """Stop this process's Milvus Lite server for ``uri`` so another process can open the file."""
    if str(uri).endswith(".db"):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(os.path.abspath(uri))


class MilvusIndex:
    """The :class:`~matryoshka.index.backends.Index` protocol on a Milvus collection."""

    backend = "milvus"

    def __init__(self, client, collection: str, properties: dict[str, str], uri: str = "") -> None:
        self.client = client
        self.uri = uri
        self.collection = collection
        self.full_dim = int(properties["full_dim"])
        self.prefix_dim = int(properties["prefix_dim"])
        self.properties = properties
        self.rerank = DEFAULT_RERANK
        self._encoder: Encoder | None = None

    @property
    def prefix_field(self) -> str:
        return f"v{self.prefix_dim}"

    # ---- lifecycle ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        uri: str | os.PathLike = DEFAULT_URI,
        model: str | os.PathLike | Encoder | None = None,
        full_dim: int | None = None,
        prefix_dim: int = DEFAULT_PREFIX_DIM,
        index_type: str = "FLAT",
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
    ) -> MilvusIndex:
        """A new collection (or the existing one, if it was made for the same model and dims)."""
        from pymilvus import DataType
        from pymilvus.exceptions import MilvusException

        properties: dict[str, str] = {}
        if model is not None:
            encoder = model if hasattr(model, "fingerprint") else _encoder(model)
            if full_dim is not None and full_dim != encoder.full_dim:
                raise DimensionError(
                    f"model {encoder.info.name} makes {encoder.full_dim}-dim vectors, not {full_dim}"
                )
            full_dim = encoder.full_dim
            properties.update(model=encoder.info.name, fingerprint=encoder.fingerprint)
        elif full_dim is None:
            raise MatryoshkaError("an index needs a model or the full dim of its vectors")
        prefix_dim = validate_dim(prefix_dim, full_dim)
        index_type = index_type.upper()
        if index_type not in INDEX_TYPES:
            raise MatryoshkaError(f"index type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        properties.update(full_dim=str(full_dim), prefix_dim=str(prefix_dim), index_type=index_type)
        client = connect(str(uri), token)
        if client.has_collection(collection):
            index = cls._from_collection(client, collection, str(uri))
            wanted = {key: value for key, value in properties.items() if key != "index_type"}
            clash = {key: v for key, v in wanted.items() if index.properties.get(key) != v}
            if clash:
                raise MatryoshkaError(
                    f"collection {collection!r} at {uri} holds {index._describe()}; it cannot take "
                    f"{', '.join(f'{key}={value}' for key, value in clash.items())}"
                )
            return index
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_LIMIT, nullable=True)
        schema.add_field("metadata", DataType.JSON, nullable=True)
        schema.add_field(f"v{prefix_dim}", DataType.FLOAT_VECTOR, dim=prefix_dim)
        schema.add_field("full", DataType.FLOAT_VECTOR, dim=full_dim)
        try:
            _create(client, collection, schema, prefix_dim, index_type)
        except MilvusException as exc:
            if index_type == "FLAT":
                raise MatryoshkaError(f"Milvus could not create collection {collection!r}: {exc}") from None
            warnings.warn(
                f"this Milvus deployment refused a {index_type} index on v{prefix_dim} ({exc}); using FLAT",
                stacklevel=2,
            )
            if client.has_collection(collection):
                client.drop_collection(collection)
            _create(client, collection, schema, prefix_dim, "FLAT")
            properties["index_type"] = "FLAT"
        client.alter_collection_properties(collection, {PROPERTY + k: v for k, v in properties.items()})
        return cls(client, collection, properties, str(uri))

    @classmethod
    def open(
        cls,
        uri: str | os.PathLike = DEFAULT_URI,
        collection: str = DEFAULT_COLLECTION,
        token: str | None = None,
        model: str | os.PathLike | Encoder | None = None,
    ) -> MilvusIndex:
        """An existing collection; with ``model``, refused unless that model made its vectors."""
        if not str(uri).startswith(("http", "tcp", "unix")) and not os.path.exists(uri):
            raise MatryoshkaError(f"no Milvus Lite file at {uri}")
        client = connect(str(uri), token)
        if not client.has_collection(collection):
            raise MatryoshkaError(f"no collection {collection!r} at {uri}")
        index = cls._from_collection(client, collection, str(uri))
        if model is not None:
            index.use_encoder(model if hasattr(model, "fingerprint") else _encoder(model))
        return index

    @classmethod
    def _from_collection(cls, client, collection: str, uri: str) -> MilvusIndex:
        described = client.describe_collection(collection).get("properties", {})
        properties = {k.removeprefix(PROPERTY): v for k, v in described.items() if k.startswith(PROPERTY)}
        if "full_dim" not in properties:
            raise MatryoshkaError(f"collection {collection!r} was not made by matryoshka (no dims recorded)")
        with_retries(lambda: client.load_collection(collection), "load")  # a reopened collection is released
        return cls(client, collection, properties, uri)

    def _describe(self) -> str:
        keys = ("model", "full_dim", "prefix_dim")
        return ", ".join(f"{key}={self.properties[key]}" for key in keys if key in self.properties)

    def close(self) -> None:
        """Close the client and, for Milvus Lite, stop this process's server of the file."""
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
        """Insert rows in batches (each retried on transient errors); returns the live row count."""
        from tqdm import tqdm

        if vectors is None:
            if texts is None:
                raise MatryoshkaError("add needs vectors or texts")
            vectors = self.encoder.encode_full(list(texts))
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if vectors.shape[1] != self.full_dim:
            raise DimensionError(f"vectors have {vectors.shape[1]} dims, the index holds {self.full_dim}")
        count = len(vectors)
        if ids is None:
            start = self.live_rows()
            ids = [str(start + i) for i in range(count)]
        for name, values in (("ids", ids), ("texts", texts), ("metadata", metadata)):
            if values is not None and len(values) != count:
                raise MatryoshkaError(f"{len(values)} {name} for {count} vectors")
        ids = [str(key) for key in ids]
        if len(set(ids)) != count:
            raise MatryoshkaError("ids must be distinct")
        full = truncate(vectors)
        prefix = truncate(vectors, self.prefix_dim)
        with tqdm(total=count, unit="row", disable=not progress) as bar:
            for start in range(0, count, batch_size):
                stop = min(start + batch_size, count)
                self._refuse_existing(ids[start:stop])
                rows = [
                    {
                        "id": ids[i],
                        "text": None if texts is None else texts[i][:TEXT_LIMIT],
                        "metadata": None if metadata is None else metadata[i],
                        self.prefix_field: prefix[i].tolist(),
                        "full": full[i].tolist(),
                    }
                    for i in range(start, stop)
                ]
                with_retries(lambda rows=rows: self.client.insert(self.collection, rows), "insert")
                bar.update(stop - start)
        return self.live_rows()

    def _refuse_existing(self, ids: list[str]) -> None:
        """Milvus does not enforce unique primary keys, so a repeated id would make a duplicate row."""
        found = self.client.get(self.collection, ids=ids, output_fields=["id"])
        if found:
            shown = " ".join(sorted(row["id"] for row in found)[:5])
            raise MatryoshkaError(f"ids already in the collection: {shown}")

    def texts_of(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The text of each of ``ids`` the collection holds."""
        ids = [str(i) for i in ids]
        found = with_retries(lambda: self.client.get(self.collection, ids=ids, output_fields=["text"]), "get")
        return {row["id"]: row.get("text") for row in found}

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete rows by id; returns the ids that were not found."""
        ids = [str(i) for i in ids]
        found = {row["id"] for row in self.client.get(self.collection, ids=ids, output_fields=["id"])}
        if found:
            with_retries(lambda: self.client.delete(self.collection, ids=sorted(found)), "delete")
        return [i for i in ids if i not in found]

    def live_rows(self) -> int:
        result = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

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
        """A funnel as given (the prefix field then full, or one of them), or prefix:k*20 -> full:k."""
        if funnel is None:
            stages = [Stage(self.prefix_dim, k * DEFAULT_SHORTLIST_FACTOR), Stage(self.full_dim, k)]
        elif isinstance(funnel, list):
            stages = checked_funnel(funnel, self.full_dim, k)
        else:
            stages = parse_funnel(funnel, self.full_dim, k)
        dims = [s.dim for s in stages]
        allowed = [[self.prefix_dim], [self.full_dim], [self.prefix_dim, self.full_dim]]
        if any(s.precision != "float" for s in stages) or dims not in allowed:
            raise MatryoshkaError(
                f"this collection searches at dim {self.prefix_dim} (field {self.prefix_field}) then "
                f"{self.full_dim} (full), or at one of them; funnel "
                f"{stages_text(stages, self.full_dim)} is not that"
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
        """Top ``k`` per query: first pass on the prefix field (or one exact stage), rerank at full dim
        (``self.rerank``: on the client or the server)."""
        if hnsw:
            raise MatryoshkaError("a Milvus collection's ANN index type is chosen at create (--index-type)")
        if self.rerank not in RERANK_PLACES:
            raise MatryoshkaError(f"rerank must be one of {', '.join(RERANK_PLACES)}, got {self.rerank!r}")
        stages = self.stages_for(funnel, k)
        vectors = self._query_vectors(queries)
        first = stages[0]
        field = self.prefix_field if first.dim == self.prefix_dim else "full"
        started = time.perf_counter()
        hits = self._search(field, truncate(vectors, first.dim), first.keep, None)
        ids = [[hit["id"] for hit in query_hits] for query_hits in hits]
        scores = [[hit["distance"] for hit in query_hits] for query_hits in hits]
        stats = [StageStats(str(first), max(map(len, ids), default=0), time.perf_counter() - started, 0)]
        if len(stages) == 2:
            started = time.perf_counter()
            place = self._rerank_client if self.rerank == "client" else self._rerank_server
            ids, scores, fetched = place(truncate(vectors), ids, k)
            stats.append(StageStats(str(stages[1]), k, time.perf_counter() - started, fetched))
        return self._result(ids, scores, k, stats, stages)

    def _search(self, field: str, vectors: np.ndarray, limit: int, params: dict | None, filter: str = ""):
        return with_retries(
            lambda: self.client.search(
                self.collection,
                data=vectors.tolist(),
                anns_field=field,
                limit=limit,
                filter=filter,
                output_fields=["id"],
                search_params={"metric_type": "IP", "params": params or {}},
            ),
            "search",
        )

    def _rerank_client(self, queries: np.ndarray, shortlists: list[list[str]], k: int):
        """Fetch the shortlisted full vectors once (deduplicated) and score them here."""
        unique = sorted({key for shortlist in shortlists for key in shortlist})
        rows = with_retries(
            lambda: self.client.get(self.collection, ids=unique, output_fields=["full"]), "fetch"
        )
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

    def _rerank_server(self, queries: np.ndarray, shortlists: list[list[str]], k: int):
        """Search the full field once per query, restricted to its shortlist by a filter expression."""
        ids, scores = [], []
        for query, shortlist in zip(queries, shortlists, strict=True):
            if not shortlist:
                ids.append([])
                scores.append([])
                continue
            hits = self._search("full", query[None], k, None, filter=f"id in {json.dumps(shortlist)}")[0]
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
            found = self.client.get(self.collection, ids=wanted, output_fields=["text"]) if wanted else []
            text = {row["id"]: row.get("text") for row in found}
            return ids, [[text.get(key) for key in query_ids] for query_ids in ids]

        return SearchResult(score_matrix, rows, records, stats, stages_text(stages, self.full_dim))

    def info(self) -> dict:
        """Model, dims, index type, row count, and where the collection lives."""
        index = self.client.describe_index(self.collection, self.prefix_field) or {}
        return {
            "backend": "milvus",
            "collection": self.collection,
            "source": {key: self.properties.get(key) for key in ("model", "fingerprint")},
            "full_dim": self.full_dim,
            "prefix_dim": self.prefix_dim,
            "prefix_field": self.prefix_field,
            "index_type": index.get("index_type", self.properties.get("index_type")),
            "live": self.live_rows(),
            "default_rerank": self.rerank,
        }


def _create(client, collection: str, schema, prefix_dim: int, index_type: str) -> None:
    """The collection with an ``index_type`` index on the prefix field and a FLAT one on ``full``."""
    params = client.prepare_index_params()
    params.add_index(
        f"v{prefix_dim}", index_type=index_type, metric_type="IP", params=INDEX_BUILD_PARAMS[index_type]
    )
    params.add_index("full", index_type="FLAT", metric_type="IP")
    with_retries(lambda: client.create_collection(collection, schema=schema, index_params=params), "create")


def _encoder(model: str | os.PathLike) -> Encoder:
    from matryoshka.encoder import Encoder

    return Encoder(model)
