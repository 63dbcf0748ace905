"""Changing an index: crash-safe batched appends, tombstone deletes and compaction into a new generation.

Every change runs inside ``Store.writing``: one writer per index (a second waits, then fails naming
the first), on the latest commit, and only when every file it appends to is present at its recorded
size (a damaged index is refused, never zero-filled).

Order of an append: cut every file back to its committed size (a killed writer may have left a tail),
write and fsync the new rows' data, insert their SQLite rows, then swap the manifest. Until the swap
nothing new is visible: readers only ever look at ``rows < manifest.rows``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Sequence

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index.store import COPY_ROWS, Store, create_rows_table, row_record_crc, write_manifest
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
    """Write ``data`` at byte ``committed`` of ``path``; a file that is not there is created only when
    nothing is committed in it (``Store.check_files`` refused a missing or short file before)."""
    if not os.path.exists(path) and committed:
        raise MatryoshkaError(f"{path} is missing: the index is damaged")
    with open(path, "r+b" if os.path.exists(path) else "w+b") as handle:
        handle.truncate(committed)  # drop what a killed writer left past the last commit
        handle.seek(committed)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _row_values(first: int, ids, texts, metadata) -> list[tuple[int, str, str | None, str | None]]:
    return [
        (first + i, ids[i], texts[i], json.dumps(metadata[i]) if metadata[i] is not None else None)
        for i in range(len(ids))
    ]


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
    count = len(vectors)
    texts = list(texts) if texts is not None else [None] * count
    metadata = list(metadata) if metadata is not None else [None] * count
    given_ids = None if ids is None else [str(i) for i in ids]
    if not len(given_ids if given_ids is not None else vectors) == len(texts) == len(metadata) == count:
        raise MatryoshkaError(
            f"{count} vectors but {len(given_ids or [])} ids, {len(texts)} texts, {len(metadata)} metadata"
        )
    if given_ids is not None and len(set(given_ids)) != count:
        raise MatryoshkaError("ids in one batch must be distinct")
    vectors = truncate(vectors)
    with store.writing():
        first = store.rows
        ids = [str(first + i) for i in range(count)] if given_ids is None else given_ids
        with store.sqlite() as db:
            db.execute("DELETE FROM rows WHERE row >= ?", (first,))  # a killed writer's uncommitted rows
            db.commit()
        if taken := store.rows_of(ids) | _deleted_ids(store, ids):
            raise MatryoshkaError(f"ids already in the index: {', '.join(sorted(taken)[:5])}")
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
        values = _row_values(first, ids, texts, metadata)
        with store.sqlite() as db, db:
            db.executemany("INSERT INTO rows (row, id, text, metadata) VALUES (?, ?, ?, ?)", values)
        if "rows_crc32" in manifest:
            manifest["rows_crc32"] = row_record_crc([row[1:] for row in values], manifest["rows_crc32"])
        manifest["rows"] = first + count
        write_manifest(store.root, manifest)
        store.adopt(manifest)
    return store.rows


def _deleted_ids(store: Store, ids: list[str]) -> dict[str, int]:
    found = {}
    with store.sqlite() as db:
        for start in range(0, len(ids), 900):
            batch = ids[start : start + 900]
            marks = ",".join("?" * len(batch))
            query = f"SELECT id, row FROM rows WHERE id IN ({marks}) AND deleted != 0"
            found.update(dict(db.execute(query, batch)))
    return found


def delete(store: Store, ids: Sequence[str]) -> list[str]:
    """Tombstone the rows of ``ids``; returns the ids that were not (or no longer) in the index. The
    manifest records the tombstone count, so other processes' open indexes notice the delete."""
    ids = [str(i) for i in ids]
    with store.writing():
        found = store.rows_of(ids)
        with store.sqlite() as db, db:
            db.executemany("UPDATE rows SET deleted = 1 WHERE row = ?", [(row,) for row in found.values()])
            (tombstones,) = db.execute(
                "SELECT COUNT(*) FROM rows WHERE deleted != 0 AND row < ?", (store.rows,)
            ).fetchone()
        manifest = json.loads(json.dumps(store.manifest)) | {"deleted": tombstones}
        write_manifest(store.root, manifest)
        store.adopt(manifest)
    return [i for i in ids if i not in found]


def compact(store: Store) -> int:
    """Rewrite live rows into a new generation without tombstones, swap the manifest, drop the old files."""
    with store.writing():
        old_manifest = store.manifest
        old_files = [
            *old_manifest["files"],
            store._db_name(old_manifest),
            *old_manifest.get("hnsw", {}).values(),
        ]
        deleted = store.deleted_rows()
        live = np.setdiff1d(np.arange(store.rows), deleted)
        manifest = json.loads(json.dumps(old_manifest))
        manifest.update(generation=old_manifest["generation"] + 1, rows=0, hnsw={}, deleted=0, rows_crc32=0)
        manifest["files"] = {name: {"bytes": 0, "crc32": 0} for name in Store._data_files(manifest)}
        new_db_path = store.root / Store._db_name(manifest)
        new_db_path.unlink(missing_ok=True)
        for name in manifest["files"]:
            (store.root / name).unlink(missing_ok=True)
        try:
            create_rows_table(new_db_path)
            new_db = sqlite3.connect(new_db_path)
            for start in range(0, len(live), COPY_ROWS):
                rows = live[start : start + COPY_ROWS]
                for name, old_name in zip(manifest["files"], old_manifest["files"], strict=True):
                    data = np.ascontiguousarray(store.array(old_name)[rows]).tobytes()
                    record = manifest["files"][name]
                    _append_bytes(store.root / name, record["bytes"], data)
                    record["bytes"] += len(data)
                    record["crc32"] = zlib.crc32(data, record["crc32"])
                values = [
                    (start + i, key, text, json.dumps(meta) if meta is not None else None)
                    for i, (key, text, meta) in enumerate(store.records(rows))
                ]
                new_db.executemany("INSERT INTO rows (row, id, text, metadata) VALUES (?, ?, ?, ?)", values)
                manifest["rows_crc32"] = row_record_crc([row[1:] for row in values], manifest["rows_crc32"])
            new_db.commit()
            new_db.close()
        except sqlite3.Error as exc:
            raise MatryoshkaError(f"cannot write index {store.root}: {new_db_path.name}: {exc}") from None
        manifest["rows"] = len(live)
        write_manifest(store.root, manifest)
        store.adopt(manifest)
        for name in old_files:
            (store.root / name).unlink(missing_ok=True)
    return len(live)
