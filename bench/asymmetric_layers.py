"""Asymmetric depth: documents encoded once at full depth, queries at fewer layers (STS-B, SciFact).

What `search --query-layers N` (and `serve --mixed-layers`) gives: an index built with the whole model,
queried by a cheaper one. Scores STS-B test (the first sentence of each pair as the query) and SciFact
test for the models bench/train_2d.py trained (read from its cache; run that first), queries at N
layers against documents at 6, beside the same model with both sides at N layers and both at 6.
Every encoding goes through ``Encoder(model, layers=n)`` (ONNX fp32, one thread) and is read from the
embedding cache bench/train_2d.py filled, so the run itself encodes nothing new.

    PYTHONPATH=src:bench .venv/bin/python bench/asymmetric_layers.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_2d import ROWS
from train_common import RESULTS_DIR

MODELS = ("base", "ours", "ours_distill", "st_2d")
POINTS = ((3, 128), (2, 64))
SIDES = {"spearman": ("first", "second"), "ndcg@10": ("queries", "corpus")}  # by task metric


def model_path(row: str) -> Path | None:
    from matryoshka.cache import cache_dir

    return None if row == "base" else cache_dir() / "train_2d" / row


def by_depth(task, model: Path | None) -> dict[int, dict]:
    """``task``'s blocks (from the embedding cache when bench/train_2d.py filled it) at every depth used."""
    from matryoshka import Encoder

    def encoder(layers: int) -> Encoder:
        return Encoder(model, layers=layers, backend="onnx", threads=1, show_progress=False)

    return {n: task.embed(encoder(n)) for n in {6, *(layers for layers, _ in POINTS)}}


def score(task, blocks: dict[int, dict], query_layers: int, doc_layers: int, dim: int) -> float:
    """``task``'s metric with its query side (STS-B: each pair's first sentence) at ``query_layers`` and
    its document side (the second sentence; the corpus) at ``doc_layers``."""
    query_side, doc_side = SIDES[task.metric]
    mixed = {query_side: blocks[query_layers][query_side], doc_side: blocks[doc_layers][doc_side]}
    return round(float(task.score(mixed, dim)[task.metric]), 2)


def main() -> None:
    from matryoshka.datasets import data_path
    from matryoshka.eval.tasks import BeirTask, StsTask
    from report import hardware, markdown_table, write_section

    started = time.perf_counter()
    tasks = {"STS-B": StsTask("test"), "SciFact": BeirTask(data_path("scifact"))}
    trained = json.loads((RESULTS_DIR / "train_2d.json").read_text())
    body = []
    for row in [r for r in MODELS if r in trained]:
        for name, task in tasks.items():
            blocks = by_depth(task, model_path(row))
            cells = [score(task, blocks, 6, 6, 384)]
            for layers, dim in POINTS:
                cells += [score(task, blocks, layers, 6, dim), score(task, blocks, layers, layers, dim)]
            body.append([ROWS[row][0], name, *cells])
            print(body[-1], flush=True)
    headers = ["model", "set", "6L q + 6L docs, 384"]
    for layers, dim in POINTS:
        headers += [f"{layers}L q + 6L docs, {dim}", f"{layers}L q + {layers}L docs, {dim}"]
    markdown = "\n".join(
        [
            "## Asymmetric depth: queries at fewer layers against documents at 6",
            "",
            "The bench/train_2d.py models (trained on STS-B only): STS-B test Spearman x100 with each "
            "pair's first sentence as the query, and SciFact test nDCG@10 x100; queries encoded with the "
            "first N layers at the listed dim against documents encoded once with the whole model "
            "(`search --query-layers N`), beside both sides at N layers.",
            "",
            markdown_table(headers, body),
            "",
            f"{hardware()}; ONNX fp32, one thread; wall time {time.perf_counter() - started:.0f} s.",
        ]
    )
    print(markdown)
    write_section("asymmetric_layers", markdown)


if __name__ == "__main__":
    main()
