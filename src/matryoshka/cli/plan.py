"""`matryoshka index plan`: choose a funnel from memory, latency or recall budgets, or size a build."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from matryoshka.cli._common import user_errors
from matryoshka.errors import MatryoshkaError


@user_errors
def plan(
    index_dir: Path | None = typer.Argument(None, help="Index directory (omit with --vectors)."),
    memory_gb: float | None = typer.Option(None, "--memory-gb", help="RAM budget in GB."),
    latency_ms: float | None = typer.Option(None, "--latency-ms", help="Per-query latency budget."),
    recall: float | None = typer.Option(None, "--recall", help="Recall@k target vs exact search."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Results per query."),
    vectors: int | None = typer.Option(None, "--vectors", help="Before a build: planned vector count."),
    queries: Path | None = typer.Option(None, "--queries", help="Query log (.npy full-dim vectors)."),
    sample: int | None = typer.Option(
        None, "--sample", min=10, help="Calibration queries to measure on [default: 1000]."
    ),
) -> None:
    """Measure candidate funnels on the index's own data and save the best within the budgets; with
    --vectors N --memory-gb G (no index), size the RAM tier of a future index instead."""
    console = Console(emoji=False)
    if vectors is not None:
        if memory_gb is None:
            raise MatryoshkaError("--vectors needs --memory-gb")
        capacity(console, vectors, memory_gb, k, index_dir)
        return
    if index_dir is None:
        raise MatryoshkaError("give an index directory, or --vectors N --memory-gb G before a build")
    import numpy as np

    from matryoshka.index import MatryoshkaIndex
    from matryoshka.index.planner import CALIBRATION_QUERIES

    if not (index_dir / "manifest.json").exists():
        raise MatryoshkaError(f"{index_dir} is not a local index directory: plans measure a local index")
    index = MatryoshkaIndex.open(index_dir)
    log = np.load(queries) if queries is not None else None
    made = index.plan(memory_gb, latency_ms, recall, k, queries=log, sample=sample or CALIBRATION_QUERIES)
    table = Table(title=f"measured Pareto frontier ({made.calibration}, top {k})")
    for column in ("funnel", "RAM MB", "recall@k", "ms/query", "MB read/query", ""):
        table.add_column(column)
    for c in made.frontier:
        mark = "chosen" if c.funnel == made.chosen.funnel and c.resident == made.chosen.resident else ""
        table.add_row(
            c.funnel + ("" if c.resident else " (mapped)"),
            f"{c.memory_bytes / 1e6:.1f}",
            f"{c.recall:.3f} +- {c.recall_error:.3f}",
            f"{c.latency_ms:.2f}",
            f"{c.bytes_read / 1e6:.2f}",
            mark,
        )
    console.print(table)
    console.print(f"plan: {made.chosen.describe()} (saved in {index_dir})")


def capacity(console: Console, vectors: int, memory_gb: float, k: int, index_dir: Path | None) -> None:
    """Bytes per vector, total memory and measured recall for each RAM tier of a future index."""
    from matryoshka.index.capacity import best_option, capacity_options

    sample, source = sample_vectors(index_dir)
    options = capacity_options(vectors, memory_gb, sample, k)
    chosen = best_option(options, memory_gb)
    table = Table(title=f"{vectors:,} vectors, {memory_gb} GB RAM; recall@{k} measured on {source}")
    for column in ("RAM tier", "bytes/vector", "total GB", "tier recall", "recall after full re-rank", ""):
        table.add_column(column)
    for o in options:
        mark = "chosen" if o is chosen else ("fits" if o.fits else "")
        table.add_row(
            f"{o.precision}@{o.dim}",
            f"{o.bytes_per_vector:g}",
            f"{o.total_bytes / 1e9:.3f}",
            f"{o.tier_recall:.3f}",
            f"{o.recall:.3f}",
            mark,
        )
    console.print(table)


def sample_vectors(index_dir: Path | None):
    """Rows of an existing index, else the STS-B test sentences encoded with the default model."""
    if index_dir is not None:
        from matryoshka.index import MatryoshkaIndex

        store = MatryoshkaIndex.open(index_dir).store
        rows = min(store.rows, 5000)
        return store.read_prefix(slice(0, rows), store.full_dim), f"{rows} rows of {index_dir}"
    from matryoshka.cache import cached_encode_full
    from matryoshka.datasets import load_stsb
    from matryoshka.encoder import Encoder

    pairs = load_stsb("test")
    texts = list(dict.fromkeys(pairs.first + pairs.second))
    return cached_encode_full(Encoder(), texts), f"{len(texts)} STS-B test sentences (default model)"
