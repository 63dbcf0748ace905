"""`matryoshka train`: fine-tune an encoder so every listed prefix is a good embedding."""

from __future__ import annotations

from pathlib import Path

import typer

from matryoshka.cli._common import parse_dims, user_errors
from matryoshka.errors import MatryoshkaError


def parse_weights(text: str) -> str | tuple[float, ...]:
    """A weighting scheme name, or comma-separated numbers (one per dim, largest dim first)."""
    if text in ("uniform", "decreasing", "importance", "full-heavy"):
        return text
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise MatryoshkaError(
            f"weights must be uniform, decreasing, importance, full-heavy or numbers, got {text!r}"
        ) from None


@user_errors
def train(
    data: Path = typer.Option(..., "--data", help="Training data: a file or a BEIR directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the trained model and its report."),
    format: str | None = typer.Option(None, "--format", help="stsb, pairs or beir (default: detected)."),
    loss: str | None = typer.Option(None, "--loss", help="infonce or cosent (default: from the data)."),
    dims: str = typer.Option("384,256,128,64,32,16,8", "--dims", help="Prefix dims the model serves."),
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="2D: layer counts to train too (e.g. 2,3,4,6), the largest with the largest dims; no fold.",
    ),
    multi_scale: bool | None = typer.Option(
        None,
        "--multi-scale/--full-dim-only",
        help="Loss on every dim, or on the full dim only (default: every dim for cosent, full for infonce).",
    ),
    adapter: bool = typer.Option(
        True, "--adapter/--no-adapter", help="Fit a linear adapter on the training texts, fold it in."
    ),
    weights: str = typer.Option(
        "uniform", "--weights", help="uniform, decreasing, importance, full-heavy or a list."
    ),
    schedule: str = typer.Option("sequential", "--schedule", help="sequential, all or progressive."),
    distill: float = typer.Option(0.0, "--distill", min=0, help="Self-distillation weight (0: off)."),
    projection: int | None = typer.Option(None, "--projection", help="Output size of a linear head."),
    projection_init: str = typer.Option(
        "identity", "--projection-init", help="identity (no head unless --projection), or pca."
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="Base model name or directory."),
    epochs: float = typer.Option(1.0, "--epochs"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-5, "--lr"),
    temperature: float = typer.Option(0.05, "--temperature", help="InfoNCE temperature (CoSENT: 1/scale)."),
    symmetric: bool = typer.Option(False, "--symmetric", help="Add InfoNCE's positive-to-anchor term."),
    dims_per_step: int | None = typer.Option(None, "--dims-per-step", help="Random dims per step."),
    dev: Path | None = typer.Option(None, "--dev", help="Dev data for per-dim scores each epoch."),
    max_seq_length: int | None = typer.Option(None, "--max-seq-length"),
    limit: int | None = typer.Option(None, "--limit", help="Train on the first N examples only."),
    save_steps: int | None = typer.Option(None, "--save-steps", help="Checkpoint every N steps."),
    seed: int = typer.Option(12, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --out."),
) -> None:
    """Train a Matryoshka model (on sentence-transformers' trainer); writes the model and report.json/png."""
    from matryoshka.train.loop import TrainConfig
    from matryoshka.train.loop import train as run_training

    config = TrainConfig(
        data=str(data),
        out=str(out),
        format=format,
        loss=loss,
        dims=tuple(parse_dims(dims)),
        layers=tuple(parse_dims(layers)) if layers else None,
        multi_scale=multi_scale,
        adapter=adapter,
        weights=parse_weights(weights),
        schedule=schedule,
        distill=distill,
        projection=projection,
        projection_init=projection_init,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        temperature=temperature,
        symmetric=symmetric,
        dims_per_step=dims_per_step,
        dev=str(dev) if dev else None,
        max_seq_length=max_seq_length,
        limit=limit,
        save_steps=save_steps,
        seed=seed,
        resume=resume,
    )
    report = run_training(config)
    if report:
        dev_scores = ", ".join(f"{k.split('_')[-1]}: {v:.2f}" for k, v in report["final_dev"].items())
        typer.echo(f"trained {report['steps']} steps in {report['train_seconds']:.0f} s -> {out}", err=True)
        if dev_scores:
            typer.echo(f"dev per dim: {dev_scores}", err=True)
