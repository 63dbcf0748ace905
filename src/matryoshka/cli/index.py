"""`matryoshka index build|add|delete|compact|info`: write and inspect an index.

INDEX is a target: a directory (the local index) or Milvus (a ``.db`` Milvus Lite file or an
``http(s)://host:19530`` server); ``--collection`` and ``--token`` apply to Milvus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

from matryoshka.cli._common import parse_dims, user_errors
from matryoshka.errors import MatryoshkaError

index_app = typer.Typer(help="Build and change a Matryoshka index.", no_args_is_help=True)
BATCH_TEXTS = 1024
TARGET_HELP = "Index: a directory, a Milvus Lite .db file, or a Milvus server http://host:19530."
INDEX = typer.Argument(..., help=TARGET_HELP)
COLLECTION = typer.Option("matryoshka", "--collection", help="Milvus collection name.")
TOKEN = typer.Option(None, "--token", envvar="MILVUS_TOKEN", help="Milvus token (user:password or API key).")


def open_target(target: str, collection: str = "matryoshka", token: str | None = None):
    """The index at ``target``: a directory, or a Milvus collection (``collection``, ``token``)."""
    from matryoshka.index import open_index
    from matryoshka.index.backends import is_milvus

    if is_milvus(target):
        return open_index(target, collection=collection, token=token)
    return open_index(target)


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


def add_in_batches(
    index, ids: list[str], texts: list[str], vectors: np.ndarray | None, skip_existing: bool
) -> int:
    """Append in committed batches of ``BATCH_TEXTS``, checking ids before encoding anything: ids the
    index already holds are refused, or with ``skip_existing`` left out (how a killed run resumes).
    Returns the rows added."""
    from tqdm import tqdm

    present = set(index.texts_of(ids))
    if present and not skip_existing:
        shown = ", ".join(sorted(present)[:5])
        raise MatryoshkaError(
            f"{len(present)} ids are already in the index ({shown}): --skip-existing adds only the new ones"
        )
    todo = [i for i, key in enumerate(ids) if key not in present]
    with tqdm(total=len(todo), unit="text", disable=len(todo) < BATCH_TEXTS) as bar:
        for start in range(0, len(todo), BATCH_TEXTS):
            rows = todo[start : start + BATCH_TEXTS]
            batch = None if vectors is None else np.asarray(vectors[rows], dtype=np.float32)
            index.add(batch, [texts[i] for i in rows], [ids[i] for i in rows])
            bar.update(len(rows))
    return len(todo)


def check_same_corpus(index, ids: list[str], texts: list[str]) -> None:
    """A resumed build must be the same corpus: every row the index holds is one of its ids, with
    the same text."""
    held = index.texts_of(ids)
    changed = [key for key, text in zip(ids, texts, strict=True) if key in held and held[key] != text]
    foreign = index.info()["live"] - len(held)
    if changed or foreign:
        example = f"id {changed[0]!r} holds another text" if changed else f"{foreign} rows are not in it"
        raise MatryoshkaError(
            f"the index was built from another corpus ({example}): use a new --out, or `index add`"
        )


@index_app.command()
@user_errors
def build(
    corpus: Path | None = typer.Argument(None, help="JSONL corpus (text and _id fields) or a text file."),
    out: str | None = typer.Option(None, "--out", "-o", help="Index to create or resume: " + TARGET_HELP),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or directory."),
    layers: int | None = typer.Option(None, "--layers", help="Encode with the first N transformer layers."),
    vectors: Path | None = typer.Option(
        None,
        "--vectors",
        help="Precomputed vectors: a .npy (one row per text), or `encode --engine ray` shards.",
    ),
    texts: Path | None = typer.Option(None, "--texts", help="Texts/ids (JSONL or text) matching a .npy."),
    engine: str = typer.Option("local", "--engine", help="local, or ray: encode on Ray Data, then load."),
    workers: int = typer.Option(2, "--workers", min=1, help="--engine ray: Encoder actors (one GPU each)."),
    shards: Path | None = typer.Option(
        None, "--shards", help="--engine ray: folder for the shards (default: OUT.shards beside OUT)."
    ),
    chunks: str = typer.Option("32,64,128,256", "--chunks", help="Chunk boundaries of the coordinate files."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 or float32 storage."),
    field: str = typer.Option("text", "--field", help="JSONL field holding the text."),
    rotate: bool = typer.Option(
        False, "--rotate", help="Rotate --vectors that do not nest (fitted on a sample of them)."
    ),
    collection: str = COLLECTION,
    token: str | None = TOKEN,
    prefix_dim: int = typer.Option(64, "--prefix-dim", help="Milvus: dim of the first-pass field."),
    index_type: str = typer.Option("FLAT", "--index-type", help="Milvus: FLAT or HNSW."),
) -> None:
    """Build an index from texts (encoded with --model, here or on Ray with --engine ray) or from
    precomputed --vectors; re-run on the same corpus, it resumes where a killed build stopped."""
    from matryoshka.index.backends import is_milvus

    if (corpus is None) == (vectors is None):
        raise MatryoshkaError("give a corpus to encode, or --vectors with --texts")
    if out is None:
        raise MatryoshkaError("give --out (the index: " + TARGET_HELP + ")")
    if engine not in ("local", "ray"):
        raise MatryoshkaError(f"unknown engine {engine!r}: use local or ray")
    if layers is not None and (corpus is None or engine == "ray"):
        raise MatryoshkaError("--layers applies to a corpus encoded here (--engine local)")
    if engine == "ray":
        if corpus is None:
            raise MatryoshkaError("--engine ray encodes a corpus: give one (shards load with --vectors)")
        vectors = encode_shards(corpus, out, shards, model, workers, field)
        corpus = None
    encoded = read_vectors(vectors, texts, field) if vectors is not None else None
    ids, text_list = (encoded[0], encoded[1]) if encoded else read_corpus(corpus, field)
    array, made_by = (encoded[2], encoded[3]) if encoded else (None, None)
    model = model or (made_by or {}).get("model_path")
    if layers is not None:
        from matryoshka.encoder import Encoder

        model = Encoder(model, layers=layers)
    if rotate and (array is None or is_milvus(out) or made_by):
        raise MatryoshkaError("--rotate is fitted on --vectors (a .npy) and kept by a local index directory")
    milvus = {"collection": collection, "token": token, "prefix_dim": prefix_dim, "index_type": index_type}
    index = _existing(out) or _create(out, model, array, chunks, dtype, vectors, rotate, milvus)
    if made_by and index.info()["source"].get("fingerprint") != made_by["fingerprint"]:
        raise MatryoshkaError(
            f"{vectors} holds vectors of {made_by['model']} ({made_by['fingerprint']}), not of the index's "
            f"model {index.info()['source'].get('model')}: leave out --model, or use a new --out"
        )
    check_same_corpus(index, ids, text_list)
    added = add_in_batches(index, ids, text_list, array, skip_existing=True)
    if hasattr(index, "calibrate") and index.store.manifest.get("funnel_rows") != index.live_rows:
        index.calibrate()  # the default funnel for the rows built, not for the first batches
    info = index.info()
    resumed = f" (resumed: {len(ids) - added} of its rows were there)" if added < len(ids) else ""
    typer.echo(
        f"indexed {added} rows{resumed}; {info['live']} rows in {out}; default funnel {info.get('funnel')}",
        err=True,
    )
    index.close()


def encode_shards(corpus: Path, out: str, shards: Path | None, model, workers: int, field: str) -> Path:
    """Encode ``corpus`` on Ray into ``shards`` (default ``OUT.shards`` beside a local index or Lite
    file; a re-run finishes a killed job) and return the folder."""
    from matryoshka.index.backends import is_milvus
    from matryoshka.ray_encode import encode_on_ray

    if shards is None:
        if is_milvus(out) and not out.endswith(".db"):
            raise MatryoshkaError("--engine ray with a Milvus server: give --shards, a folder for the shards")
        shards = Path(out.rstrip("/") + ".shards")
    done = encode_on_ray(corpus, shards, model, workers, field)
    before = f"{done.skipped} of {done.shards} shards done before"
    typer.echo(f"encoded {done.rows} texts on Ray ({before}) -> {shards}", err=True)
    return shards


def read_vectors(vectors: Path, texts: Path | None, field: str):
    """(ids, texts, vectors, shards plan or None) of a .npy with its --texts, or of Ray shards."""
    from matryoshka.ray_encode import read_shards, shards_plan

    if vectors.is_dir():
        if texts is not None:
            raise MatryoshkaError(f"{vectors} holds shards with their texts: leave out --texts")
        plan = shards_plan(vectors)
        return (*read_shards(vectors), plan)
    if texts is None:
        raise MatryoshkaError("--vectors needs --texts (the texts or ids of its rows)")
    array = load_vectors(vectors)
    ids, text_list = read_corpus(texts, field)
    if len(array) != len(ids):
        raise MatryoshkaError(f"{vectors} has {len(array)} rows but {texts} has {len(ids)} texts")
    return ids, text_list, array, None


def _existing(out: str):
    from matryoshka.index.backends import is_milvus

    if is_milvus(out):
        return None  # creating a Milvus collection reuses one made for the same model and dims
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise MatryoshkaError(f"--out {out} is a file, not an index directory")
    return open_target(out) if (path / "manifest.json").exists() else None


def _create(out, model, array, chunks, dtype, vectors, rotate, milvus_options):
    from matryoshka.index import create_index
    from matryoshka.index.backends import is_milvus

    if array is None and model is None:
        from matryoshka.models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    full_dim = None if array is None else array.shape[1]
    model = model if array is None or model else None
    if is_milvus(out):
        return create_index(out, model, full_dim, **milvus_options)
    from matryoshka.index.rotation import fit_rotation

    rotation = fit_rotation(np.asarray(array, dtype=np.float32)) if rotate else None
    source = str(vectors) if vectors is not None else None
    return create_index(
        out, model, full_dim, chunks=parse_dims(chunks), dtype=dtype, vectors_from=source, rotation=rotation
    )


@index_app.command()
@user_errors
def add(
    index_target: str = INDEX,
    corpus: Path | None = typer.Argument(None, help="JSONL or text file to encode with the index's model."),
    vectors: Path | None = typer.Option(None, "--vectors", help="Precomputed vectors (.npy)."),
    texts: Path | None = typer.Option(None, "--texts", help="Texts/ids matching --vectors."),
    field: str = typer.Option("text", "--field"),
    skip_existing: bool = typer.Option(
        False, "--skip-existing", help="Leave out ids already in the index (resume a killed add)."
    ),
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Append rows; ids must be new (or pass --skip-existing)."""
    if (corpus is None) == (vectors is None) or (vectors is not None and texts is None):
        raise MatryoshkaError("give a corpus to encode, or --vectors with --texts")
    ids, text_list = read_corpus(corpus or texts, field)
    array = load_vectors(vectors) if vectors is not None else None
    if array is not None and len(array) != len(ids):
        raise MatryoshkaError(f"{vectors} has {len(array)} rows but {texts} has {len(ids)} texts")
    index = open_target(index_target, collection, token)
    added = add_in_batches(index, ids, text_list, array, skip_existing)
    skipped = f" ({len(ids) - added} already there)" if added < len(ids) else ""
    typer.echo(f"added {added} rows{skipped}; {index.info()['live']} rows in {index_target}", err=True)
    index.close()


