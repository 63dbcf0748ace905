"""Cross-domain table of post-hoc maps: every fitted method scored on every staged set.

Sets: STS-B test (Spearman x100), SciFact test (nDCG@10 x100) and Flickr8k caption retrieval on the
held-out images (nDCG@10 x100; `matryoshka eval --task flickr8k`). Each set has its fitting texts
(`Task.fit_texts`: STS-B train sentences, the SciFact corpus, the held-out images' corpus captions; no
label of any kind). Rows per target set: raw truncation, centred PCA fitted on the target's own fitting
texts, and the linear adapter as `matryoshka adapt fit` fits it (held-out selection, the texts' own
sentences as pseudo-queries) fitted on each set's texts: in domain, and out of domain (fitted on one
set, scored on the others). Full-dim vectors come from the shared embedding cache; each set's fitted
adapter is saved under out/bench/generalise/ and reused while its fitting vectors are the same (so the
fits can run in parallel first: `python bench/generalise.py --fit SciFact`). Writes the `generalise`
section of docs/benchmarks.md. Usage: python bench/generalise.py [--fit SET]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from matryoshka import Encoder
from matryoshka.adapter import Adapter, data_hash
from matryoshka.cache import cached_encode_full
from matryoshka.eval.retention import fit_pca
from matryoshka.eval.tasks import parse_task
from matryoshka.train.adapter import fit_adapter, sentence_sources
from report import markdown_table, write_section

DIMS = [384, 256, 128, 64, 32, 16, 8]
SETS = {"STS-B": "stsb", "SciFact": "beir:scifact", "Flickr8k": "flickr8k"}
RESULTS = Path(__file__).resolve().parent / "results" / "generalise.json"
ADAPTERS = Path(__file__).resolve().parents[1] / "out" / "bench" / "generalise"


def fitted_adapter(name: str, encoder: Encoder) -> Adapter:
    """`adapt fit`'s default linear adapter on set ``name``'s fitting texts (and their own sentences as
    pseudo-queries), reused from ADAPTERS while those vectors are unchanged."""
    task = parse_task(SETS[name])
    texts = task.fit_texts()
    vectors = cached_encode_full(encoder, texts)
    path = ADAPTERS / f"{name}.npz"
    if path.exists():
        adapter = Adapter.load(path)
        if adapter.meta["data_hash"] == data_hash(vectors):
            return adapter
    sentences, sources = sentence_sources(texts)
    queries = cached_encode_full(encoder, sentences) if sentences else None
    adapter = fit_adapter(
        vectors, "linear", DIMS, queries=queries, query_sources=sources if sentences else None
    )
    ADAPTERS.mkdir(parents=True, exist_ok=True)
    adapter.save(path)
    return adapter


def selection_row(source: str, adapter: Adapter, seconds: float) -> list:
    selection = adapter.meta["selection"]
    recall = selection["mean_recall"]
    mrr = selection.get("source_mrr")
    return [
        source,
        selection["held_out"],
        f"{mrr['input']:.3f} / {mrr['centred']:.3f}" if mrr else "none",
        selection["frame"],
        f"{recall.get('pca', recall.get('start')):.4f} ({'centred PCA' if 'pca' in recall else 'mean-last'})",
        f"{recall['trained']:.4f}",
        selection["chosen"],
        f"{seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fit", choices=list(SETS), help="only fit (and save) this set's adapter")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated subset (a reduced run)")
    args = parser.parse_args()
    chosen = args.sets.split(",")
    if not set(chosen) <= set(SETS):
        parser.error(f"--sets must be among {', '.join(SETS)}")
    encoder = Encoder(device="cpu", show_progress=True)
    if args.fit:
        adapter = fitted_adapter(args.fit, encoder)
        print(args.fit, "kept", adapter.meta["selection"]["chosen"], adapter.meta["fit_seconds"], flush=True)
        return
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    tasks = {name: parse_task(SETS[name]) for name in chosen}
    blocks = {name: task.embed(encoder) for name, task in tasks.items()}
    fitted = {name: fitted_adapter(name, encoder) for name in chosen}
    fit_seconds = {name: adapter.meta["fit_seconds"] for name, adapter in fitted.items()}

    def scores(target: str, transform) -> list[float]:
        task = tasks[target]
        moved = {key: transform(value) for key, value in blocks[target].items()}
        return [task.score(moved, dim)[task.metric] for dim in DIMS]

    tables, results = [], {}
    for target, task in tasks.items():
        rows = {
            "raw truncation": scores(target, lambda v: v),
            f"centred PCA (fitted on {target})": scores(target, fit_pca(task.fit_vectors(encoder))),
        }
        for source, adapter in fitted.items():
            where = "in domain" if source == target else "out of domain"
            kept = adapter.meta["selection"]["chosen"]
            rows[f"adapter fitted on {source} ({where}; kept: {kept})"] = scores(target, adapter.transform)
        for label, values in rows.items():
            print(target, label, " ".join(f"{v:.2f}" for v in values), flush=True)
        results[target] = rows
        metric = "Spearman" if task.metric == "spearman" else "nDCG@10"
        tables.append(
            f"### {target} ({task.name}, {task.size}; {metric} x100)\n\n"
            + markdown_table(["method", *map(str, DIMS)], [[label, *vals] for label, vals in rows.items()])
        )
    selections = [selection_row(source, adapter, fit_seconds[source]) for source, adapter in fitted.items()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"dims": DIMS, "scores": results}, indent=1))
    write_section(
        "generalise",
        "## Cross-domain: every post-hoc map on every staged set (x100 by prefix dim)\n\n"
        + ("" if len(chosen) == len(SETS) else f"**Reduced run: only {', '.join(chosen)}.** ")
        + "all-MiniLM-L6-v2 vectors, frozen. Fitting texts per set, never a label: STS-B: its 10,566 "
        "distinct train sentences; SciFact: its 5,183-document corpus (titles included) plus one sentence "
        "of each document as a pseudo-query; Flickr8k: the corpus captions of the 2,092 held-out images "
        "(captions 1-4 of each; the queries are each image's caption 0, relevant: the other captions of "
        "its image). Centred PCA is fitted on the scored set's own fitting texts. The adapter is "
        "`adapt fit`'s default linear fit (affine: centred on the fitting mean, then a rotation trained from "
        "centred PCA, 10 epochs; not centred when the corpus's own sentences find their documents worse "
        "centred, then a rotation from the mean-last start): 10% of the fitting vectors held out, and of "
        "{its start, the trained map}, fitted on the other 90%, the one whose prefixes keep most of the "
        "held-out rows' full-dim 10-neighbours (mean recall over the dims) is kept. "
        "Fit seconds are wall time on a 2-core machine shared with other "
        f"jobs (load {load_before:.1f} at the start of scoring, {os.getloadavg()[0]:.1f} at the end; "
        f"scoring took {time.perf_counter() - started:.0f} s).\n\n"
        + "\n\n".join(tables)
        + "\n\n### The held-out choice (mean recall@10 of full-dim neighbours over the 7 dims)\n\n"
        + "Pseudo-query MRR: each corpus sentence's own document at the full dim, as given / centred on "
        "the corpus mean (no pseudo-queries: one-sentence texts, centred). The frame is the one the "
        "neighbours are judged in: centred, unless centring moved the pseudo-queries from their "
        "documents.\n\n"
        + markdown_table(
            ["fitted on", "held-out rows", "pseudo-query MRR", "frame", "start", "trained", "kept", "fit s"],
            selections,
        ),
    )


if __name__ == "__main__":
    main()
