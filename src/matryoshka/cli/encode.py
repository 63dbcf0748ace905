"""`matryoshka encode`: texts in, a .npy (or .npz for int8 codes with their ranges) out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import typer

from matryoshka.cli._common import user_errors
from matryoshka.datasets import read_texts
from matryoshka.encoder import Encoder
from matryoshka.errors import MatryoshkaError
from matryoshka.onnx_backend import BACKENDS
from matryoshka.quantize import PRECISIONS, BinaryCodes, Int8Codes


@user_errors
def encode(
    input: Path = typer.Argument(
        ...,
        help="Text file (one text per line) or JSONL with a text field (ray: also parquet, a folder).",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output .npy (int8 codes go to .npz with their ranges)."
    ),
    dim: int | None = typer.Option(None, "--dim", "-d", help="Prefix dimension (default: the full dim)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or directory."),
    precision: str = typer.Option("float32", "--precision", "-p", help=f"One of {', '.join(PRECISIONS)}."),
    field: str = typer.Option("text", "--field", help="JSONL field holding the text."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    backend: str | None = typer.Option(
        None, "--backend", help=f"One of {', '.join(BACKENDS)} (default: the fastest that passed on CPU)."
    ),
    adapter: Path | None = typer.Option(None, "--adapter", help="Post-hoc adapter to apply (file or dir)."),
    layers: int | None = typer.Option(None, "--layers", help="Run only the first N transformer layers."),
    engine: str = typer.Option(
        "local", "--engine", help="local, or ray: parquet shards into the folder --out."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="--engine ray: Encoder actors (one GPU each)."),
    shard_bytes: int | None = typer.Option(
        None, "--shard-bytes", min=1, help="--engine ray: corpus bytes per shard (default: a 64th of a file)."
    ),
) -> None:
    """Encode texts at any dimension and precision."""
    if precision not in PRECISIONS:
        raise MatryoshkaError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if engine not in ("local", "ray"):
        raise MatryoshkaError(f"unknown engine {engine!r}: use local or ray")
    if engine == "ray":
        if layers is not None:
            raise MatryoshkaError("--engine ray runs the whole model: --layers needs --engine local")
        return encode_on_ray_cli(input, out, dim, precision, model, workers, field, batch_size, backend,
                                 adapter, shard_bytes)  # fmt: skip
    check_output(out)  # before the model loads and every text is encoded
    encoder = Encoder(model, batch_size=batch_size, backend=backend, adapter=adapter, layers=layers)
    dim = encoder.check_dim(dim)  # fail on a bad dim before reading or encoding anything
    texts = read_texts(input, field)
    result = encoder.encode(texts, dim=dim, precision=precision)
    if isinstance(result, Int8Codes):
        written = result.save(out)
    else:
        array = result.bits if isinstance(result, BinaryCodes) else result
        np.save(out, array)
        written = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
    typer.echo(f"encoded {len(texts)} texts at {dim} dims ({precision}) -> {written}", err=True)


def check_output(out: Path) -> None:
    """Refuse an output path that cannot be written: its folder missing or read-only, or a folder."""
    folder = out.parent
    if out.is_dir():
        raise MatryoshkaError(f"--out {out} is a folder: give a file name, e.g. {out / 'vectors.npy'}")
    if not folder.is_dir():
        raise MatryoshkaError(f"--out {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise MatryoshkaError(f"--out {out}: the folder {folder} is not writable")


def encode_on_ray_cli(
    input, out, dim, precision, model, workers, field, batch_size, backend, adapter, shards
):
    """Full-dim float32 parquet shards into the folder ``out``; the same command finishes a killed job."""
    from matryoshka.ray_encode import encode_on_ray

    if dim is not None or precision != "float32":
        raise MatryoshkaError("--engine ray writes full-dim float32 shards: truncate or quantise on reading")
    done = encode_on_ray(input, out, model, workers, field, batch_size, backend, adapter, shards)
    typer.echo(
        f"encoded {done.rows} texts ({done.skipped} of {done.shards} shards done before) -> {out}", err=True
    )
