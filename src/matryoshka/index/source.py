"""The model behind an index's vectors, for both backends: what a new index records of it (its
reference and fingerprint), and the check that a model encoding text queries is the one that made them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from matryoshka.errors import DimensionError, MatryoshkaError

if TYPE_CHECKING:
    from matryoshka.encoder import Encoder


def encoder_for(model: str | os.PathLike | Encoder, layers: int | str | None = None) -> Encoder:
    """``model`` if it is an encoder already, else the encoder loaded from that name or path (cut to
    ``layers``, as recorded)."""
    if hasattr(model, "fingerprint"):
        return model
    from matryoshka.encoder import Encoder

    return Encoder(model, layers=int(layers) if layers else None)


def model_source(
    model: str | os.PathLike | Encoder | None, full_dim: int | None
) -> tuple[Encoder | None, int, dict[str, str]]:
    """For a new index of ``model``'s vectors (or bare ``full_dim`` vectors, ``model`` None): the encoder,
    the full dim, and the ``model`` and ``fingerprint`` to record."""
    if model is None:
        if full_dim is None:
            raise MatryoshkaError("an index needs a model or the full dim of its vectors")
        return None, full_dim, {}
    encoder = encoder_for(model)
    if full_dim is not None and full_dim != encoder.full_dim:
        raise DimensionError(
            f"model {encoder.info.name} makes {encoder.full_dim}-dim vectors, not {full_dim}"
        )
    recorded = {"model": encoder.info.reference, "fingerprint": encoder.fingerprint}
    if encoder.cut_layers:
        recorded["layers"] = str(encoder.cut_layers)
    return encoder, encoder.full_dim, recorded


def recorded_encoder(source: Mapping[str, str | None], holder: str) -> Encoder:
    """The encoder of the model ``source`` records; a ``holder`` of bare vectors has none."""
    if not source.get("model"):
        raise MatryoshkaError(f"this {holder} holds vectors from no recorded model: search it with vectors")
    return encoder_for(source["model"], source.get("layers"))


def checked_encoder(
    encoder: Encoder, source: Mapping, full_dim: int, refusal: str, any_layers: bool = False
) -> Encoder:
    """``encoder``, refused (``refusal`` says what it cannot do) unless it has the fingerprint ``source``
    records, if any, and makes ``full_dim``-dim vectors; ``any_layers`` lets queries be encoded at
    another depth of the same model than the documents were."""
    fingerprint = source.get("fingerprint")
    layers = int(source["layers"]) if source.get("layers") else None
    seen = encoder.fingerprint_at(layers) if any_layers else encoder.fingerprint
    if fingerprint and seen != fingerprint:
        raise MatryoshkaError(
            f"queries from model {encoder.info.name} ({encoder.fingerprint}) cannot {refusal} of vectors "
            f"from {source.get('model')} ({fingerprint})"
        )
    if encoder.full_dim != full_dim:
        raise DimensionError(f"model makes {encoder.full_dim}-dim vectors, the index holds {full_dim}")
    return encoder
