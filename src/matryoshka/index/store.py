"""On-disk layout of an index: a manifest, one memory-mapped file per chunk of coordinates, codes, SQLite.

A search at 64 dims maps only the chunk files that cover [0, 64), so a process serving short prefixes
never reads the rest. A change writes and fsyncs data first (``writer``), then swaps the manifest
atomically (write temp, fsync, rename): the manifest's row count is the commit.

Integrity: the manifest carries a CRC of its own canonical JSON (a flipped byte is an error, never a
silently different index), its row count must match every file's recorded size, and ``verify`` checks
the data files' CRCs and the SQLite rows (numbering, ids, a CRC of every row's id, text and metadata).
One writer at a time: ``Store.writing`` holds an exclusive ``flock`` on the index directory.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import numpy as np

from matryoshka.errors import DimensionError, MatryoshkaError

FORMAT = "matryoshka-index"
FORMAT_VERSION = 2  # 2: the manifest holds its own checksum; 1 (no checksum) is still read
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
DEFAULT_BOUNDARIES = (32, 64, 128, 256)
STORAGE_DTYPES = ("float16", "float32")
LOCK_TIMEOUT_ENV = "MATRYOSHKA_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a writer waits for another writer of the same index
DATA_KEYS = ("generation", "rows", "files", "int8_ranges", "deleted", "rows_crc32")  # a change: reload


def chunk_bounds(full_dim: int, boundaries: Sequence[int] = DEFAULT_BOUNDARIES) -> list[list[int]]:
    """[[0, 32], [32, 64], ..., [256, full_dim]] from the inner boundaries below ``full_dim``."""
    edges = [0, *sorted({int(b) for b in boundaries if 0 < int(b) < full_dim}), full_dim]
    return [[start, end] for start, end in itertools.pairwise(edges)]


def check_boundaries(full_dim: int, boundaries: Sequence[int]) -> None:
    """Chunk boundaries a user gave must each lie inside (0, full_dim): a typo is an error, not ignored."""
    bad = [b for b in boundaries if isinstance(b, bool) or not isinstance(b, int | np.integer)]
    bad += [b for b in boundaries if b not in bad and not 0 < int(b) < full_dim]
    if bad:
        raise DimensionError(
            f"chunk boundaries must be integers between 1 and {full_dim - 1} (the full dim is {full_dim}),"
            f" got {', '.join(str(b) for b in bad)}"
        )


def manifest_checksum(manifest: dict) -> int:
    """CRC-32 of the manifest's canonical JSON (sorted keys, no spaces), its ``checksum`` key left out."""
    payload = {key: value for key, value in manifest.items() if key != "checksum"}
    return zlib.crc32(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: a reader sees the old file or the new one, never a mix (temp file,
    fsync, rename, then fsync the directory so the rename itself reaches the disk)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(root: Path, manifest: dict) -> None:
    payload = {**manifest, "format_version": FORMAT_VERSION}
    payload["checksum"] = manifest_checksum(payload)  # which leaves any old checksum out
    atomic_write(Path(root) / MANIFEST, json.dumps(payload, indent=1).encode())


def read_manifest(root: Path) -> dict:
    """The manifest, checked: its checksum, every key's type, and each file's size against the rows."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise MatryoshkaError(f"{root} is not an index directory")
    try:
        manifest = json.loads(path.read_bytes().decode())
    except FileNotFoundError:
        raise MatryoshkaError(f"{root} is not a matryoshka index (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MatryoshkaError(f"{path} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MatryoshkaError(f"{path} is not a matryoshka index manifest")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise MatryoshkaError(
            f"{path} has format version {manifest.get('format_version')}, this toolkit reads {FORMAT_VERSION}"
        )
    checked = "checksum" in manifest or manifest["format_version"] >= 2
    if checked and manifest.get("checksum") != manifest_checksum(manifest):
        raise MatryoshkaError(f"{path} is damaged: checksum mismatch")
    required = ("full_dim", "chunks", "dtype", "rows", "files", "generation", "int8_dim", "binary_dim")
    if missing := [key for key in (*required, "source", "int8_ranges") if key not in manifest]:
        raise MatryoshkaError(f"{path} is damaged: missing {', '.join(missing)}")
    if problem := _manifest_problem(manifest):
        raise MatryoshkaError(f"{path} is damaged: {problem}")
    manifest.pop("checksum", None)
    return manifest


def _is_count(value: object, low: int = 0, high: float = float("inf")) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _manifest_problem(manifest: dict) -> str | None:
    """What is inconsistent in a manifest (types, chunk tiling, file sizes against the rows), or None."""
    full_dim, chunks, rows = manifest["full_dim"], manifest["chunks"], manifest["rows"]
    if not _is_count(full_dim, 1):
        return f"full_dim is {full_dim!r}"
    if not _is_count(rows) or not _is_count(manifest["generation"]):
        return f"rows {rows!r} / generation {manifest['generation']!r} are not counts"
    if manifest["dtype"] not in STORAGE_DTYPES:
        return f"unknown dtype {manifest['dtype']!r}"
    for key in ("int8_dim", "binary_dim"):
        if not _is_count(manifest[key], 1, full_dim):
            return f"{key} is {manifest[key]!r}"
    edges = [0]
    if not isinstance(chunks, list) or not chunks:
        return f"chunks are {chunks!r}"
    for pair in chunks:
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_count(v) for v in pair)):
            return f"chunk {pair!r} is not [start, end]"
        if pair[0] != edges[-1] or pair[1] <= pair[0]:
            return f"chunks {chunks} do not tile [0, {full_dim})"
        edges.append(pair[1])
    if edges[-1] != full_dim:
        return f"chunks {chunks} do not end at the full dim {full_dim}"
    if not isinstance(manifest["source"], dict):
        return "source is not an object"
    ranges = manifest["int8_ranges"]
    if ranges is None and rows:
        return f"no int8 ranges for {rows} rows"
    if ranges is not None and not (
        isinstance(ranges, list)
        and len(ranges) == 2
        and all(isinstance(part, list) and len(part) == manifest["int8_dim"] for part in ranges)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for part in ranges for v in part)
    ):
        return "int8_ranges are malformed"
    for key in ("deleted", "rows_crc32"):
        if key in manifest and not _is_count(manifest[key], 0, rows if key == "deleted" else 2**32 - 1):
            return f"{key} is {manifest[key]!r}"
    files, expected = manifest["files"], Store._data_files(manifest)
    if not isinstance(files, dict) or set(files) != set(expected):
        return f"files {sorted(files) if isinstance(files, dict) else files!r} are not {sorted(expected)}"
    for name, (dtype, width) in expected.items():
        record = files[name]
        if not isinstance(record, dict) or not all(_is_count(record.get(k)) for k in ("bytes", "crc32")):
            return f"the record of {name} is malformed"
        if record["bytes"] != rows * width * np.dtype(dtype).itemsize:
            return f"{rows} rows, but {name} is recorded at {record['bytes']} bytes"
    return None


def _manifest_stamp(root: Path | str) -> tuple[int, ...] | None:
    """What changes whenever the manifest is swapped (a new inode, mtime, ctime or size)."""
    try:
        stat = os.stat(os.path.join(root, MANIFEST))
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)


def _lock_holder(fd: int) -> str:
    """'PID N' of the process holding the flock on ``fd``'s file, from /proc/locks (Linux), if found."""
    stat = os.fstat(fd)
    key = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    with suppress(OSError), open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "FLOCK" in fields and key in fields and "->" not in fields:
                return f"PID {fields[fields.index(key) - 1]}"
    return "another process"


@contextmanager
def writer_lock(root: Path, timeout: float | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on the index directory, waited for up to ``timeout`` seconds
    ($MATRYOSHKA_LOCK_TIMEOUT, default 60); then an error naming the process that holds it."""
    if timeout is None:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT))
    fd = os.open(root, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            if time.monotonic() >= deadline:
                raise MatryoshkaError(
                    f"index {root} is being written by {_lock_holder(fd)}"
                    f" (waited {timeout:g} s): try again when it has finished"
                )
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def row_record_crc(rows: list[tuple[str, str | None, str | None]], crc: int = 0) -> int:
    """CRC-32 over the SQLite rows' (id, text, metadata JSON) in row order, chained from ``crc``."""
    for row in rows:
        crc = zlib.crc32(json.dumps(list(row), default=repr).encode() + b"\n", crc)  # repr: damaged types
    return crc


class Store:
    """The files of one index directory. Arrays are mapped lazily; ``opened`` names every file mapped.

    ``refresh`` notices a manifest another process committed (appends, deletes, a compaction) and
    reloads; the search entry points call it once per search."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._root_text = os.fspath(self.root)  # a str: ``refresh`` stats on every search
        self._stamp = _manifest_stamp(self.root)
        self.manifest = read_manifest(self.root)
        self.opened: set[str] = set()
        self._maps: dict[str, np.ndarray] = {}
        self._copies: dict[int, np.ndarray] = {}  # contiguous leading sign-bit bytes, by width, in RAM
        self._db: sqlite3.Connection | None = None
        self._deleted: np.ndarray | None = None
        self._writing = False  # inside ``writing``: this object holds the lock

    # ---- creation -------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        full_dim: int,
        boundaries: Sequence[int] = DEFAULT_BOUNDARIES,
        dtype: str = "float16",
        int8_dim: int | None = None,
        binary_dim: int | None = None,
        source: dict | None = None,
    ) -> Store:
        root = Path(root)
        if dtype not in STORAGE_DTYPES:
            raise MatryoshkaError(f"unknown storage dtype {dtype!r}: use float16 or float32")
        if not _is_count(full_dim, 1):
            raise DimensionError(f"the full dim must be a positive integer, got {full_dim!r}")
        if tuple(boundaries) != DEFAULT_BOUNDARIES:  # the defaults are cut to the full dim
            check_boundaries(full_dim, boundaries)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": source or {},
            "full_dim": int(full_dim),
            "chunks": chunk_bounds(full_dim, boundaries),
            "dtype": dtype,
            "int8_dim": int(int8_dim or full_dim),
            "binary_dim": int(binary_dim or full_dim),
            "int8_ranges": None,
            "rows": 0,
            "generation": 0,
            "files": {},
            "funnel": None,
            "deleted": 0,
            "rows_crc32": 0,
        }
        if not 0 < manifest["int8_dim"] <= full_dim or not 0 < manifest["binary_dim"] <= full_dim:
            raise DimensionError(f"code dims must be between 1 and {full_dim}")
        if (root / MANIFEST).exists():
            raise MatryoshkaError(f"{root} already holds an index")
        try:
            root.mkdir(parents=True, exist_ok=True)
            with writer_lock(root):  # two builds into one new directory: the second finds the first
                if (root / MANIFEST).exists():
                    raise MatryoshkaError(f"{root} already holds an index")
                manifest["files"] = {name: {"bytes": 0, "crc32": 0} for name in cls._data_files(manifest)}
                create_rows_table(root / cls._db_name(manifest))
                write_manifest(root, manifest)
        except (OSError, sqlite3.Error) as exc:
            raise MatryoshkaError(f"cannot create an index in {root}: {exc}") from None
        return cls(root)

    @staticmethod
    def _data_files(manifest: dict) -> dict[str, tuple[str, int]]:
        """File name -> (numpy dtype, values per row) for every array file of this generation."""
        gen = manifest["generation"]
        files = {
            f"g{gen}-chunk-{start:04d}-{end:04d}.{manifest['dtype']}": (manifest["dtype"], end - start)
            for start, end in manifest["chunks"]
        }
        files[f"g{gen}-int8-{manifest['int8_dim']}.i8"] = ("int8", manifest["int8_dim"])
        files[f"g{gen}-binary-{manifest['binary_dim']}.u8"] = ("uint8", -(-manifest["binary_dim"] // 8))
        files[f"g{gen}-energy.f32"] = ("float32", len(manifest["chunks"]))
        return files

    @staticmethod
    def _db_name(manifest: dict) -> str:
        return f"g{manifest['generation']}-rows.sqlite"

    # ---- properties -----------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def full_dim(self) -> int:
        return int(self.manifest["full_dim"])

    @property
    def live_rows(self) -> int:
        return self.rows - len(self.deleted_rows())

    def live_row_numbers(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.rows), self.deleted_rows())

    @property
    def chunks(self) -> list[list[int]]:
        return self.manifest["chunks"]

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self._db_path())
        return self._db

    def _db_path(self) -> Path:
        path = self.root / self._db_name(self.manifest)
        if not path.is_file():
            raise MatryoshkaError(f"index {self.root} is damaged: missing {path.name}")
        return path

    @contextmanager
    def sqlite(self) -> Iterator[sqlite3.Connection]:
        """The rows database, with its errors (a damaged or read-only file) reported as the index's."""
        try:
            yield self.db
        except sqlite3.Error as exc:
            name = self._db_name(self.manifest)
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                raise MatryoshkaError(f"index {self.root} is read-only: {name}: {exc}") from None
            raise MatryoshkaError(f"index {self.root} is damaged: {name}: {exc}") from None

    # ---- keeping up with other processes --------------------------------------------------------
    def refresh(self) -> bool:
        """Reload (one stat when nothing changed) when another process committed: True when rows, files or
        tombstones changed, which drops every map and copy; other keys (a saved plan) just update."""
        if (stamp := _manifest_stamp(self._root_text)) == self._stamp:
            return False
        manifest = read_manifest(self.root)
        if changed := any(manifest.get(key) != self.manifest.get(key) for key in DATA_KEYS):
            self.adopt(manifest)
        else:
            self.manifest = manifest
        self._stamp = stamp  # taken before the read: a swap during it is noticed next time
        return changed

    def adopt(self, manifest: dict) -> None:
        """Use ``manifest`` (just committed, by this process or another) from now on."""
        if manifest["generation"] != self.manifest["generation"]:
            self.close()  # maps, copies and the old generation's rows database
        else:
            self.forget_files()
        self.manifest = manifest
        self._deleted = None
        self._stamp = _manifest_stamp(self.root)

    @contextmanager
    def writing(self, timeout: float | None = None) -> Iterator[None]:
        """Be the index's only writer (``writer_lock``); inside, the manifest is the latest commit and every
        file it records is present at its size. OS and SQLite errors while writing (a read-only directory,
        a full disk) become a MatryoshkaError; nothing uncommitted is visible."""
        if self._writing:  # nested (``update_manifest`` inside a change): the lock is held already
            yield
            return
        with writer_lock(self.root, timeout):
            self._writing = True
            try:
                self.refresh()
                self.check_writable()
                self.check_files()
                yield
            except OSError as exc:
                raise MatryoshkaError(f"cannot write index {self.root}: {exc}") from None
            finally:
                self._writing = False

    def update_manifest(self, **changes: object) -> None:
        """Record other keys (a funnel, a plan, a graph) under the writer lock, on top of the latest
        commit: a stale in-memory manifest written back would undo another process's rows."""
        if touched := set(changes) & {*DATA_KEYS, "format", "format_version", "chunks", "full_dim", "dtype"}:
            raise ValueError(f"update_manifest cannot change {sorted(touched)}: appends and compaction do")
        with self.writing():
            manifest = json.loads(json.dumps(self.manifest)) | changes
            write_manifest(self.root, manifest)
            self.manifest = manifest
            self._stamp = _manifest_stamp(self.root)

    def check_writable(self) -> None:
        """Refuse up front, before changing anything, when the directory or a file is not writable."""
        names = [*self.manifest["files"], self._db_name(self.manifest)]
        for path in [self.root, *(self.root / name for name in names)]:
            if path.exists() and not os.access(path, os.W_OK):
                raise MatryoshkaError(f"index {self.root} is read-only ({path.name} is not writable)")

    def check_files(self) -> None:
        """Every file of the manifest present at its recorded size (a longer file holds a killed
        writer's uncommitted tail, which the next append cuts); else the damage, as a search reports it."""
        for name, record in self.manifest["files"].items():
            self._check_size(name, record["bytes"])
        self._db_path()

    def _check_size(self, name: str, expected: int) -> None:
        path = self.root / name
        size = path.stat().st_size if path.is_file() else -1
        if expected and size < expected:  # an empty index has no files yet
            if _manifest_stamp(self._root_text) != self._stamp and not self._writing:  # a commit since
                raise MatryoshkaError(f"index {self.root} changed on disk during this read: search again")
            state = "missing" if size < 0 else f"truncated ({size} bytes, the manifest records {expected})"
            raise MatryoshkaError(f"index {self.root} is damaged: {name} is {state}")

    # ---- reading --------------------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        """The committed rows of one data file, memory-mapped (checked against the manifest's size)."""
        if name in self._maps:
            return self._maps[name]
        dtype, width = self._data_files(self.manifest)[name]
        self._check_size(name, self.manifest["files"][name]["bytes"])
        self.opened.add(name)
        if self.rows == 0:
            self._maps[name] = np.zeros((0, width), dtype=dtype)
        else:  # a plain ndarray view of the map: indexing skips np.memmap's per-call subclass overhead
            mapped = np.memmap(self.root / name, dtype=dtype, mode="r", shape=(self.rows, width))
            self._maps[name] = np.asarray(mapped)
        return self._maps[name]

    def chunk_parts(self, dim: int) -> list[tuple[np.ndarray, int]]:
        """(mapped chunk, columns used) for every chunk that [0, dim) touches."""
        names = self._data_files(self.manifest)  # the chunk files first, in order
        return [
            (self.array(name), min(end, dim) - start)
            for name, (start, end) in zip(names, self.chunks, strict=False)
            if start < dim
        ]

    def read_prefix(self, rows: slice | np.ndarray, dim: int) -> np.ndarray:
        """First ``dim`` stored coordinates of ``rows`` (slice or row numbers), float32, not renormalised."""
        parts = [self.to_float32(chunk[rows, :used]) for chunk, used in self.chunk_parts(dim)]
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    @staticmethod
    def to_float32(values: np.ndarray) -> np.ndarray:
        """float16 -> float32 through torch, far faster than numpy's ``astype`` on one thread (re-ranking
        converts every gathered row); a column slice (a stage ending inside a chunk) is made C order first."""
        if values.dtype != np.float16:
            return values.astype(np.float32, copy=False)
        import torch

        contiguous = np.array(values, order="C", copy=None if values.flags.writeable else True)
        return torch.from_numpy(contiguous).float().numpy()

    def int8_codes(self) -> np.ndarray:
        return self.array(f"g{self.manifest['generation']}-int8-{self.manifest['int8_dim']}.i8")

    def binary_codes(self, dim: int | None = None) -> np.ndarray:
        """Packed sign codes of every row; of the first ``dim`` coordinates only when given, as one
        C-contiguous array copied once and kept, for the popcount kernels."""
        codes = self.array(f"g{self.manifest['generation']}-binary-{self.manifest['binary_dim']}.u8")
        width = codes.shape[1] if dim is None else -(-dim // 8)
        if width == codes.shape[1]:
            return codes
        if width not in self._copies:
            self._copies[width] = np.ascontiguousarray(codes[:, :width])
        return self._copies[width]

    def held_bytes(self) -> int:
        """RAM held by in-memory copies (prefix sign codes), not counting the memory-mapped files."""
        return sum(array.nbytes for array in self._copies.values())

    def release_copies(self) -> None:
        """Free the in-memory copies (made again on the next search that needs one)."""
        self._copies.clear()

    def int8_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        ranges = self.manifest["int8_ranges"]
        if ranges is None:
            raise MatryoshkaError(f"index {self.root} is empty")
        return np.asarray(ranges[0], np.float32), np.asarray(ranges[1], np.float32)

    def energy(self) -> np.ndarray:
        """Per row, the squared norm of each chunk's stored values (prefix norms without reading data)."""
        return self.array(f"g{self.manifest['generation']}-energy.f32")

    def deleted_rows(self) -> np.ndarray:
        """Sorted row numbers of tombstoned rows."""
        if self._deleted is None:
            with self.sqlite() as db:
                found = db.execute("SELECT row FROM rows WHERE deleted != 0 AND row < ?", (self.rows,))
                self._deleted = np.array(sorted(r for (r,) in found), dtype=np.int64)
        return self._deleted

    def records(self, rows: np.ndarray) -> list[tuple[str, str | None, dict | None]]:
        """(id, text, metadata) of each row number, in order."""
        unique = [int(r) for r in np.unique(rows)]
        found = {}
        with self.sqlite() as db:
            query = "SELECT row, id, text, metadata FROM rows WHERE row IN ({})"
            for row, key, text, meta in select_in(db, query, unique):
                try:
                    found[row] = (key, text, json.loads(meta) if meta else None)
                except (TypeError, ValueError):
                    raise MatryoshkaError(
                        f"index {self.root} is damaged: row {row}'s metadata is not JSON"
                    ) from None
        if missing := [r for r in unique if r not in found]:
            raise MatryoshkaError(
                f"index {self.root} is damaged: rows {', '.join(map(str, missing[:5]))} missing from"
                f" {self._db_name(self.manifest)}"
            )
        return [found[int(r)] for r in rows]

    def rows_of(self, ids: list[str]) -> dict[str, int]:
        """Live row number of each id present in the index."""
        with self.sqlite() as db:
            query = "SELECT id, row FROM rows WHERE id IN ({}) AND deleted = 0 AND row < ?"
            return dict(select_in(db, query, ids, self.rows))

    def verify(self) -> None:
        """Check every file's CRC over its committed bytes and the SQLite rows (numbered 0..rows-1, distinct
        ids, their CRC, the tombstone count the manifest records); raise naming every problem found."""
        problems = [
            f"checksum mismatch in {name}"
            for name, recorded in self.manifest["files"].items()
            if self._file_crc(name, recorded["bytes"]) != recorded["crc32"]
        ]
        name, rows = self._db_name(self.manifest), self.rows
        with self.sqlite() as db:
            if (check := db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                problems.append(f"{name}: {check}")
            count, distinct, low, high, tombstones = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT id), MIN(row), MAX(row), COUNT(NULLIF(deleted, 0)) FROM rows"
                " WHERE row < ?",
                (rows,),
            ).fetchone()
            if count != rows or (rows and (low, high) != (0, rows - 1)):
                problems.append(f"{name} holds {count} rows numbered {low}..{high}, the manifest {rows}")
            if distinct != count:
                problems.append(f"{name}: {count - distinct} duplicate ids")
            if "rows_crc32" in self.manifest:
                crc = row_record_crc(
                    db.execute("SELECT id, text, metadata FROM rows WHERE row < ? ORDER BY row", (rows,))
                )
                if crc != self.manifest["rows_crc32"]:
                    problems.append(f"checksum mismatch in the ids, texts or metadata of {name}")
            if "deleted" in self.manifest and tombstones != self.manifest["deleted"]:
                problems.append(
                    f"{name} holds {tombstones} deleted rows, the manifest {self.manifest['deleted']}"
                    " (a delete killed before its commit, or damage)"
                )
        if problems:
            raise MatryoshkaError(f"index {self.root} is damaged: {'; '.join(problems)}")

    def _file_crc(self, name: str, size: int) -> int:
        """CRC-32 of a data file's first ``size`` (committed) bytes, read in blocks rather than mapped, so
        a disk read error is an error, not a crash."""
        self._check_size(name, size)
        crc = 0
        try:
            with open(self.root / name, "rb") as handle:
                while size > 0 and (block := handle.read(min(size, 1 << 24))):
                    crc, size = zlib.crc32(block, crc), size - len(block)
        except OSError as exc:
            raise MatryoshkaError(f"index {self.root} is damaged: cannot read {name}: {exc}") from None
        return crc

    def forget_files(self) -> None:
        self._maps.clear()
        self._copies.clear()

    def close(self) -> None:
        self.forget_files()
        if self._db is not None:
            self._db.close()
            self._db = None


def create_rows_table(path: Path) -> None:
    """A new rows database (one row per index row: id, text, metadata JSON, tombstone)."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS rows (row INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,"
            " text TEXT, metadata TEXT, deleted INTEGER NOT NULL DEFAULT 0)"
        )


def select_in(db: sqlite3.Connection, query: str, values: list, *params: object) -> Iterator[tuple]:
    """The rows of ``query`` with its ``{}`` an ``IN`` list of ``values``, 900 at a time (SQLite's limit
    on parameters); ``params`` fill the placeholders after it."""
    for start in range(0, len(values), 900):
        batch = values[start : start + 900]
        yield from db.execute(query.format(",".join("?" * len(batch))), [*batch, *params])
