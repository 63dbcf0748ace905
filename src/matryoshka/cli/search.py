"""`matryoshka search`: one query against an index, at a prefix, through a funnel or a precision cascade."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli import _milvus
from matryoshka.cli._common import user_errors
from matryoshka.cli.index import BACKEND, COLLECTION, TOKEN, URI
from matryoshka.errors import MatryoshkaError


@user_errors
def search(
    index_dir: Path | None = typer.Argument(None, help="Index directory (none with --uri)."),
    query: str | None = typer.Argument(None, help="Query text (encoded with the index's model)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Results to return."),
    dim: int | None = typer.Option(None, "--dim", "-d", help="Exact search at this prefix dim."),
    funnel: str | None = typer.Option(None, "--funnel", help="Stages DIM:KEEP,..., e.g. 32:1000,128:100."),
    precision: str | None = typer.Option(None, "--precision", help="Cascade, e.g. binary,int8,float."),
    hnsw: bool = typer.Option(False, "--hnsw", help="First stage from the index's HNSW graph."),
    as_json: bool = typer.Option(False, "--json", help="Print results and stage stats as JSON."),
    backend: str = BACKEND,
    uri: str | None = URI,
    collection: str = COLLECTION,
    token: str | None = TOKEN,
    rerank: str | None = typer.Option(None, "--rerank", help="Milvus: full-dim rerank on client or server."),
    plan: str | None = typer.Option(None, "--plan", help="'auto': the index's saved plan."),
    latency_ms: float | None = typer.Option(None, "--latency-ms", help="Deepest stage done in time."),
    recall: float | None = typer.Option(None, "--recall", help="Fastest planned funnel reaching it."),
    adaptive: bool = typer.Option(False, "--adaptive", help="Per-query depth (learned predictor)."),
    adaptive_rule: str | None = typer.Option(
        None, "--adaptive-rule", help="Per-query depth by this rule: predictor, margin or rank."
    ),
) -> None:
    """Search an index; without options it uses the index's calibrated default funnel."""
    from matryoshka.index import MatryoshkaIndex

    if _milvus.check_backend(backend, uri):
        index_dir, query = _milvus.shift(index_dir, query)
        if precision is not None or hnsw:
            raise MatryoshkaError("--precision and --hnsw are local-index options (Milvus: --index-type)")
        index = _milvus.open_milvus(uri, collection, token)
        search_options: dict = {"rerank": rerank}
    else:
        if index_dir is None:
            raise MatryoshkaError("give the index directory")
        index = MatryoshkaIndex.open(index_dir)
        search_options = {"precision": precision, "hnsw": hnsw}
    if query is None:
        raise MatryoshkaError("give a query text")
    if dim is not None:
        index.encoder.check_dim(dim)
    depth = adaptive_rule or adaptive
    planned = {"plan": plan, "latency_ms": latency_ms, "recall": recall, "adaptive": depth}
    if any(value not in (None, False) for value in planned.values()):
        if not isinstance(index, MatryoshkaIndex):
            raise MatryoshkaError("--plan, --latency-ms, --recall and --adaptive need a local index")
        search_options |= planned
        if plan == "auto" and index.saved_plan()[1]:
            typer.echo("warning: the saved plan is stale (the index grew); re-run `index plan`", err=True)
    result = index.search(query, k, dim=dim, funnel=funnel, **search_options)
    if as_json:
        stages = [vars(stage) for stage in result.stages]
        hits = [
            {"id": key, "score": round(float(score), 6), "text": text}
            for key, score, text in zip(result.ids[0], result.scores[0], result.texts[0], strict=False)
        ]
        typer.echo(
            json.dumps(
                {"funnel": result.funnel, "answered": result.answered, "results": hits, "stages": stages},
                indent=1,
            )
        )
        return
    table = Table(title=f"top {k} for {query!r} via {result.funnel}")
    for column in ("rank", "score", "id", "text"):
        table.add_column(column, overflow="fold")
    for rank, (key, score, text) in enumerate(
        zip(result.ids[0], result.scores[0], result.texts[0], strict=False)
    ):
        table.add_row(str(rank + 1), f"{score:.4f}", key, (text or "")[:120])
    console = Console(emoji=False)
    console.print(table)
    for stage in result.stages:
        console.print(
            f"  stage {stage.stage}: kept {stage.kept}, {stage.seconds * 1000:.1f} ms, "
            f"{stage.bytes_read / 1e6:.2f} MB read"
        )
    if result.answered:
        console.print(f"  answered by stage {result.answered[0]}")
