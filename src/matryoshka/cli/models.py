"""`matryoshka models`: the models the toolkit can load, with their dims."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from matryoshka.cli._common import user_errors
from matryoshka.models import list_models


@user_errors
def models() -> None:
    """List known models (built-in and under ./models or $MATRYOSHKA_MODELS) with their dims."""
    table = Table("name", "full dim", "supported dims", "path")
    for info in list_models():
        table.add_row(info.name, str(info.full_dim), info.dims_label, str(info.path))
    Console().print(table)
