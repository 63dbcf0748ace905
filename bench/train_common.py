"""Shared by bench/train_stsb.py and bench/train_scifact.py: row caching, the sentence-transformers
baselines on the same trainer settings, PCA on top of a model, and the results table.

A row's stored result is reused when its settings and the code it depends on (src/matryoshka/train,
this file and the calling script) are unchanged; quality figures are seeded and repeatable, timings
are reported only for rows trained in this run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The machine is shared: one torch thread per process measured 3-5x faster per step than two under load.
TORCH_THREADS = int(os.environ.get("BENCH_TORCH_THREADS", "1"))

from report import hardware, markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
DIMS = (384, 256, 128, 64, 32, 16, 8)
SEED = 12


def parse_args(description: str, rows: Sequence[str]) -> argparse.Namespace:
    import torch

    torch.set_num_threads(TORCH_THREADS)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="1 epoch instead of the full set-up")
    parser.add_argument("--only", default="", help=f"comma-separated rows to run: {', '.join(rows)}")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N examples only")
    parser.add_argument("--epochs", type=float, default=None, help="override the epochs (labelled)")
    parser.add_argument("--fresh", action="store_true", help="ignore stored results")
    args = parser.parse_args()
    args.rows = [r for r in args.only.split(",") if r] or list(rows)
    unknown = set(args.rows) - set(rows)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}: use {', '.join(rows)}")
    return args


def code_hash(script: str, uses_training_code: bool) -> str:
    """Hash of the code a row depends on: the bench files and data reader, plus the training package
    for rows trained with this project's loop."""
    digest = hashlib.sha256()
    train_dir = ROOT / "src" / "matryoshka" / "train"
    files = [
        *(sorted(train_dir.glob("*.py")) if uses_training_code else [train_dir / "data.py"]),
        ROOT / "src" / "matryoshka" / "dims.py",
        ROOT / "bench" / "train_common.py",
        ROOT / "bench" / script,
    ]
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RowStore:
    """Results of rows keyed by name, reused when ``key`` (settings + code hash) matches."""

    def __init__(self, name: str, fresh: bool) -> None:
        self.path = RESULTS_DIR / f"{name}.json"
        self.rows = {} if fresh or not self.path.exists() else json.loads(self.path.read_text())

    def get(self, row: str, key: str) -> dict | None:
        stored = self.rows.get(row)
        return stored if stored and stored.get("key") == key else None

    def put(self, row: str, key: str, result: dict) -> None:
        self.rows[row] = {**result, "key": key}
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n")


def row_key(row: str, settings: dict, script: str) -> str:
    code = code_hash(script, uses_training_code=row.startswith("recipe"))
    return hashlib.sha256(json.dumps({**settings, "code": code}, sort_keys=True).encode()).hexdigest()[:16]


def stored_row(store: RowStore, row: str, settings: dict, script: str) -> dict | None:
    """The stored result of ``row`` if its settings and code are unchanged (shown without timings)."""
    stored = store.get(row, row_key(row, settings, script))
    return {**stored, "cached": True} if stored else None


def run_row(store: RowStore, row: str, settings: dict, script: str, compute: Callable[[], dict]) -> dict:
    key = row_key(row, settings, script)
    if (stored := store.get(row, key)) is not None:
        print(f"[{row}] reusing stored result", flush=True)
        return {**stored, "cached": True}
    print(f"[{row}] running", flush=True)
    started = time.perf_counter()
    result = compute()
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    store.put(row, key, result)
    return {**result, "cached": False}


def trainer_args(output_dir: str, epochs: float, batch_size: int, lr: float, no_duplicates: bool):
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=0.1,
        seed=SEED,
        data_seed=SEED,
        logging_steps=50,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        batch_sampler="no_duplicates" if no_duplicates else "batch_sampler",
    )


def train_st_baseline(
    make_loss: Callable, dataset, epochs: float, batch_size: int, lr: float, no_duplicates: bool
):
    """Fine-tune base MiniLM with a stock sentence-transformers loss; returns (model, seconds per step)."""
    import tempfile

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from transformers import set_seed

    from matryoshka.models import resolve_model

    set_seed(SEED)
    model = SentenceTransformer(str(resolve_model().path), device="cpu", local_files_only=True)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=trainer_args(scratch, epochs, batch_size, lr, no_duplicates),
            train_dataset=dataset,
            loss=make_loss(model),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    return model, seconds / max(trainer.state.global_step, 1)


def recipe_config(
    data: str, data_format: str, args, epochs: int, batch_size: int, lr: float, overrides: dict
) -> dict:
    """TrainConfig settings of one recipe row: the recipe defaults, the row's overrides, and (in --quick
    runs) four quarter-epoch phases for schedules other than `all`."""
    config = {
        "data": data,
        "format": data_format,
        "limit": args.limit,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        **overrides,
    }
    if args.quick and overrides.get("schedule", "all") != "all":
        config["phases"] = 4  # one epoch: four phases of a quarter epoch each
    return config


def train_recipe(config_kwargs: dict):
    """Train with this project's loop; returns (model, seconds per step)."""
    import tempfile

    from sentence_transformers import SentenceTransformer

    from matryoshka.train.loop import TrainConfig, train

    with tempfile.TemporaryDirectory() as scratch:
        report = train(TrainConfig(out=scratch, evaluate=False, **config_kwargs))
        model = SentenceTransformer(scratch, device="cpu", local_files_only=True)
    return model, report["seconds_per_step"]


def encode(model, texts: Sequence[str]) -> np.ndarray:
    from matryoshka.dims import truncate

    vectors = model.encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    return truncate(np.asarray(vectors, dtype=np.float32))


def table(rows: list[tuple[str, dict]], dims: Sequence[int] = DIMS) -> str:
    headers = ["row", *[str(d) for d in dims], "s/step (this run)", "wall s"]
    body = []
    for label, result in rows:
        step = result.get("seconds_per_step")
        timing = "stored" if result.get("cached") else (f"{step:.3f}" if step else "-")
        body.append(
            [
                label,
                *[float(result["scores"][str(d)]) for d in dims],
                timing,
                result.get("wall_seconds", "-") if not result.get("cached") else "stored",
            ]
        )
    return markdown_table(headers, body)


def setup_line(args: argparse.Namespace, epochs: float, batch_size: int, lr: float, examples: int) -> str:
    reduced = []
    if args.quick:
        reduced.append("--quick")
    if args.limit:
        reduced.append(f"first {examples} training examples only")
    if args.epochs:
        reduced.append(f"{epochs:g} epochs")
    label = f"REDUCED RUN ({'; '.join(reduced)}), not the issue's full set-up" if reduced else "full set-up"
    return (
        f"**{label}**: {examples} training examples, {epochs:g} epoch(s), batch {batch_size}, lr {lr:g}, "
        f"warm-up ratio 0.1, seed {SEED}; {hardware()}, CPU only ({TORCH_THREADS} torch thread), "
        "machine shared with other jobs."
    )
