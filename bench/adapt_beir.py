"""SciFact nDCG@10 of post-hoc adapters fitted on the corpus's own texts (no queries, no qrels).

Compares, side by side on the same cached MiniLM vectors: raw truncation, PCA, learned truncation
(`select`), the linear adapter, the linear and mlp adapters with corpus sentences as pseudo-queries,
and (out of domain) a linear adapter fitted on STS-B train sentences. Writes the `adapt_beir` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import os
import time

import adapt_data
from matryoshka.train.adapter import fit_adapter, sentence_queries
from report import markdown_table, write_section

DIMS = [384, 256, 128, 64, 32, 16, 8]


def main() -> None:
    load_before = os.getloadavg()[0]
    data = adapt_data.scifact()
    docs, queries = adapt_data.vectors(data.doc_texts), adapt_data.vectors(data.query_texts)
    pseudo = adapt_data.vectors(sentence_queries(data.doc_texts))
    sts_train = adapt_data.vectors(adapt_data.stsb_train_sentences())
    runs = [
        ("raw truncation", "raw", docs, {}),
        ("PCA (corpus)", "pca", docs, {}),
        ("learned truncation (select, corpus)", "select", docs, {}),
        ("linear adapter (corpus)", "linear", docs, {}),
        ("linear adapter (corpus + its sentences as pseudo-queries)", "linear", docs, {"queries": pseudo}),
        ("mlp adapter (corpus + pseudo-queries)", "mlp", docs, {"queries": pseudo}),
        ("linear adapter (STS-B train sentences, out of domain)", "linear", sts_train, {}),
    ]
    rows = []
    for label, kind, fit_on, extra in runs:
        started = time.perf_counter()
        adapter = fit_adapter(fit_on, kind, DIMS, **extra)
        fit_seconds = time.perf_counter() - started
        scores = adapt_data.scifact_ndcg(adapter, DIMS, data, docs, queries)
        print(label, f"{fit_seconds:.1f}s", " ".join(f"{scores[d]:.2f}" for d in DIMS), flush=True)
        fitted_on = len(fit_on) + len(extra.get("queries", []))
        rows.append([label, *(scores[d] for d in DIMS), fitted_on, f"{fit_seconds:.1f}"])
    table = markdown_table(["method", *(str(d) for d in DIMS), "fit vectors", "fit s"], rows)
    write_section(
        "adapt_beir",
        "## Post-hoc adapters on SciFact (nDCG@10 x100 by prefix dim)\n\n"
        "all-MiniLM-L6-v2 vectors, frozen; exact search over the 5,183 documents for the 300 test queries. "
        "Every fitted method sees only the corpus texts (or, last row, STS-B train sentences); no query or "
        "qrel is used. Fit times are wall seconds on one thread of a 2-core machine shared with three other "
        f"jobs (1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), "
        "so they overstate the fit cost on an idle machine.\n\n" + table,
    )


if __name__ == "__main__":
    main()
