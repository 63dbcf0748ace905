"""2D Matryoshka on STS-B: this project's layer ladder (`train --layers 2,3,4,6`) against
sentence-transformers' Matryoshka2dLoss(CoSENTLoss), models cut to 3 or 2 layers and fine-tuned alone
(the separately trained anchors), the project's 1D recipe and base MiniLM cut without training.

Every trained row uses the same data (all of sts-train), epochs, batch size, learning rate and seed.
Each row trains and scores in its own process (one torch thread, one ONNX thread; ``--jobs`` rows at
once). Scores come from the path a user runs: ``Encoder(model, layers=n)`` (ONNX fp32) at the listed
(layers, dim) points: STS-B test Spearman (in domain) and SciFact test nDCG@10 (another domain: the
models never see it).

    PYTHONPATH=src:bench .venv/bin/python bench/train_2d.py [--epochs 4] [--jobs 2] [--only ours,st_2d]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_common import RESULTS_DIR, SEED, RowStore, code_hash

BATCH, LR = 16, 2e-5
DIMS = (384, 256, 128, 64, 32, 16, 8)
LADDER = (2, 3, 4, 6)
POINTS = {"sts": [(6, 384), (4, 256), (3, 128), (2, 64)], "scifact": [(6, 384), (3, 128), (2, 64)]}
ROWS = {
    "base": ("base MiniLM, cut without training", POINTS),
    "recipe_1d": (
        "this project's 1D recipe (CoSENT on every dim, then the fold)",
        {"sts": [(6, 384)], "scifact": [(6, 384)]},
    ),
    "ours": ("this project's ladder, `train --layers 2,3,4,6`", POINTS),
    "ours_distill": ("ladder + KL alignment to the full model (`--distill 1`)", POINTS),
    "st_2d": ("ST Matryoshka2dLoss(CoSENTLoss), its defaults", POINTS),
    "anchor_3": (
        "MiniLM cut to 3 layers, then the 1D recipe alone",
        {"sts": [(3, 128)], "scifact": [(3, 128)]},
    ),
    "anchor_2": (
        "MiniLM cut to 2 layers, then the 1D recipe alone",
        {"sts": [(2, 64)], "scifact": [(2, 64)]},
    ),
}


def train_row(row: str, epochs: float, out: Path) -> float | None:
    """Train ``row``'s model into ``out``; returns seconds per step (None: nothing trained)."""
    from matryoshka.datasets import data_path
    from matryoshka.train.loop import TrainConfig, train

    data = str(data_path("stsb", "sts-train.csv"))
    common = {"data": data, "out": str(out), "epochs": epochs, "batch_size": BATCH, "lr": LR, "seed": SEED,
              "evaluate": False}  # fmt: skip
    if row == "base":
        return None
    if row == "st_2d":
        return train_st_2d(data, epochs, out)
    if row.startswith("anchor_"):
        common["model"] = str(cut_copy(int(row.split("_")[1]), out.with_name(f"{out.name}-base")))
    if row in ("ours", "ours_distill"):
        common["layers"] = LADDER
        common["distill"] = 1.0 if row == "ours_distill" else 0.0
    return train(TrainConfig(**common))["seconds_per_step"]


def cut_copy(layers: int, target: Path) -> Path:
    """Base MiniLM with only its first ``layers`` layers, saved as a model directory."""
    from sentence_transformers import SentenceTransformer

    from matryoshka.layers import keep_layers
    from matryoshka.models import resolve_model

    st = SentenceTransformer(str(resolve_model().path), device="cpu", local_files_only=True)
    keep_layers(st, layers).save(str(target))
    return target


def train_st_2d(data: str, epochs: float, out: Path) -> float:
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, Matryoshka2dLoss

    from matryoshka.train.data import load_training_data
    from train_common import train_st_baseline

    dataset = load_training_data(data).to_dataset()
    model, seconds = train_st_baseline(
        lambda m: Matryoshka2dLoss(m, CoSENTLoss(m), list(DIMS)), dataset, epochs, BATCH, LR, False
    )
    model.save(str(out))
    return seconds


def score_row(model: Path | None, points: dict) -> dict:
    """STS-B / SciFact score at each (layers, dim) point, through Encoder(model, layers=n)."""
    from matryoshka import Encoder
    from matryoshka.datasets import data_path
    from matryoshka.eval.tasks import BeirTask, StsTask

    tasks = {"sts": StsTask("test"), "scifact": BeirTask(data_path("scifact"))}
    scores: dict[str, dict[str, float]] = {}
    for name, task in tasks.items():
        for layers, dim in points.get(name, []):
            encoder = Encoder(model, layers=layers, backend="onnx", threads=1, show_progress=False)
            value = task.score(task.embed(encoder), dim)[task.metric]
            scores.setdefault(name, {})[f"{layers}x{dim}"] = round(float(value), 2)
    return scores


