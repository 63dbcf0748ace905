"""STS-B: this project's Matryoshka recipe against sentence-transformers' MatryoshkaLoss(CoSENTLoss),
plain CoSENTLoss, PCA on top of both, and base MiniLM; test Spearman (cosine, x100) per dim.

    PYTHONPATH=src .venv/bin/python bench/train_stsb.py [--quick] [--only recipe,st_matryoshka] [--limit N]

Full set-up (the issue's): all of sts-train, 4 epochs, batch 16, lr 2e-5, warm-up ratio 0.1, seed 12.
"""

from __future__ import annotations

import time

import numpy as np

from matryoshka.datasets import data_path, load_stsb
from matryoshka.dims import truncate
from matryoshka.eval.metrics import spearman
from matryoshka.eval.retention import fit_pca
from matryoshka.train.data import read_sts
from train_common import (
    DIMS,
    RowStore,
    encode,
    parse_args,
    recipe_config,
    run_row,
    setup_line,
    stored_row,
    table,
    train_recipe,
    train_st_baseline,
)

SCRIPT = "train_stsb.py"
BATCH, LR, EPOCHS = 16, 2e-5, 4
RECIPE: dict = {}  # TrainConfig's defaults are the recipe: CoSENT on every dim (sequential), then the adapter
VARIANTS = {
    "recipe_no_adapter": {"adapter": False},
    "recipe_full_dim_only": {"multi_scale": False},
    "recipe_distill": {"distill": 1.0},
    "recipe_pca_head": {"projection_init": "pca"},
    "recipe_all": {"schedule": "all"},
    "recipe_progressive": {"schedule": "progressive"},
    "recipe_decreasing": {"weights": "decreasing"},
    "recipe_importance": {"weights": "importance"},
    "recipe_full_heavy": {"weights": "full-heavy"},
    "recipe_dims_per_step_4": {"dims_per_step": 4},
}
ROWS = ["base", "st_matryoshka", "st_cosent", "recipe", *VARIANTS]
LABELS = {
    "base": "(a) base MiniLM, raw truncation",
    "st_matryoshka": "(c) ST MatryoshkaLoss(CoSENTLoss)",
    "st_cosent": "(d) plain CoSENTLoss",
    "recipe": "(e) this project's recipe (CoSENT on every dim, sequential, then the adapter folded in)",
}


def scores_of(first: np.ndarray, second: np.ndarray, gold: list[float]) -> dict[str, float]:
    return {str(d): 100 * spearman((truncate(first, d) * truncate(second, d)).sum(-1), gold) for d in DIMS}


def evaluate(model, test, train_texts: list[str] | None = None) -> dict:
    first, second = encode(model, test.first), encode(model, test.second)
    result = {"scores": scores_of(first, second, test.scores)}
    if train_texts is not None:
        pca = fit_pca(encode(model, train_texts))
        result["pca_scores"] = scores_of(pca(first), pca(second), test.scores)
    return result


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], ROWS)
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    train_file = data_path("stsb", "sts-train.csv")
    train_data = read_sts(train_file).head(args.limit)
    train_texts = train_data.texts()
    test = load_stsb("test")
    store = RowStore("train_stsb", args.fresh)
    settings = {"epochs": epochs, "limit": args.limit, "batch": BATCH, "lr": LR}
    started = time.perf_counter()
    results: dict[str, dict] = {}

    def baseline(make_loss):
        def compute():
            model, per_step = train_st_baseline(make_loss, train_data.to_dataset(), epochs, BATCH, LR, False)
            return {**evaluate(model, test, train_texts), "seconds_per_step": per_step}

        return compute

    def recipe(overrides: dict):
        def compute():
            config = recipe_config(str(train_file), "stsb", args, epochs, BATCH, LR, {**RECIPE, **overrides})
            model, per_step = train_recipe(config)  # the saved model: the adapter is one of its layers
            return {**evaluate(model, test), "seconds_per_step": per_step}

        return compute

    from sentence_transformers.sentence_transformer import losses

    computes = {
        "base": lambda: evaluate(_base_model(), test),
        "st_matryoshka": baseline(lambda m: losses.MatryoshkaLoss(m, losses.CoSENTLoss(m), list(DIMS))),
        "st_cosent": baseline(lambda m: losses.CoSENTLoss(m)),
        "recipe": recipe({}),
        **{name: recipe(overrides) for name, overrides in VARIANTS.items()},
    }
    for row in ROWS:
        row_settings = {**settings, "row": row, **VARIANTS.get(row, {})} if row != "base" else {"row": row}
        if row in args.rows:
            results[row] = run_row(store, row, row_settings, SCRIPT, computes[row])
        elif stored := stored_row(store, row, row_settings, SCRIPT):
            results[row] = stored  # not asked for, but stored with these settings and code
    write(results, args, epochs, len(train_data), time.perf_counter() - started)


def _base_model():
    from sentence_transformers import SentenceTransformer

    from matryoshka.models import resolve_model

    return SentenceTransformer(str(resolve_model().path), device="cpu", local_files_only=True)


def write(results: dict, args, epochs: float, examples: int, seconds: float) -> None:
    from report import write_section

    rows = []
    for row, result in results.items():
        rows.append((LABELS.get(row, f"(e) recipe, {row.removeprefix('recipe_')}"), result))
        if "pca_scores" in result:
            rows.append(
                (LABELS[row] + " + PCA (fit on train sentences)", {**result, "scores": result["pca_scores"]})
            )
    markdown = "\n\n".join(
        [
            "## Training on STS-B: test Spearman (cosine, x100) per dim",
            setup_line(args, epochs, BATCH, LR, examples),
            table(rows),
            _targets(results),
            f"Wall time of this run: {seconds:.0f} s.",
        ]
    )
    print(markdown)
    write_section("train_stsb", markdown)


def _targets(results: dict) -> str:
    if "recipe" not in results or "st_matryoshka" not in results:
        return "Targets: not checked (needs rows recipe and st_matryoshka in one table)."
    ours, theirs = results["recipe"]["scores"], results["st_matryoshka"]["scores"]
    lines = ["Targets (issue #12), on this run:"]
    for d in (32, 16, 8):
        gap = ours[str(d)] - theirs[str(d)]
        lines.append(
            f"- {d} dims: (e) - (c) = {gap:+.2f} (target >= +0.5): {'met' if gap >= 0.5 else 'NOT met'}"
        )
    gap = ours["384"] - theirs["384"]
    lines.append(
        f"- 384 dims: (e) - (c) = {gap:+.2f} (target >= -0.2): {'met' if gap >= -0.2 else 'NOT met'}"
    )
    if "st_cosent" in results:
        ratio = ours["64"] / results["st_cosent"]["scores"]["384"] * 100
        lines.append(
            f"- (e)@64 / (d)@384 = {ratio:.2f}% (target >= 98.5%): {'met' if ratio >= 98.5 else 'NOT met'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
