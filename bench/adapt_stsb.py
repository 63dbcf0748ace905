"""STS-B test Spearman of post-hoc adapters fitted on STS-B train sentences only, plus fit time on ~18k
real vectors. Writes the `adapt_stsb` section of docs/benchmarks.md."""

from __future__ import annotations

import os
import time

import numpy as np

import adapt_data
from matryoshka.train.adapter import fit_adapter
from report import markdown_table, write_section

DIMS = [384, 256, 128, 64, 32, 16, 8]


def main() -> None:
    load_before = os.getloadavg()[0]
    test = adapt_data.stsb_test()
    train = adapt_data.vectors(adapt_data.stsb_train_sentences())
    scifact_docs = adapt_data.vectors(adapt_data.scifact().doc_texts)
    runs = [
        ("raw truncation", "raw", train),
        ("PCA (STS-B train)", "pca", train),
        ("learned truncation (select, STS-B train)", "select", train),
        ("linear adapter (STS-B train)", "linear", train),
        ("linear adapter (SciFact corpus, out of domain)", "linear", scifact_docs),
    ]
    rows = []
    for label, kind, fit_on in runs:
        started = time.perf_counter()
        adapter = fit_adapter(fit_on, kind, DIMS)
        fit_seconds = time.perf_counter() - started
        scores = adapt_data.stsb_spearman(adapter, DIMS, test)
        print(label, f"{fit_seconds:.1f}s", " ".join(f"{scores[d]:.2f}" for d in DIMS), flush=True)
        rows.append([label, *(scores[d] for d in DIMS), len(fit_on), f"{fit_seconds:.1f}"])
    table = markdown_table(["method", *(str(d) for d in DIMS), "fit vectors", "fit s"], rows)

    # Fit time at the scale: every cached real vector of this benchmark together (~18k).
    pooled = np.concatenate([train, test[0], scifact_docs])
    timings = []
    for kind in ("pca", "select", "linear"):
        started = time.perf_counter()
        fit_adapter(pooled, kind, DIMS)
        timings.append([kind, len(pooled), f"{time.perf_counter() - started:.1f}"])
        print("timing", timings[-1], flush=True)
    write_section(
        "adapt_stsb",
        "## Post-hoc adapters on STS-B (test Spearman x100 by prefix dim)\n\n"
        "all-MiniLM-L6-v2 vectors, frozen; fitted on the 10,566 distinct STS-B train sentences only (last "
        "row: on the SciFact corpus). Fit times are wall seconds on one thread of a 2-core machine shared "
        f"with three other jobs (1-minute load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end).\n\n"
        + table
        + "\n\n### Fit time on pooled real vectors (STS-B train + test sentences + SciFact corpus)\n\n"
        + markdown_table(["kind", "vectors", "fit s (2 epochs, 1 thread)"], timings),
    )


if __name__ == "__main__":
    main()
