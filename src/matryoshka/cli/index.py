"""`matryoshka index build|add|delete|compact|info`: write and inspect an index directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from matryoshka.cli import _milvus
from matryoshka.cli._common import parse_dims, user_errors
from matryoshka.errors import MatryoshkaError

index_app = typer.Typer(help="Build and change a Matryoshka index.", no_args_is_help=True)
BATCH_TEXTS = 1024
BACKEND = typer.Option("local", "--backend", help=_milvus.BACKEND_HELP)
URI = typer.Option(None, "--uri", help=_milvus.URI_HELP)
COLLECTION = typer.Option("matryoshka", "--collection", help="Milvus collection name.")
TOKEN = typer.Option(None, "--token", envvar="MILVUS_TOKEN", help="Milvus token (user:password or API key).")


def read_corpus(path: Path, field: str = "text") -> tuple[list[str], list[str]]:
    """(ids, texts) of a JSONL corpus (``_id``/``id`` fields, else the line number) or a text file."""
    from matryoshka.datasets import read_texts

    texts = read_texts(path, field)
    ids = [str(i) for i in range(len(texts))]
    if path.suffix in (".jsonl", ".json") or path.read_text(encoding="utf-8").lstrip().startswith("{"):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        ids = [str(r.get("_id", r.get("id", i))) for i, r in enumerate(records)]
    return ids, texts


def load_vectors(path: Path) -> np.ndarray:
    try:
        vectors = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise MatryoshkaError(f"cannot read vectors from {path}: {exc}") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise MatryoshkaError(f"{path} must hold a 2-D float array, got {vectors.dtype} {vectors.shape}")
    return vectors


def add_in_batches(index, ids: list[str], texts: list[str], vectors: np.ndarray | None) -> None:
    """Append from where the index stands (so a killed build resumes), one committed batch at a time."""
    from tqdm import tqdm

    done = index.store.rows
    if done and done <= len(ids) and index.store.records(np.array([done - 1]))[0][0] != ids[done - 1]:
        raise MatryoshkaError("the index holds other rows than this corpus's first ones: use a new --out")
    with tqdm(total=len(ids), initial=done, unit="text", disable=len(ids) - done < BATCH_TEXTS) as bar:
        for start in range(done, len(ids), BATCH_TEXTS):
            stop = min(start + BATCH_TEXTS, len(ids))
            batch = None if vectors is None else np.asarray(vectors[start:stop], dtype=np.float32)
            index.add(batch, texts[start:stop], ids[start:stop])
            bar.update(stop - start)


@index_app.command()
@user_errors
def build(
    corpus: Path | None = typer.Argument(None, help="JSONL corpus (text and _id fields) or a text file."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Index directory to create (or resume)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or directory."),
    vectors: Path | None = typer.Option(
        None, "--vectors", help="Precomputed vectors (.npy), one row per text."
    ),
    texts: Path | None = typer.Option(None, "--texts", help="Texts/ids (JSONL or text) matching --vectors."),
    chunks: str = typer.Option("32,64,128,256", "--chunks", help="Chunk boundaries of the coordinate files."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 or float32 storage."),
    field: str = typer.Option("text", "--field", help="JSONL field holding the text."),
    backend: str = BACKEND,
    uri: str | None = URI,
    collection: str = COLLECTION,
    token: str | None = TOKEN,
    prefix_dim: int = typer.Option(64, "--prefix-dim", help="Milvus: dim of the first-pass field."),
    index_type: str = typer.Option("FLAT", "--index-type", help="Milvus: FLAT, HNSW or IVF_FLAT."),
    rotate: bool = typer.Option(
        False, "--rotate", help="Rotate --vectors that do not nest (fitted on a sample of them)."
    ),
) -> None:
    """Build an index from texts (encoded with --model) or from precomputed --vectors with --texts."""
    from matryoshka.index import MatryoshkaIndex
    from matryoshka.index.rotation import fit_rotation

    if (corpus is None) == (vectors is None):
        raise MatryoshkaError("give a corpus to encode, or --vectors with --texts")
    array = None
    if vectors is not None:
        if texts is None:
            raise MatryoshkaError("--vectors needs --texts (the texts or ids of its rows)")
        array = load_vectors(vectors)
    ids, text_list = read_corpus(corpus or texts, field)
    if array is not None and len(array) != len(ids):
        raise MatryoshkaError(f"{vectors} has {len(array)} rows but {texts} has {len(ids)} texts")
    if rotate and array is None:
        raise MatryoshkaError("--rotate is fitted on --vectors: encode the corpus to a .npy first")
    if _milvus.check_backend(backend, uri):
        if rotate:
            raise MatryoshkaError("--rotate is a local index option: Milvus stores vectors as given")
        args = (uri, collection, token, model, ids, text_list, array, prefix_dim, index_type, BATCH_TEXTS)
        return _milvus.build(*args)
    if out is None:
        raise MatryoshkaError("give --out (the index directory)")
    if (out / "manifest.json").exists():
        index = MatryoshkaIndex.open(out)
        typer.echo(f"resuming {out} at row {index.store.rows}", err=True)
    else:
        if array is None and model is None:
            from matryoshka.models import DEFAULT_MODEL

            model = DEFAULT_MODEL
        full_dim = None if array is None else array.shape[1]
        source = str(vectors) if vectors is not None else None
        rotation = None if not rotate else fit_rotation(np.asarray(array, dtype=np.float32))
        index = MatryoshkaIndex.create(
            out, model, full_dim, parse_dims(chunks), dtype, vectors_from=source, rotation=rotation
        )
    add_in_batches(index, ids, text_list, array)
    funnel = index.calibrate()
    typer.echo(f"indexed {index.store.rows} rows -> {out}; default funnel {funnel_text(funnel)}", err=True)


def funnel_text(stages) -> str:
    from matryoshka.index.stages import stages_text

    return stages_text(stages)


@index_app.command()
@user_errors
def add(
    index_dir: Path | None = typer.Argument(None, help="Index directory (none with --uri)."),
    corpus: Path | None = typer.Argument(None, help="JSONL or text file to encode with the index's model."),
    vectors: Path | None = typer.Option(None, "--vectors", help="Precomputed vectors (.npy)."),
    texts: Path | None = typer.Option(None, "--texts", help="Texts/ids matching --vectors."),
    field: str = typer.Option("text", "--field"),
    backend: str = BACKEND,
    uri: str | None = URI,
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Append rows (ids must be new)."""
    from matryoshka.index import MatryoshkaIndex

    if _milvus.check_backend(backend, uri):
        index_dir, corpus = _milvus.shift(index_dir, corpus)
        corpus = None if corpus is None else Path(corpus)
    if (corpus is None) == (vectors is None) or (vectors is not None and texts is None):
        raise MatryoshkaError("give a corpus to encode, or --vectors with --texts")
    if backend == "milvus":
        index = _milvus.open_milvus(uri, collection, token)
        array = load_vectors(vectors) if vectors is not None else None
        _milvus.add(index, *read_corpus(corpus or texts, field), array, BATCH_TEXTS)
        return typer.echo(f"{index.live_rows()} rows in {uri} collection {collection}", err=True)
    if index_dir is None:
        raise MatryoshkaError("give the index directory")
    if (corpus is None) == (vectors is None) or (vectors is not None and texts is None):
        raise MatryoshkaError("give a corpus to encode, or --vectors with --texts")
    index = MatryoshkaIndex.open(index_dir)
    ids, text_list = read_corpus(corpus or texts, field)
    array = load_vectors(vectors) if vectors is not None else None
    if array is not None and len(array) != len(ids):
        raise MatryoshkaError(f"{vectors} has {len(array)} rows but {texts} has {len(ids)} texts")
    for start in range(0, len(ids), BATCH_TEXTS):
        batch = None if array is None else np.asarray(array[start : start + BATCH_TEXTS], np.float32)
        index.add(batch, text_list[start : start + BATCH_TEXTS], ids[start : start + BATCH_TEXTS])
    index.calibrate()
    typer.echo(f"added {len(ids)} rows; {index.store.rows} rows in {index_dir}", err=True)


