"""Training seconds per step: this project's loss against sentence-transformers' MatryoshkaLoss on the
same batches, interleaved (A, B, A, B...) so that load from other jobs hits both alike.

    PYTHONPATH=src .venv/bin/python bench/train_step_time.py [--steps 12]

One step = forward, loss over the seven dims, backward, optimizer step, for CoSENT on STS-B train
pairs (batch 16) and InfoNCE/MNRL on SciFact train pairs (batch 32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from report import hardware, markdown_table, write_section

DIMS = [384, 256, 128, 64, 32, 16, 8]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", choices=["cosent", "infonce"], help="time one of the two settings")
    args = parser.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    from matryoshka.datasets import data_path
    from matryoshka.models import resolve_model
    from matryoshka.train.data import read_beir_pairs, read_sts
    from matryoshka.train.losses import MatryoshkaTrainingLoss

    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
    torch.manual_seed(12)
    model = SentenceTransformer(str(resolve_model().path), device="cpu", local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sts, scifact = read_sts(data_path("stsb", "sts-train.csv")), read_beir_pairs(data_path("scifact"))
    setups = {
        "CoSENT, STS-B, batch 16": (
            sts,
            16,
            losses.MatryoshkaLoss(model, losses.CoSENTLoss(model), DIMS),
            MatryoshkaTrainingLoss(model, "cosent", DIMS, distill=1.0),
        ),
        "InfoNCE / MNRL, SciFact, batch 32": (
            scifact,
            32,
            losses.MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), DIMS),
            MatryoshkaTrainingLoss(model, "infonce", DIMS, distill=1.0),
        ),
    }
    if args.only:
        setups = {name: setup for name, setup in setups.items() if name.lower().startswith(args.only[:3])}
    rows = []
    for name, (data, batch, theirs, ours) in setups.items():
        columns = [c for c in data.columns if c != "score"]
        times: dict[str, list[float]] = {"theirs": [], "ours": [], "ours_no_distill": []}
        for step in range(args.steps + 1):  # step 0 warms up and is not counted
            rows_at = slice(step * batch, (step + 1) * batch)
            features = [model.preprocess(data.columns[c][rows_at]) for c in columns]
            labels = torch.tensor(data.columns["score"][rows_at]) if "score" in data.columns else None
            for label, loss, distill in (
                ("theirs", theirs, None),
                ("ours", ours, 1.0),
                ("ours_no_distill", ours, 0.0),
            ):
                if distill is not None:
                    loss.distill = distill
                started = time.perf_counter()
                value = loss([dict(f) for f in features], labels)
                value.backward()
                optimizer.step()
                optimizer.zero_grad()
                if step:
                    times[label].append(time.perf_counter() - started)
        median = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            [
                name,
                median["theirs"],
                median["ours"],
                median["ours_no_distill"],
                median["ours"] / median["theirs"],
            ]
        )
        print(name, median, flush=True)
    markdown = "\n\n".join(
        [
            "## Training seconds per step: this project's loss vs sentence-transformers' MatryoshkaLoss",
            f"Median of {args.steps} interleaved steps each (forward + 7-dim loss + backward + AdamW step), "
            f"same batches, same model; {hardware()}, CPU only, 1 torch thread, "
            "machine shared with other jobs.",
            markdown_table(
                [
                    "setting",
                    "MatryoshkaLoss s/step",
                    "ours (distill 1.0) s/step",
                    "ours (no distill) s/step",
                    "ours / MatryoshkaLoss",
                ],
                rows,
            ),
        ]
    )
    print(markdown)
    write_section("train_step_time", markdown)


if __name__ == "__main__":
    main()
