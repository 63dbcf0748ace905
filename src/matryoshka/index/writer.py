"""Changing an index: crash-safe batched appends, tombstone deletes and compaction into a new generation.

Every change runs inside ``Store.writing``: the index's only writer, on the latest commit, and only
when every file is present at its recorded size (a damaged index is refused, never zero-filled).

Order of an append: cut every file back to its committed size (a killed writer may have left a tail),
write and fsync the new rows' data, insert their SQLite rows, then swap the manifest. Until the swap
nothing new is visible: readers only ever look at ``rows < manifest.rows``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from contextlib import closing

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.index.stages import checked_rows
from matryoshka.index.store import Store, create_rows_table, row_record_crc, select_in, write_manifest
from matryoshka.quantize import calibrate_int8, to_binary, to_int8

COPY_ROWS = 65536  # rows a compaction copies at a time


def encode_rows(store: Store, vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Every data file's bytes for these unit vectors: chunks, int8 and binary codes, chunk energies."""
    manifest = store.manifest
    chunks = [vectors[:, start:end].astype(manifest["dtype"]) for start, end in manifest["chunks"]]
    codes = [
        to_int8(vectors[:, : manifest["int8_dim"]], store.int8_ranges()).codes,
        to_binary(vectors[:, : manifest["binary_dim"]]).bits,
        np.stack([np.sum(np.square(chunk, dtype=np.float32), axis=1) for chunk in chunks], axis=1),
    ]
    return dict(zip(store._data_files(manifest), [*chunks, *codes], strict=True))


def _append_bytes(path: os.PathLike, record: dict, data: bytes) -> None:
    """Write ``data`` at the committed end of ``path``, then count it in ``record`` (bytes, CRC). A file
    with committed bytes is never created ("r+b"), so a missing one is an error, never zero-filled."""
    with open(path, "r+b" if record["bytes"] else "wb") as handle:
        handle.truncate(record["bytes"])  # drop what a killed writer left past the last commit
        handle.seek(record["bytes"])
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    record["bytes"] += len(data)
    record["crc32"] = zlib.crc32(data, record["crc32"])


def _insert_rows(db: sqlite3.Connection, manifest: dict, first: int, records: Iterable[tuple]) -> None:
    """Insert (id, text, metadata) as rows ``first, first + 1, ...``, chaining their CRC in ``manifest``."""
    values = [
        (first + i, key, text, None if meta is None else json.dumps(meta))
        for i, (key, text, meta) in enumerate(records)
    ]
    db.executemany("INSERT INTO rows (row, id, text, metadata) VALUES (?, ?, ?, ?)", values)
    if "rows_crc32" in manifest:
        manifest["rows_crc32"] = row_record_crc([row[1:] for row in values], manifest["rows_crc32"])


def append(
    store: Store,
    vectors: np.ndarray,
    ids: Sequence[str] | None = None,
    texts: Sequence[str | None] | None = None,
    metadata: Sequence[dict | None] | None = None,
) -> int:
    """Add rows and commit them; returns the new row count."""
    vectors, given_ids = checked_rows(vectors, store.full_dim, ids, texts, metadata)
    count = len(vectors)
    texts = list(texts) if texts is not None else [None] * count
    metadata = list(metadata) if metadata is not None else [None] * count
    vectors = truncate(vectors)
    with store.writing():
        first = store.rows
        ids = [str(first + i) for i in range(count)] if given_ids is None else given_ids
        with store.sqlite() as db, db:
            db.execute("DELETE FROM rows WHERE row >= ?", (first,))  # a killed writer's uncommitted rows
            # every row left is committed: an id is taken whether its row is live or tombstoned
            taken = sorted(key for (key,) in select_in(db, "SELECT id FROM rows WHERE id IN ({})", ids))
        if taken:
            raise MatryoshkaError(f"ids already in the index: {', '.join(taken[:5])}")
        manifest = json.loads(json.dumps(store.manifest))
        if manifest["int8_ranges"] is None:
            ranges = [part.tolist() for part in calibrate_int8(vectors[:, : manifest["int8_dim"]])]
            manifest["int8_ranges"] = store.manifest["int8_ranges"] = ranges  # encode_rows reads them
        for name, array in encode_rows(store, vectors).items():
            _append_bytes(store.root / name, manifest["files"][name], array.tobytes())
        with store.sqlite() as db, db:
            _insert_rows(db, manifest, first, zip(ids, texts, metadata, strict=True))
        manifest["rows"] = first + count
        write_manifest(store.root, manifest)
        store.adopt(manifest)
    return store.rows


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
        old = store.manifest
        old_files = [*old["files"], store._db_name(old), *old.get("hnsw", {}).values()]
        live = store.live_row_numbers()
        manifest = json.loads(json.dumps(old))
        manifest.update(generation=old["generation"] + 1, rows=0, hnsw={}, deleted=0, rows_crc32=0)
        manifest["files"] = {name: {"bytes": 0, "crc32": 0} for name in Store._data_files(manifest)}
        new_db_path = store.root / Store._db_name(manifest)
        for name in [*manifest["files"], new_db_path.name]:  # a killed compaction's leftovers
            (store.root / name).unlink(missing_ok=True)
        try:
            create_rows_table(new_db_path)
            with closing(sqlite3.connect(new_db_path)) as new_db, new_db:
                for start in range(0, len(live), COPY_ROWS):
                    rows = live[start : start + COPY_ROWS]
                    for name, old_name in zip(manifest["files"], old["files"], strict=True):
                        data = store.array(old_name)[rows].tobytes()
                        _append_bytes(store.root / name, manifest["files"][name], data)
                    _insert_rows(new_db, manifest, start, store.records(rows))
        except sqlite3.Error as exc:
            raise MatryoshkaError(f"cannot write index {store.root}: {new_db_path.name}: {exc}") from None
        manifest["rows"] = len(live)
        write_manifest(store.root, manifest)
        store.adopt(manifest)
        for name in old_files:
            (store.root / name).unlink(missing_ok=True)
    return len(live)