@index_app.command()
@user_errors
def delete(
    index_dir: Path = typer.Argument(..., help="Index directory."),
    ids: list[str] = typer.Argument(..., help="Ids to delete."),
) -> None:
    """Tombstone rows by id (space is reclaimed by compact)."""
    from matryoshka.index import MatryoshkaIndex

    missing = MatryoshkaIndex.open(index_dir).delete(ids)
    typer.echo(f"deleted {len(ids) - len(missing)} rows", err=True)
    if missing:
        typer.echo(f"not found: {' '.join(missing)}", err=True)


@index_app.command()
@user_errors
def compact(index_dir: Path = typer.Argument(..., help="Index directory.")) -> None:
    """Rewrite the index without deleted rows."""
    from matryoshka.index import MatryoshkaIndex

    index = MatryoshkaIndex.open(index_dir)
    live = index.compact()
    index.calibrate()
    typer.echo(f"compacted {index_dir}: {live} rows", err=True)


@index_app.command()
@user_errors
def info(
    index_dir: Path | None = typer.Argument(None, help="Index directory (none with --uri)."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every file's checksum."),
    backend: str = BACKEND,
    uri: str | None = URI,
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Print the manifest facts as JSON (and check checksums with --verify)."""
    from matryoshka.index import MatryoshkaIndex

    if _milvus.check_backend(backend, uri):
        return typer.echo(json.dumps(_milvus.open_milvus(uri, collection, token).info(), indent=1))
    if index_dir is None:
        raise MatryoshkaError("give the index directory")
    index = MatryoshkaIndex.open(index_dir)
    if verify:
        index.store.verify()
    typer.echo(json.dumps(index.info() | ({"verified": True} if verify else {}), indent=1))
