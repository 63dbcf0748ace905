"""`matryoshka eval`: quality, retention and cost of every dim on STS-B or a BEIR set, beside baselines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from matryoshka.cli._common import parse_dims, user_errors
from matryoshka.encoder import Encoder
from matryoshka.eval.report import print_table, to_json, write_report
from matryoshka.eval.retention import evaluate
from matryoshka.eval.tasks import parse_task
from matryoshka.models import DEFAULT_MODEL

DEFAULT_DIMS = "384,256,128,64,32,16,8"
DEMO_OUT = Path("out") / "demo"
DEMO_TASKS = ("stsb", "beir:scifact")


def run_eval(
    models: list[str | None],
    task_spec: str,
    dims: list[int],
    baselines: list[str],
    out: Path | None,
    console: Console,
    layers: int | None = None,
) -> dict:
    """Evaluate, write the report files and return the report (shared by the verb and the demo)."""
    encoders = [Encoder(model, show_progress=True, layers=layers) for model in models]
    for encoder in encoders:  # fail on a bad dim before reading data or encoding anything
        for dim in dims:
            encoder.check_dim(dim)
    task = parse_task(task_spec)
    base = next((e for e in encoders if e.info.name == DEFAULT_MODEL), None)
    report = evaluate(encoders, task, dims, baselines, base_encoder=base)
    if out is not None:
        written = write_report(report, out)
        console.print(f"wrote {', '.join(path.name for path in written)} to {out}", style="dim")
    return report


@user_errors
def eval_command(
    model: list[str] = typer.Option(
        None, "--model", "-m", help="Model name or directory; repeat to compare models in one report."
    ),
    compare: list[str] = typer.Option(None, "--compare", help="More models to put in the same report."),
    task: str = typer.Option("stsb", "--task", "-t", help="stsb, stsb:SPLIT or beir:DIR (beir:scifact)."),
    dims: str = typer.Option(DEFAULT_DIMS, "--dims", "-d", help="Comma-separated prefix dims."),
    baselines: str = typer.Option(
        "truncate,pca", "--baselines", "-b", help="Comma-separated: truncate, pca ('' for none)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for report.json, report.md and plots."),
    layers: int | None = typer.Option(None, "--layers", help="Run the models' first N transformer layers."),
    as_json: bool = typer.Option(False, "--json", help="Print the report JSON to stdout."),
) -> None:
    """Quality, retention and cost of each dim (with baselines), as a table, report files and plots."""
    models: list[str | None] = [*(model or [None]), *(compare or [])]
    console = Console(stderr=as_json)
    report = run_eval(
        models,
        task,
        parse_dims(dims),
        [b.strip() for b in baselines.split(",") if b.strip()],
        out,
        console,
        layers,
    )
    if as_json:
        typer.echo(to_json(report))
    else:
        print_table(report, console)


def demo_eval(console: Console, out_root: Path = DEMO_OUT) -> None:
    """The demo's evaluation part: the default model's retention table and plots on STS-B and SciFact."""
    for task_spec in DEMO_TASKS:
        out = out_root / task_spec.replace(":", "-")
        report = run_eval([None], task_spec, parse_dims(DEFAULT_DIMS), ["pca"], out, console)
        print_table(report, console)
