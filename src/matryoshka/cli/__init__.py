"""The `matryoshka` command: one module per verb, registered here."""

from __future__ import annotations

import typer

from matryoshka.cli.adapt import adapt
from matryoshka.cli.demo import demo
from matryoshka.cli.encode import encode
from matryoshka.cli.eval import eval_command
from matryoshka.cli.index import index_app
from matryoshka.cli.models import models
from matryoshka.cli.plan import plan
from matryoshka.cli.search import search
from matryoshka.cli.serve import serve
from matryoshka.cli.train import train

app = typer.Typer(
    name="matryoshka",
    help="Matryoshka (nested) text embeddings at any dimension.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(encode)
app.command()(models)
app.command()(demo)
app.command(name="eval")(eval_command)
app.command()(search)
index_app.command()(plan)
app.add_typer(index_app, name="index")
app.command()(serve)
app.add_typer(adapt, name="adapt")
app.command()(train)


def main() -> None:
    app()