@index_app.command()
@user_errors
def delete(
    index_target: str = INDEX,
    ids: list[str] = typer.Argument(..., help="Ids to delete."),
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Delete rows by id (a local index tombstones them; compact reclaims the space)."""
    index = open_target(index_target, collection, token)
    missing = index.delete(ids)
    index.close()
    typer.echo(f"deleted {len(ids) - len(missing)} rows", err=True)
    if missing:
        typer.echo(f"not found: {' '.join(missing)}", err=True)


@index_app.command()
@user_errors
def compact(index_target: str = INDEX) -> None:
    """Rewrite a local index without its deleted rows (and re-calibrate its default funnel)."""
    index = open_target(index_target)
    if not hasattr(index, "compact"):
        raise MatryoshkaError("compact is for a local index directory: Milvus compacts by itself")
    live = index.compact()
    typer.echo(f"compacted {index_target}: {live} rows", err=True)


@index_app.command()
@user_errors
def info(
    index_target: str = INDEX,
    verify: bool = typer.Option(False, "--verify", help="Local index: recompute every file's checksum."),
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Print the index's facts as JSON (and check a local index's checksums with --verify)."""
    index = open_target(index_target, collection, token)
    if verify:
        if not hasattr(index, "store"):
            raise MatryoshkaError("--verify checks a local index directory's files")
        index.store.verify()
    typer.echo(json.dumps(index.info() | ({"verified": True} if verify else {}), indent=1))
