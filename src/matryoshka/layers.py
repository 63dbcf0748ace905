"""The second Matryoshka axis: run only a model's first N transformer layers.

A 2D-trained model (``matryoshka train --layers``) pools a good embedding from each listed layer, so a
small budget saves encoding time as well as storage. Every module that shortens a model calls
:func:`keep_layers`; every module that accepts a layer count checks it with :func:`validate_layers`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matryoshka.errors import MatryoshkaError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def depth_of(path: Path) -> int | None:
    """Transformer layers of the sentence-transformers directory ``path`` (its first module's config)."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        config = json.loads((path / modules[0].get("path", "") / "config.json").read_text())
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    return int(layers) if layers else None


def validate_layers(layers: object, depth: int | None, supported: Sequence[int] | None = None) -> int | None:
    """``layers`` as an int (``None``: the whole model), or a :class:`MatryoshkaError` saying what is
    allowed: 1..depth, and one of the layer counts the model was trained for where it records them."""
    if layers is None:
        return None
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise MatryoshkaError(f"layers must be an integer, got {layers!r}")
    if depth is None:
        raise MatryoshkaError("this model does not say how many transformer layers it has")
    if not 1 <= layers <= depth:
        raise MatryoshkaError(f"layers {layers} is out of range: the model has 1 to {depth}")
    if supported and layers not in supported:
        allowed = ", ".join(str(n) for n in sorted(supported))
        raise MatryoshkaError(f"layers {layers} is not one this model was trained for: {allowed}")
    return layers


def layer_stack(st: SentenceTransformer):
    """The transformer's list of layers: the module list as long as its config's layer count."""
    import torch

    transformer = st[0].auto_model
    depth = transformer.config.num_hidden_layers
    for module in transformer.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth:
            return module
    raise MatryoshkaError(f"cannot find the {depth} transformer layers of {type(transformer).__name__}")


def keep_layers(st: SentenceTransformer, layers: int | None) -> SentenceTransformer:
    """``st`` cut to its first ``layers`` transformer layers, in place (``None``: unchanged); the
    modules after the transformer (pooling, heads, normalisation) then read that layer's states."""
    if layers is None:
        return st
    stack = layer_stack(st)
    if layers < len(stack):
        del stack[layers:]
        st[0].auto_model.config.num_hidden_layers = layers
    return st
