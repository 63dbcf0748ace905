"""Encode a corpus on Ray Data into parquet shards of full-dim vectors, resumable after a kill.

The corpus (JSONL, text lines or parquet; a file or a folder of them) is cut into shards that depend on
the files alone (byte ranges at line boundaries, parquet row groups), so a re-run plans the same shards
and skips the ones already written. Ray Data runs the plan through a pool of ``Encoder`` actors (one GPU
each where the cluster has GPUs); each actor reads its shard, encodes it and writes
``shard-NNNNN.parquet`` through a temporary name, so a shard on disk is always complete.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from matryoshka.errors import MatryoshkaError

PLAN_FILE = "plan.json"
RAY_START_TRIES = 2
MIN_SHARD_BYTES, MAX_SHARD_BYTES = 16 << 10, 64 << 20  # a file is cut into about 64 shards between these


class EncodedCorpus(NamedTuple):
    """Rows in corpus order: ids (``_id``/``id`` fields, else the row number), texts, float32 vectors."""

    ids: list[str]
    texts: list[str]
    vectors: np.ndarray


@dataclass
class EncodeSummary:
    shards: int
    skipped: int  # already complete from an earlier run
    rows: int  # rows encoded by this run


def _corpus_files(corpus: Path) -> list[Path]:
    if corpus.is_dir():
        files = sorted(p for p in corpus.iterdir() if p.suffix in (".jsonl", ".json", ".txt", ".parquet"))
    else:
        files = [corpus] if corpus.is_file() else []
    if not files:
        raise MatryoshkaError(f"{corpus}: no such corpus file (or no .jsonl/.txt/.parquet files in it)")
    return files


def plan_shards(corpus: Path, field: str = "text", shard_bytes: int | None = None) -> list[dict]:
    """The shards of a corpus: ``{"name", "path", "kind", "start", "end"}``; the same files give the same
    plan. Byte ranges for line files (a line belongs to the shard holding its first byte), row groups
    for parquet."""
    import pyarrow.parquet as pq

    shards: list[dict] = []
    for path in _corpus_files(corpus):
        size = path.stat().st_size
        if path.suffix == ".parquet":
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as exc:
                raise MatryoshkaError(f"cannot read {path} as parquet: {exc}") from None
            if field not in meta.schema.names:
                raise MatryoshkaError(f"{path} has no column {field!r}")
            ranges = [("parquet", g, g + 1) for g in range(meta.num_row_groups)]
        else:
            offset, first = _first_line(path)
            if not first:
                raise MatryoshkaError(f"{path} is empty")
            kind = "jsonl" if path.suffix in (".jsonl", ".json") or first.startswith("{") else "lines"
            if kind == "jsonl":
                _parse_record(first, field, path, offset)  # a wrong --field fails here, before Ray starts
            step = shard_bytes or min(max(size // 64, MIN_SHARD_BYTES), MAX_SHARD_BYTES)
            ranges = [(kind, start, min(start + step, size)) for start in range(0, size, step)]
        for kind, start, end in ranges:
            shards.append({"name": f"shard-{len(shards):05d}.parquet", "path": str(path.resolve()),
                           "kind": kind, "start": start, "end": end})  # fmt: skip
    return shards


def _first_line(path: Path) -> tuple[int, str]:
    """(byte offset, text) of the first non-blank line; (size, "") when there is none."""
    offset = 0
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                return offset, raw.decode("utf-8", "replace").strip()
            offset += len(raw)
    return offset, ""


def _parse_record(line: str, field: str, path: Path, offset: int) -> tuple[str | None, str]:
    """(id or None, text) of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MatryoshkaError(f"{path}: line at byte {offset}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise MatryoshkaError(f"{path}: line at byte {offset}: no string field {field!r}")
    key = record.get("_id", record.get("id"))
    return None if key is None else str(key), record[field]


def read_shard_texts(shard: dict, field: str) -> tuple[list[str | None], list[str]]:
    """(ids or None, texts) of one planned shard, in file order."""
    path = Path(shard["path"])
    if shard["kind"] == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read_row_group(shard["start"])
        texts = table.column(field).to_pylist()
        key = next((name for name in ("_id", "id") if name in table.column_names), None)
        ids = [None if v is None else str(v) for v in table.column(key).to_pylist()] if key else None
        if not all(isinstance(text, str) for text in texts):
            raise MatryoshkaError(f"{path}: column {field!r} must hold strings")
        return ids or [None] * len(texts), texts
    ids, texts = [], []
    with path.open("rb") as handle:
        handle.seek(max(shard["start"] - 1, 0))
        if shard["start"] > 0:
            handle.readline()  # the rest of a line that started in the previous shard
        position = handle.tell()
        while position < shard["end"] and (raw := handle.readline()):
            offset, position = position, position + len(raw)
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            key, text = (None, line) if shard["kind"] == "lines" else _parse_record(line, field, path, offset)
            ids.append(key)
            texts.append(text)
    return ids, texts


class ShardEncoder:
    """A Ray actor: one ``Encoder`` loaded once, then read, encode and write one shard per call."""

    def __init__(self, out: str, field: str, encoder_args: dict) -> None:
        from matryoshka.encoder import Encoder

        self.out, self.field = Path(out), field
        self.encoder = Encoder(**encoder_args, show_progress=False)

    def __call__(self, batch: dict) -> dict:
        rows, errors = [], []
        for spec in batch["spec"]:
            shard = json.loads(spec)
            try:
                rows.append(self.encode_shard(shard))
                errors.append("")
            except (MatryoshkaError, OSError) as exc:  # reported by the driver as one line
                rows.append(0)
                errors.append(str(exc) if isinstance(exc, MatryoshkaError) else f"{shard['name']}: {exc}")
        return {"rows": np.array(rows), "error": np.array(errors)}

    def encode_shard(self, shard: dict) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids, texts = read_shard_texts(shard, self.field)
        vectors = self.encoder.encode_full(texts).astype(np.float32)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        table = pa.table({"id": pa.array(ids, type=pa.string()), "text": texts, "vector": flat})
        temporary = self.out / f".{shard['name']}.{uuid.uuid4().hex}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, self.out / shard["name"])  # atomic: a shard on disk is complete
        return len(texts)


def encode_on_ray(
    corpus: str | os.PathLike,
    out: str | os.PathLike,
    model: str | None = None,
    workers: int = 2,
    field: str = "text",
    batch_size: int = 64,
    backend: str | None = None,
    adapter: str | os.PathLike | None = None,
    shard_bytes: int | None = None,
) -> EncodeSummary:
    """Encode ``corpus`` into parquet shards under ``out`` with ``workers`` Encoder actors; shards already
    complete are skipped, so a killed job is re-run with the same call. Connects to ``$RAY_ADDRESS`` (a
    cluster) or starts a local Ray unless Ray is already initialised."""
    from matryoshka.encoder import Encoder

    try:
        import ray
        import ray.data
    except ImportError:
        raise MatryoshkaError("--engine ray needs Ray Data: pip install 'ray[data]'") from None
    from tqdm import tqdm

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # progress is one bar of shards, below
    corpus, out = Path(corpus), Path(out)
    if workers < 1:
        raise MatryoshkaError(f"--workers must be at least 1, got {workers}")
    encoder_args = {"model": model, "batch_size": batch_size, "backend": backend, "adapter": adapter}
    Encoder(**encoder_args, device="cpu")  # a bad model, backend or adapter fails before Ray starts
    shards = plan_shards(corpus, field, shard_bytes)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MatryoshkaError(f"cannot write to {out}: {exc.strerror or exc}") from None
    started = not ray.is_initialized()
    if started:
        start_ray()
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if 0 < gpus < workers:
            raise MatryoshkaError(f"--workers {workers} needs {workers} GPUs, the cluster has {gpus}")
        cpus = 1 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        encoder_args |= {"device": "cuda" if gpus else "cpu", "threads": None if gpus else cpus}
        encoder = Encoder(**encoder_args)  # as the actors make it: its fingerprint names their vectors
        plan = {"corpus": str(corpus.resolve()), "field": field, "model": encoder.info.name,
                "model_path": str(encoder.info.path), "fingerprint": encoder.fingerprint,
                "full_dim": encoder.full_dim, "shards": shards}  # fmt: skip
        _write_plan(out, plan)
        todo = [s for s in shards if not (out / s["name"]).exists()]
        summary = EncodeSummary(len(shards), len(shards) - len(todo), 0)
        if todo:
            specs = ray.data.from_items(
                [{"spec": json.dumps(s)} for s in todo], override_num_blocks=len(todo)
            )
            actor_args = {"out": str(out.resolve()), "field": field, "encoder_args": encoder_args}
            pool = ray.data.ActorPoolStrategy(size=workers)
            resources = {"num_cpus": cpus, "num_gpus": 1 if gpus else 0}
            results = specs.map_batches(
                ShardEncoder, batch_size=1, compute=pool, fn_constructor_kwargs=actor_args, **resources
            )
            with tqdm(total=len(todo), unit="shard", desc="encoding on Ray") as bar:
                for row in results.iter_rows():
                    if row["error"]:
                        raise MatryoshkaError(str(row["error"]))
                    summary.rows += int(row["rows"])
                    bar.update()
    finally:
        if started:
            ray.shutdown()
    if summary.rows == 0 and summary.skipped == 0:
        raise MatryoshkaError(f"{corpus} holds no texts")
    return summary


def start_ray(**options) -> None:
    """Join ``$RAY_ADDRESS`` (a cluster: `ray start --head`, then RAY_ADDRESS=host:6379), else start a
    local Ray (``options`` go to ``ray.init``). A local start is tried ``RAY_START_TRIES``
    times: Ray gives its raylet a fixed 30 s to register, which a cold start on a busy machine can miss;
    the last failure names the raylet's log."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **options)
        return
    options = {"include_dashboard": False} | options
    for attempt in range(RAY_START_TRIES):
        try:
            ray.init(address="local", log_to_driver=False, logging_level=logging.WARNING, **options)
            return
        except Exception as exc:  # Ray raises a bare Exception when its node times out
            ray.shutdown()
            if attempt == RAY_START_TRIES - 1:
                raise MatryoshkaError(f"Ray did not start: {exc}{_raylet_log()}") from None


def _raylet_log(lines: int = 20) -> str:
    """The end of the newest local Ray session's raylet log, if one was written."""
    from ray._common.utils import get_default_ray_temp_dir

    logs = Path(get_default_ray_temp_dir()) / "session_latest" / "logs"
    found = [path for name in ("raylet.err", "raylet.out") if (path := logs / name).is_file()]
    tails = [
        f"\n{path}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) for path in found
    ]
    return "".join(tails)


def _write_plan(out: Path, plan: dict) -> None:
    """Record the plan, or refuse a folder planned for another corpus or model; drop a killed run's
    temporary shards."""
    path = out / PLAN_FILE
    try:
        if path.exists():
            if json.loads(path.read_text()) != plan:
                raise MatryoshkaError(f"{out} holds shards of another corpus or model: use a new --out")
        else:
            (out / f".{PLAN_FILE}.tmp").write_text(json.dumps(plan))
            os.replace(out / f".{PLAN_FILE}.tmp", path)
        for stale in out.glob(".*.tmp"):
            stale.unlink()
    except OSError as exc:
        raise MatryoshkaError(f"cannot write to {out}: {exc.strerror or exc}") from None


def shards_plan(directory: str | os.PathLike) -> dict:
    """The plan of a finished encode (``model``, ``model_path``, ``fingerprint``, ``full_dim``, ``shards``);
    refused when shards are missing, so half a job is never loaded."""
    directory = Path(directory)
    try:
        plan = json.loads((directory / PLAN_FILE).read_text())
    except (OSError, ValueError):
        raise MatryoshkaError(f"{directory} is not the output of `matryoshka encode --engine ray`") from None
    missing = [s["name"] for s in plan["shards"] if not (directory / s["name"]).is_file()]
    if missing:
        raise MatryoshkaError(
            f"{directory} is incomplete: {len(missing)} of {len(plan['shards'])} shards missing "
            "(re-run the same `matryoshka encode --engine ray` to finish it)"
        )
    return plan


def iter_shards(directory: str | os.PathLike) -> Iterator[EncodedCorpus]:
    """The shards of a finished encode, one :class:`EncodedCorpus` each, in corpus order (for corpora that
    do not fit in memory at once)."""
    import pyarrow.parquet as pq

    directory, plan = Path(directory), shards_plan(directory)
    row = 0
    for shard in plan["shards"]:
        try:
            table = pq.read_table(directory / shard["name"])
            flat = table.column("vector").combine_chunks().flatten().to_numpy()
        except Exception as exc:
            raise MatryoshkaError(f"cannot read {directory / shard['name']}: {exc}") from None
        vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(len(table), plan["full_dim"])
        keys = table.column("id").to_pylist()
        ids = [key if key is not None else str(row + i) for i, key in enumerate(keys)]
        row += len(ids)
        yield EncodedCorpus(ids, table.column("text").to_pylist(), vectors)


def read_shards(directory: str | os.PathLike) -> EncodedCorpus:
    """Every row of a finished encode in corpus order: ``ids, texts, vectors = read_shards(out)``."""
    parts = list(iter_shards(directory))
    if not parts:
        return EncodedCorpus([], [], np.zeros((0, 0), dtype=np.float32))
    return EncodedCorpus(
        [i for p in parts for i in p.ids], [t for p in parts for t in p.texts],
        np.concatenate([p.vectors for p in parts]),
    )  # fmt: skip