def worker(row: str, epochs: float, result_file: Path, smoke: bool) -> None:
    import torch

    from matryoshka.cache import cache_dir

    torch.set_num_threads(1)
    out = cache_dir() / "train_2d" / row
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds_per_step = train_row(row, epochs, out)
    points = {"sts": ROWS[row][1]["sts"]} if smoke else ROWS[row][1]
    scores = score_row(out if seconds_per_step is not None else None, points)
    wall = round(time.perf_counter() - started, 1)
    result_file.write_text(json.dumps({"scores": scores, "seconds_per_step": seconds_per_step, "wall": wall}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default=",".join(ROWS))
    parser.add_argument("--fresh", action="store_true", help="retrain rows with stored results")
    parser.add_argument("--smoke", action="store_true", help="1%% of an epoch, STS-B only, no docs section")
    parser.add_argument("--worker")
    parser.add_argument("--result-file", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.result_file, args.smoke)
        return
    if args.smoke:
        args.epochs, args.fresh = 0.01, True
    store = RowStore("train_2d_smoke" if args.smoke else "train_2d", args.fresh)
    code = code_hash("train_2d.py", uses_training_code=True)
    keys = {row: code if row == "base" else f"{code}-{args.epochs}" for row in ROWS}  # base: no training
    todo = [row for row in args.only.split(",") if store.get(row, keys[row]) is None]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        running: list[tuple[str, subprocess.Popen, Path]] = []
        while todo or running:
            while todo and len(running) < args.jobs:
                row = todo.pop(0)
                result = Path(scratch) / f"{row}.json"
                command = [sys.executable, __file__, "--worker", row, "--epochs", str(args.epochs)]
                command += ["--smoke"] if args.smoke else []
                running.append((row, subprocess.Popen([*command, "--result-file", str(result)]), result))
                print(f"[{row}] started", flush=True)
            time.sleep(5)
            for entry in [e for e in running if e[1].poll() is not None]:
                running.remove(entry)
                row, process, result = entry
                if process.returncode != 0:
                    raise SystemExit(f"[{row}] failed with exit code {process.returncode}")
                store.put(row, keys[row], json.loads(result.read_text()))
                print(f"[{row}] done: {store.rows[row]}", flush=True)
                if not args.smoke:
                    write(store, keys, args.epochs, time.perf_counter() - started)


def write(store: RowStore, keys: dict, epochs: float, wall_s: float) -> None:
    from report import hardware, markdown_table, write_section

    done = {row: store.get(row, key) for row, key in keys.items() if store.get(row, key)}
    columns = [("sts", p) for p in POINTS["sts"]] + [("scifact", p) for p in POINTS["scifact"]]
    headers = ["row", *[f"{'STS-B' if t == 'sts' else 'SciFact'} {n}L x {d}" for t, (n, d) in columns]]
    headers += ["s/step", "wall s"]
    body = []
    for row, result in done.items():
        cells = [result["scores"].get(t, {}).get(f"{n}x{d}", "") for t, (n, d) in columns]
        step = result["seconds_per_step"]
        body.append([ROWS[row][0], *cells, f"{step:.3f}" if step else "-", result["wall"]])
    markdown = "\n".join(
        [
            "## 2D Matryoshka: fewer layers as well as fewer dims (STS-B training)",
            "",
            f"All of sts-train (5749 scored pairs, CoSENT), {epochs:g} epochs, batch {BATCH}, lr {LR:g}, "
            f"seed {SEED} for every trained row; columns are (layers, dim) points scored through "
            "`Encoder(model, layers=n)`: STS-B test Spearman x100 (in domain) and SciFact test "
            "nDCG@10 x100 (out of domain). Anchors are MiniLM cut to that depth and trained alone with "
            "the 1D recipe, scored at their own point only.",
            "",
            markdown_table(headers, body),
            "",
            f"{hardware()}; one torch and one ONNX thread per row, up to 2 rows at once; wall time of "
            f"this run {wall_s / 60:.1f} min (rows stored from earlier runs of the same code keep their "
            f"own wall time). Results cache: {RESULTS_DIR.name}/train_2d.json.",
        ]
    )
    print(markdown)
    write_section("train_2d", markdown)


if __name__ == "__main__":
    main()
