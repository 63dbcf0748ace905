"""`matryoshka serve`: the HTTP API (OpenAI-compatible embeddings, search) and the web page."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from matryoshka.cli._common import user_errors
from matryoshka.encoder import Encoder
from matryoshka.errors import MatryoshkaError


@user_errors
def serve(
    model: str | None = typer.Option(None, "--model", "-m", help="Model name or directory."),
    index: Path | None = typer.Option(None, "--index", help="Index directory to search (POST /v1/search)."),
    layers: int | None = typer.Option(None, "--layers", help="Run only the model's first N layers."),
    mixed_layers: bool = typer.Option(
        False, "--mixed-layers", help="Search an --index whose documents came from another depth."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; non-loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="MATRYOSHKA_API_KEY",
        show_envvar=True,
        help="Require 'Authorization: Bearer KEY' (prefer the env var: a flag shows in the process list).",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback address without a key."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most texts encoded together."),
    encode_batch: int = typer.Option(
        16, "--encode-batch", min=1, help="Texts per forward pass inside a batch (sorted by length)."
    ),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Most texts queued; beyond: 503."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0, help="Wait for a batch to fill."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds a request may wait."),
    max_items: int = typer.Option(256, "--max-items", min=1, help="Most inputs per request."),
    max_chars: int = typer.Option(8192, "--max-chars", min=1, help="Most characters per input."),
    max_body: int = typer.Option(1 << 20, "--max-body-bytes", min=1, help="Largest request body."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Torch threads per forward pass (default: CPU cores - 1)."
    ),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve embeddings at any dimension (OpenAI-compatible), search and the web page."""
    import uvicorn

    from matryoshka.server.app import Limits, create_app
    from matryoshka.server.engine import EmbeddingEngine
    from matryoshka.server.security import check_api_key, check_bind, uvicorn_options

    if api_key is None and os.environ.get("MATRYOSHKA_API_KEY") == "":
        api_key = ""  # typer reads an empty variable as unset: refuse it rather than serve with no key
    check_api_key(api_key)
    check_bind(host, api_key, insecure)
    if max_items > max_queue:
        raise MatryoshkaError(f"--max-items ({max_items}) cannot exceed --max-queue ({max_queue})")
    import torch

    # One core stays free for the event loop: on a busy machine, extra OpenMP threads that wait on each
    # other at every barrier cost far more than they give (measured: 1 text in 30-75 ms with one thread,
    # 250-1250 ms with two, on 2 shared cores).
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) - 1))
    # Mini-batches of length-sorted texts pad little: 64 mixed STS-B sentences took ~1.0 s in passes of 16
    # against ~2.4 s in one pass of 64 and ~1.9 s one by one (one thread, shared machine).
    encoder = Encoder(model, batch_size=encode_batch, layers=layers)
    opened = None
    if index is not None:
        from matryoshka.server.search import IndexService

        opened = IndexService(index, encoder, any_layers=mixed_layers)
        if not opened.index.store.manifest["source"].get("model"):
            typer.echo(
                f"warning: {index} holds vectors from no recorded model: /v1/search refuses text queries",
                err=True,
            )
    engine = EmbeddingEngine(encoder, max_batch, max_queue, batch_wait_ms, timeout)
    limits = Limits(max_items, max_chars, max_body)
    app = create_app(engine, opened, api_key, limits)
    typer.echo(f"serving {encoder.name} on http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_options(limits))
