"""`matryoshka demo`: what each prefix of the default model keeps, on real STS-B sentences."""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console
from rich.table import Table

from matryoshka.cache import cached_encode_full
from matryoshka.cli._common import user_errors
from matryoshka.cli.eval import demo_eval
from matryoshka.datasets import load_stsb
from matryoshka.dims import truncate
from matryoshka.encoder import Encoder
from matryoshka.eval.metrics import recall_at_k
from matryoshka.index.search import exact_search
from matryoshka.quantize import score, to_binary, to_int8

DEMO_DIMS = (384, 256, 128, 64, 32, 16, 8)
QUERY_COUNT = 200
TOP_K = 10
INDEX_TOP_K = 5


def neighbour_table(corpus: np.ndarray, queries: np.ndarray, dims: tuple[int, ...]) -> list[dict]:
    """Per dim: bytes per vector and recall@10 of the full-dim ranking in float32, int8 and binary."""
    _, exact_ids = exact_search(queries, corpus, TOP_K)
    rows = []
    for dim in dims:
        prefix, query_prefix = truncate(corpus, dim), truncate(queries, dim)
        _, float_ids = exact_search(query_prefix, prefix, TOP_K)
        recalls = {"float32": recall_at_k(float_ids, exact_ids)}
        for name, codes in (("int8", to_int8(prefix)), ("binary", to_binary(prefix))):
            coded_ids = np.argsort(-score(query_prefix, codes), axis=1)[:, :TOP_K]
            recalls[name] = recall_at_k(coded_ids, exact_ids)
        rows.append(
            {"dim": dim, "bytes": {"float32": 4 * dim, "int8": dim, "binary": -(-dim // 8)}, **recalls}
        )
    return rows


@user_errors
def demo() -> None:
    """Encode STS-B sentences once at full dim; show what every prefix and precision keeps."""
    console = Console()
    pairs = load_stsb("test")
    sentences = list(dict.fromkeys(pairs.first + pairs.second))
    encoder = Encoder()
    started = time.perf_counter()
    vectors = cached_encode_full(encoder, sentences)
    elapsed = time.perf_counter() - started
    queries, corpus = vectors[:QUERY_COUNT], vectors[QUERY_COUNT:]
    console.print(
        f"[bold]{encoder.info.name}[/]: encoded {len(sentences)} STS-B test sentences at {encoder.full_dim} "
        f"dims in {elapsed:.1f}s ({encoder.device}); {QUERY_COUNT} of them query the other {len(corpus)}."
    )
    table = Table(title=f"Bytes per vector (B) and recall@{TOP_K} (R) of the full-dim top {TOP_K}")
    for column in ("dim", "f32 B", "int8 B", "bin B", "f32 R@10", "int8 R@10", "bin R@10"):
        table.add_column(column, justify="right")
    for row in neighbour_table(corpus, queries, DEMO_DIMS):
        sizes = row["bytes"]
        table.add_row(
            str(row["dim"]),
            *(str(sizes[p]) for p in ("float32", "int8", "binary")),
            *(f"{row[p]:.3f}" for p in ("float32", "int8", "binary")),
        )
    console.print(table)
    demo_eval(console)
    index_demo(console, corpus, queries[0], sentences[QUERY_COUNT:], sentences[0])


def index_demo(
    console: Console, corpus: np.ndarray, query: np.ndarray, texts: list[str], query_text: str
) -> None:
    """Index the corpus on disk and show one query's results at 32, 128 and full dims and via the funnel."""
    import tempfile

    from matryoshka.index import MatryoshkaIndex

    with tempfile.TemporaryDirectory() as tmp:
        index = MatryoshkaIndex.create(f"{tmp}/index", full_dim=corpus.shape[1])
        index.add(corpus, texts=texts)
        runs = {
            f"{dim} dims": index.search(query, INDEX_TOP_K, funnel=str(dim))
            for dim in (32, 128, corpus.shape[1])
        }
        runs[f"default funnel {index.info()['funnel']}"] = index.search(query, INDEX_TOP_K)
        console.print(
            f"\n[bold]Index[/]: {len(corpus)} sentences on disk (float16 chunks); query: {query_text!r}"
        )
        table = Table(title="Top results per search (score, text)")
        table.add_column("rank", justify="right")
        for name in runs:
            table.add_column(name, overflow="fold", max_width=34)
        for rank in range(INDEX_TOP_K):
            cells = [f"{r.scores[0][rank]:.3f} {(r.texts[0][rank] or '')[:60]}" for r in runs.values()]
            table.add_row(str(rank + 1), *cells)
        table.add_row(
            "cost",
            *(
                f"{sum(s.seconds for s in r.stages) * 1000:.1f} ms, "
                f"{sum(s.bytes_read for s in r.stages) / 1e6:.2f} MB read"
                for r in runs.values()
            ),
        )
        console.print(table)
        index.close()
