"""The base model's retention tables on STS-B and every staged BEIR set, into docs/benchmarks.md.

Runs `matryoshka.eval` on all-MiniLM-L6-v2 at 384..8 dims with the PCA baseline (raw truncation is the
model's own row). Embeddings come from the shared cache when present; report files and plots go to
out/bench/eval_base/. Usage: python bench/eval_base.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from matryoshka import Encoder
from matryoshka.datasets import data_dir
from matryoshka.eval.report import to_markdown, write_report
from matryoshka.eval.retention import evaluate
from matryoshka.eval.tasks import parse_task
from report import write_section

DIMS = [384, 256, 128, 64, 32, 16, 8]
OUT = Path(__file__).resolve().parents[1] / "out" / "bench" / "eval_base"


def staged_tasks() -> list[str]:
    """STS-B test, then every folder of the data root laid out as a BEIR set."""
    beir = sorted(
        path.name
        for path in data_dir().iterdir()
        if (path / "corpus.jsonl").is_file() and (path / "qrels" / "test.tsv").is_file()
    )
    return ["stsb", *(f"beir:{name}" for name in beir)]


def main() -> None:
    started = time.perf_counter()
    encoder = Encoder(show_progress=True)
    sections, timings = [], []
    for spec in staged_tasks():
        task_started = time.perf_counter()
        report = evaluate([encoder], parse_task(spec), DIMS, baselines=["pca"], base_encoder=encoder)
        write_report(report, OUT / spec.replace(":", "-"))
        sections.append(to_markdown(report, heading_level=3))
        encode_s = report["timing"]["encode_s"][encoder.info.name]
        timings.append(
            f"{spec}: {time.perf_counter() - task_started:.1f} s wall "
            f"({encode_s:.1f} s encoding or reading the embedding cache)"
        )
        print(f"{spec} done in {time.perf_counter() - task_started:.1f} s", file=sys.stderr)
    intro = (
        "## Evaluation of the base model (all-MiniLM-L6-v2): quality, retention and cost per dimension\n\n"
        "Score: STS-B test Spearman x100 of cosine vs gold; BEIR nDCG@10 x100 of exact search (top 100 "
        "re-scored in float64). The base model's raw truncation is the model row; PCA is fitted on the STS-B "
        "train sentences / the BEIR corpus and centres the vectors (retention relative to the raw "
        "model's full-dim score). Search times are on a shared, loaded machine: read them as rough ratios.\n"
    )
    wall = [f"- {line}" for line in timings] + [f"- total: {time.perf_counter() - started:.1f} s"]
    markdown = "\n".join([intro, *sections, "Wall times (embedding cache as found):", *wall])
    print(write_section("eval_base", markdown), file=sys.stderr)


if __name__ == "__main__":
    main()
