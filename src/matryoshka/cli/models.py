"""`matryoshka models`: the models the toolkit can load, with their dims."""

from __future__ import annotations

from rich.console import Console
from rich.table import Column, Table

from matryoshka.cli._common import user_errors
from matryoshka.encoder import default_device
from matryoshka.models import list_models
from matryoshka.onnx_backend import default_backend


@user_errors
def models() -> None:
    """List known models (built-in and under ./models or $MATRYOSHKA_MODELS), their dims, layers and the
    backend `encode`, `index build` and `serve` run them with by default."""
    backend = default_backend(default_device())
    # Names never wrap (they are what users type); a long path folds onto more lines instead.
    columns = [Column("name", no_wrap=True), "full dim", "supported dims", "layers", "backend"]
    table = Table(*columns, Column("path", overflow="fold"))
    for info in list_models():
        layers = ",".join(map(str, info.supported_layers or ())) or f"any 1..{info.depth or '?'}"
        table.add_row(info.name, str(info.full_dim), info.dims_label, layers, backend, str(info.path))
    Console().print(table)
