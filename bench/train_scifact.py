"""SciFact: this project's Matryoshka recipe (InfoNCE) against sentence-transformers'
MatryoshkaLoss(MultipleNegativesRankingLoss), plain MNRL, PCA on top of both (fitted on the corpus),
and base MiniLM; test nDCG@10 x100 per dim.

    PYTHONPATH=src .venv/bin/python bench/train_scifact.py [--quick] [--only recipe,st_matryoshka] [--limit N]

Full set-up (the issue's): SciFact train query-to-abstract pairs, 3 epochs, batch 32, lr 2e-5, warm-up
ratio 0.1, no duplicate texts in a batch, seed 12.
"""

from __future__ import annotations

import time

from matryoshka.datasets import data_path, load_beir
from matryoshka.eval.metrics import ndcg_at_k, run_from_search
from matryoshka.eval.retention import fit_pca
from matryoshka.index.search import exact_search
from matryoshka.train.data import read_beir_pairs
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

SCRIPT = "train_scifact.py"
BATCH, LR, EPOCHS = 32, 2e-5, 3
DEPTH = 10
RECIPE: dict = {}  # TrainConfig's defaults are the recipe: InfoNCE at the full dim, then the corpus adapter
VARIANTS = {
    "recipe_no_adapter": {"adapter": False},
    "recipe_multi_scale": {"multi_scale": True},
    "recipe_multi_scale_distill": {"multi_scale": True, "distill": 1.0},
    "recipe_pca_head": {"projection_init": "pca"},
    "recipe_symmetric": {"symmetric": True},
    "recipe_multi_scale_progressive": {"multi_scale": True, "schedule": "progressive"},
    "recipe_multi_scale_sequential": {"multi_scale": True, "schedule": "sequential"},
    "recipe_multi_scale_full_heavy": {"multi_scale": True, "weights": "full-heavy"},
}
ROWS = ["base", "st_matryoshka", "st_mnrl", "recipe", *VARIANTS]
LABELS = {
    "base": "base MiniLM, raw truncation",
    "st_matryoshka": "ST MatryoshkaLoss(MNRL)",
    "st_mnrl": "plain MNRL",
    "recipe": "this project's recipe (full-dim InfoNCE, then a corpus adapter folded in)",
}


def ndcg_per_dim(queries, docs, beir) -> dict[str, float]:
    scores = {}
    for dim in DIMS:
        found, rows = exact_search(queries, docs, DEPTH, dim)
        run = run_from_search(beir.query_ids, beir.doc_ids, found, rows)
        scores[str(dim)] = 100 * ndcg_at_k(run, beir.qrels, DEPTH)
    return scores


def evaluate(model, beir, with_pca: bool = False) -> dict:
    queries, docs = encode(model, beir.query_texts), encode(model, beir.doc_texts)
    result = {"scores": ndcg_per_dim(queries, docs, beir)}
    if with_pca:
        pca = fit_pca(docs)
        result["pca_scores"] = ndcg_per_dim(pca(queries), pca(docs), beir)
    return result


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], ROWS)
    epochs = args.epochs or (1 if args.quick else EPOCHS)
    directory = data_path("scifact")
    train_data = read_beir_pairs(directory).head(args.limit)
    beir = load_beir(directory, "test")
    store = RowStore("train_scifact", args.fresh)
    settings = {"epochs": epochs, "limit": args.limit, "batch": BATCH, "lr": LR}
    started = time.perf_counter()
    results: dict[str, dict] = {}
    from sentence_transformers.sentence_transformer import losses

    def baseline(make_loss):
        def compute():
            model, per_step = train_st_baseline(make_loss, train_data.to_dataset(), epochs, BATCH, LR, True)
            return {**evaluate(model, beir, with_pca=True), "seconds_per_step": per_step}

        return compute

    def recipe(overrides: dict):
        def compute():
            config = recipe_config(str(directory), "beir", args, epochs, BATCH, LR, {**RECIPE, **overrides})
            model, per_step = train_recipe(config)  # the saved model: the adapter is one of its layers
            return {**evaluate(model, beir), "seconds_per_step": per_step}

        return compute

    computes = {
        "base": lambda: {"scores": ndcg_per_dim(*_base_vectors(beir), beir)},
        "st_matryoshka": baseline(
            lambda m: losses.MatryoshkaLoss(m, losses.MultipleNegativesRankingLoss(m), list(DIMS))
        ),
        "st_mnrl": baseline(lambda m: losses.MultipleNegativesRankingLoss(m)),
        "recipe": recipe({}),
        **{name: recipe(overrides) for name, overrides in VARIANTS.items()},
    }
    for row in ROWS:
        row_settings = {**settings, "row": row, **VARIANTS.get(row, {})}
        if row == "base":
            row_settings = {"row": row}
        if row in args.rows:
            results[row] = run_row(store, row, row_settings, SCRIPT, computes[row])
        elif stored := stored_row(store, row, row_settings, SCRIPT):
            results[row] = stored  # not asked for, but stored with these settings and code
    write(results, args, epochs, len(train_data), time.perf_counter() - started)


def _base_vectors(beir):
    """Base MiniLM's vectors from the shared embedding cache (encoded once for every helper)."""
    from matryoshka import Encoder
    from matryoshka.cache import cached_encode_full

    encoder = Encoder(device="cpu")
    return cached_encode_full(encoder, beir.query_texts), cached_encode_full(encoder, beir.doc_texts)


TARGETS = {"384": 67.8, "64": 60.43, "32": 50.39, "16": 35.80, "8": 19.46}


def write(results: dict, args, epochs: float, examples: int, seconds: float) -> None:
    from report import write_section

    rows = []
    for row, result in results.items():
        rows.append((LABELS.get(row, f"recipe, {row.removeprefix('recipe_')}"), result))
        if "pca_scores" in result:
            rows.append((LABELS[row] + " + PCA (fit on corpus)", {**result, "scores": result["pca_scores"]}))
    checked = ["recipe"] if "recipe" in results else []
    lines = ["Targets for the recipe (issue #12, full set-up): " + ("" if checked else "no recipe row yet.")]
    for row in checked:
        verdicts = [
            f"{dim}: {results[row]['scores'][dim]:.2f} vs >= {target}"
            f" ({'met' if results[row]['scores'][dim] >= target else 'NOT met'})"
            for dim, target in TARGETS.items()
        ]
        lines.append(f"- {LABELS[row]}: " + "; ".join(verdicts))
    markdown = "\n\n".join(
        [
            "## Training on SciFact: test nDCG@10 x100 per dim",
            setup_line(args, epochs, BATCH, LR, examples)
            if set(results) - {"base"}
            else "Only the untrained base row has been run; no training row is in this table yet.",
            table(rows),
            "\n".join(lines),
            f"Wall time of this run: {seconds:.0f} s.",
        ]
    )
    print(markdown)
    write_section("train_scifact", markdown)


if __name__ == "__main__":
    main()
