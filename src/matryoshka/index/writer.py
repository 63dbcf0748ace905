"""Changing an index: crash-safe batched appends, tombstone deletes and compaction into a new generation.

Order of an append: cut every file back to its committed size (a killed writer may have left a tail),
write and fsync the new rows' data, insert their SQLite rows, then swap the manifest. Until the swap
nothing new is visible: readers only ever look at ``rows < manifest.rows``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index.store import COPY_ROWS, Store, write_manifest
from matryoshka.quantize import calibrate_int8, to_binary, to_int8


def encode_rows(store: Store, vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Every data file's bytes for these unit vectors: chunks, int8 and binary codes, chunk energies."""
    manifest = store.manifest
    files = store._data_files(manifest)
    names = list(files)
    arrays: dict[str, np.ndarray] = {}
    stored = vectors.astype(manifest["dtype"])
    energies = []
    for name, (start, end) in zip(names, manifest["chunks"], strict=False):
        arrays[name] = np.ascontiguousarray(stored[:, start:end])
        energies.append(np.sum(np.square(arrays[name], dtype=np.float32), axis=1))
    int8_name, binary_name, energy_name = names[len(manifest["chunks"]) :]
    arrays[int8_name] = to_int8(vectors[:, : manifest["int8_dim"]], store.int8_ranges()).codes
    arrays[binary_name] = to_binary(vectors[:, : manifest["binary_dim"]]).bits
    arrays[energy_name] = np.stack(energies, axis=1).astype(np.float32)
    return arrays


def _append_bytes(path: os.PathLike, committed: int, data: bytes) -> None:
    with open(path, "r+b" if os.path.exists(path) else "w+b") as handle:
        handle.truncate(committed)  # drop what a killed writer left past the last commit
        handle.seek(committed)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def append(
    store: Store,
    vectors: np.ndarray,
    ids: Sequence[str] | None = None,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[dict | None] | None = None,
) -> int:
    """Add rows and commit them; returns the new row count."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[1] != store.full_dim:
        raise DimensionError(f"vectors have shape {vectors.shape}, the index holds {store.full_dim}-dim rows")
    if not np.isfinite(vectors).all():
        raise MatryoshkaError("vectors contain NaN or infinite values")
    count, first = len(vectors), store.rows
    ids = [str(first + i) for i in range(count)] if ids is None else [str(i) for i in ids]
    texts = list(texts) if texts is not None else [None] * count
    metadata = list(metadata) if metadata is not None else [None] * count
    if not len(ids) == len(texts) == len(metadata) == count:
        raise MatryoshkaError(
            f"{count} vectors but {len(ids)} ids, {len(texts)} texts, {len(metadata)} metadata"
        )
    if len(set(ids)) != count:
        raise MatryoshkaError("ids in one batch must be distinct")
    db = store.db
    db.execute("DELETE FROM rows WHERE row >= ?", (first,))  # rows of a writer killed before its commit
    db.commit()
    if taken := store.rows_of(ids) | _deleted_ids(store, ids):
        raise MatryoshkaError(f"ids already in the index: {', '.join(sorted(taken)[:5])}")
    vectors = truncate(vectors)
    manifest = json.loads(json.dumps(store.manifest))
    if manifest["int8_ranges"] is None:
        starts, steps = calibrate_int8(vectors[:, : manifest["int8_dim"]])
        manifest["int8_ranges"] = [starts.tolist(), steps.tolist()]
        store.manifest["int8_ranges"] = manifest["int8_ranges"]
    for name, array in encode_rows(store, vectors).items():
        data = array.tobytes()
        record = manifest["files"][name]
        _append_bytes(store.root / name, record["bytes"], data)
        record["bytes"] += len(data)
        record["crc32"] = zlib.crc32(data, record["crc32"])
    with db:
        db.executemany(
            "INSERT INTO rows (row, id, text, metadata) VALUES (?, ?, ?, ?)",
            [
                (first + i, ids[i], texts[i], json.dumps(metadata[i]) if metadata[i] is not None else None)
                for i in range(count)
            ],
        )
    manifest["rows"] = first + count
    write_manifest(store.root, manifest)
    _reload(store, manifest)
    return store.rows


def _deleted_ids(store: Store, ids: list[str]) -> dict[str, int]:
    found = {}
    for start in range(0, len(ids), 900):
        batch = ids[start : start + 900]
        marks = ",".join("?" * len(batch))
        query = f"SELECT id, row FROM rows WHERE id IN ({marks}) AND deleted = 1"
        found.update(dict(store.db.execute(query, batch)))
    return found


def _reload(store: Store, manifest: dict) -> None:
    store.manifest = manifest
    store.forget_files()
    store._deleted = None


def delete(store: Store, ids: Sequence[str]) -> list[str]:
    """Tombstone the rows of ``ids``; returns the ids that were not (or no longer) in the index."""
    ids = [str(i) for i in ids]
    found = store.rows_of(ids)
    with store.db as db:
        db.executemany("UPDATE rows SET deleted = 1 WHERE row = ?", [(row,) for row in found.values()])
    store._deleted = None
    return [i for i in ids if i not in found]


def compact(store: Store) -> int:
    """Rewrite live rows into a new generation without tombstones, swap the manifest, drop the old files."""
    old_manifest = store.manifest
    old_files = [*old_manifest["files"], store._db_name(old_manifest), *old_manifest.get("hnsw", {}).values()]
    deleted = store.deleted_rows()
    live = np.setdiff1d(np.arange(store.rows), deleted)
    manifest = json.loads(json.dumps(old_manifest))
    manifest.update(generation=old_manifest["generation"] + 1, rows=0, hnsw={})
    manifest["files"] = {name: {"bytes": 0, "crc32": 0} for name in Store._data_files(manifest)}
    new_db_path = store.root / Store._db_name(manifest)
    new_db_path.unlink(missing_ok=True)
    import sqlite3

    new_db = sqlite3.connect(new_db_path)
    new_db.execute(
        "CREATE TABLE rows (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
        " text TEXT, metadata TEXT, deleted INTEGER NOT NULL DEFAULT 0)"
    )
    for name in manifest["files"]:
        (store.root / name).unlink(missing_ok=True)
    for start in range(0, len(live), COPY_ROWS):
        rows = live[start : start + COPY_ROWS]
        for name, old_name in zip(manifest["files"], old_manifest["files"], strict=True):
            data = np.ascontiguousarray(store.array(old_name)[rows]).tobytes()
            record = manifest["files"][name]
            _append_bytes(store.root / name, record["bytes"], data)
            record["bytes"] += len(data)
            record["crc32"] = zlib.crc32(data, record["crc32"])
        records = store.records(rows)
        new_db.executemany(
            "INSERT INTO rows (row, id, text, metadata) VALUES (?, ?, ?, ?)",
            [
                (start + i, key, text, json.dumps(meta) if meta is not None else None)
                for i, (key, text, meta) in enumerate(records)
            ],
        )
    new_db.commit()
    new_db.close()
    manifest["rows"] = len(live)
    write_manifest(store.root, manifest)
    store.close()
    _reload(store, manifest)
    for name in old_files:
        (store.root / name).unlink(missing_ok=True)
    return len(live)
