"""`matryoshka search`: one query against an index, through a funnel, a prefix, or the saved plan."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli._common import user_errors
from matryoshka.cli.index import COLLECTION, INDEX, TOKEN, open_target
from matryoshka.errors import MatryoshkaError


@user_errors
def search(
    index_target: str = INDEX,
    query: str = typer.Argument(..., help="Query text (encoded with the index's model)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Results to return."),
    funnel: str | None = typer.Option(
        None, "--funnel", help="Stages [PRECISION@]DIM:KEEP,..., e.g. 32:1000,128:100 or binary@384:300."
    ),
    dim: int | None = typer.Option(None, "--dim", "-d", help="Exact search at this prefix dim."),
    hnsw: bool = typer.Option(False, "--hnsw", help="First stage from the index's HNSW prefix graph."),
    plan: bool = typer.Option(False, "--plan", help="The funnel chosen by the saved plan (`index plan`)."),
    recall: float | None = typer.Option(None, "--recall", help="Saved plan's fastest funnel reaching it."),
    latency_ms: float | None = typer.Option(
        None, "--latency-ms", help="Saved plan's most accurate funnel within this many ms per query."
    ),
    query_layers: int | None = typer.Option(
        None, "--query-layers", help="Encode the query with the model's first N layers (any documents')."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print results and stage stats as JSON."),
    collection: str = COLLECTION,
    token: str | None = TOKEN,
) -> None:
    """Search an index; without options it runs the index's default funnel."""
    index = open_target(index_target, collection, token)
    if query_layers is not None:
        from matryoshka.encoder import Encoder

        index.use_encoder(Encoder(index.encoder.info.path, layers=query_layers), any_layers=True)
    chosen = [name for name, value in (("--funnel", funnel), ("--dim", dim), ("--plan", plan or None),
              ("--recall", recall), ("--latency-ms", latency_ms)) if value is not None]  # fmt: skip
    if len(chosen) > 1:
        raise MatryoshkaError(
            f"give at most one of --funnel, --dim, --plan, --recall, --latency-ms (got {chosen})"
        )
    if dim is not None:
        index.encoder.check_dim(dim)
        funnel = str(dim)
    if plan or recall is not None or latency_ms is not None:
        funnel = planned_funnel(index, index_target, recall, latency_ms)
    result = index.search(query, k, funnel=funnel, hnsw=hnsw)
    if as_json:
        stages = [vars(stage) for stage in result.stages]
        hits = [
            {"id": key, "score": round(float(score), 6), "text": text}
            for key, score, text in zip(result.ids[0], result.scores[0], result.texts[0], strict=False)
        ]
        typer.echo(json.dumps({"funnel": result.funnel, "results": hits, "stages": stages}, indent=1))
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


def planned_funnel(index, target: str, recall: float | None, latency_ms: float | None):
    """The saved plan's candidate for a budget (its choice with none); never plans here."""
    saved = index.saved_plan() if hasattr(index, "saved_plan") else None
    if saved is None:
        raise MatryoshkaError(f"no saved plan: run `matryoshka index plan {target}` first")
    if saved.is_stale(index.live_rows):
        typer.echo(
            f"warning: the saved plan is stale (the index grew); re-run `index plan {target}`", err=True
        )
    if recall is not None:
        return saved.for_recall(recall)
    if latency_ms is not None:
        return saved.for_latency(latency_ms)
    return saved.chosen
