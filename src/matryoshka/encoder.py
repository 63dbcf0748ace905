"""Encoder: one forward pass at the model's full dimension, any prefix out of it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate, validate_dim
from matryoshka.errors import MatryoshkaError
from matryoshka.layers import keep_layers, validate_layers
from matryoshka.models import ModelInfo, resolve_model
from matryoshka.onnx_backend import (
    EXPORT_VERSION,
    OnnxRunner,
    check_backend,
    default_backend,
    shared_runner,
)
from matryoshka.quantize import PRECISIONS, BinaryCodes, Int8Codes, to_binary, to_int8

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka.adapter import Adapter

Embeddings = np.ndarray | Int8Codes | BinaryCodes
PROGRESS_MIN_TEXTS = 1000  # inputs at least this long get a progress bar


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Encode texts at any prefix of a model's output, in float32, float16, int8 or binary.

    Args:
        model: a built-in model name, a name under ``models/``, or a sentence-transformers directory.
        device: ``"cpu"``, ``"cuda"``...; the GPU when present by default.
        batch_size: texts per forward pass (batches are formed after sorting texts by length).
        show_progress: force the progress bar on or off; by default it shows on long inputs.
        backend: ``"torch"``, ``"onnx"`` (ONNX Runtime, fp32) or ``"onnx-int8"`` (dynamic int8);
            by default ``$MATRYOSHKA_BACKEND``, else the fastest one that passed the quality bar
            on CPU (see :mod:`matryoshka.onnx_backend`) and torch on a GPU. ONNX runs on CPU.
        threads: CPU threads for the forward pass (default: all cores).
        adapter: a post-hoc adapter (file, directory or :class:`~matryoshka.train.adapter.Adapter`)
            applied to every full-dim vector; by default the one saved in the model directory, if any
            (``False``: none).
        layers: run only the model's first ``layers`` transformer layers (default: all), for models
            trained to pool a good embedding there (``matryoshka train --layers``).

    Example:
        >>> encoder = Encoder()
        >>> encoder.encode(["a cat on a mat"], dim=64).shape
        (1, 64)
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
        show_progress: bool | None = None,
        backend: str | None = None,
        threads: int | None = None,
        adapter: str | os.PathLike | Adapter | bool | None = None,
        layers: int | None = None,
    ) -> None:
        self.info: ModelInfo = resolve_model(model)
        self.layers = validate_layers(layers, self.info.depth, self.info.supported_layers) or self.info.depth
        if backend is None:
            self.device = device or default_device()
            self.backend = default_backend(self.device)
        else:
            self.backend = check_backend(backend)
            self.device = device or ("cpu" if self.backend != "torch" else default_device())
        if self.backend != "torch" and self.device != "cpu":
            raise MatryoshkaError(
                f"the {self.backend} backend runs on CPU; use backend='torch' on {self.device}"
            )
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.threads = threads
        self._model: SentenceTransformer | None = None
        self._runner: OnnxRunner | None = None
        self.adapter = self._load_adapter(adapter)

    def _load_adapter(self, adapter: str | os.PathLike | Adapter | bool | None) -> Adapter | None:
        """The given adapter, else the one saved in the model directory; refused if fitted elsewhere."""
        from matryoshka.adapter import Adapter
        from matryoshka.models import ADAPTER_FILE

        if adapter is False:
            return None
        if adapter is None or adapter is True:
            if not (self.info.path / ADAPTER_FILE).is_file():
                return None
            adapter = self.info.path / ADAPTER_FILE
        if not isinstance(adapter, Adapter):
            adapter = Adapter.load(adapter)
        if adapter.input_dim != self.full_dim:
            raise MatryoshkaError(
                f"adapter expects {adapter.input_dim}-dim vectors, "
                f"model {self.info.name} gives {self.full_dim}"
            )
        adapter.check_source(self.info.name, self.info.fingerprint)
        return adapter

    @property
    def full_dim(self) -> int:
        return self.info.full_dim

    @property
    def name(self) -> str:
        """The model's name, with ``@N-layers`` when it runs cut to its first N layers."""
        return f"{self.info.name}@{self.cut_layers}-layers" if self.cut_layers else self.info.name

    @property
    def cut_layers(self) -> int | None:
        """The layer count the model is cut to, ``None`` when it runs whole."""
        return self.layers if self.layers != self.info.depth else None

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder produces: model files, depth, backend and adapter (torch at
        full depth keeps the bare model fingerprint, so vectors cached before backends existed stay
        valid)."""
        return self.fingerprint_at(self.cut_layers)

    def fingerprint_at(self, layers: int | None) -> str:
        """The fingerprint of this encoder's vectors were it cut to ``layers`` (``None``: whole)."""
        depth = f"-layers{layers}" if layers and layers != self.info.depth else ""
        backend = "" if self.backend == "torch" else f"-{self.backend}-v{EXPORT_VERSION}"
        adapter = f"-adapter-{self.adapter.hash}" if self.adapter else ""
        return f"{self.info.fingerprint}{depth}{backend}{adapter}"

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded from disk on first use."""
        if self._model is None:
            self._model = self._load_model()
        return self._model

    def _load_model(self) -> SentenceTransformer:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        model = SentenceTransformer(str(self.info.path), device=self.device, local_files_only=True)
        return keep_layers(model, self.cut_layers)

    @property
    def runner(self) -> OnnxRunner:
        """The ONNX Runtime session (ONNX backends only), exporting the model on first use."""
        if self.backend == "torch":
            raise MatryoshkaError("the torch backend has no ONNX session")
        if self._runner is None:
            self._runner = shared_runner(
                self.info, self.backend, self._load_model, self.threads, self.cut_layers
            )
        return self._runner

    def check_dim(self, dim: int | None) -> int:
        """Validate ``dim`` against the model (``None`` means the full dim)."""
        return self.full_dim if dim is None else validate_dim(dim, self.full_dim, self.info.supported_dims)

    def encode_full(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings at the full dimension: the single forward pass everything uses."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.full_dim), dtype=np.float32)
        if not all(isinstance(text, str) for text in texts):
            raise MatryoshkaError("every input must be a string")
        progress = self.show_progress if self.show_progress is not None else len(texts) >= PROGRESS_MIN_TEXTS
        if self.backend == "torch":
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, show_progress_bar=progress, convert_to_numpy=True
            )
        else:
            vectors = self.runner.encode(texts, self.batch_size, progress)
        vectors = truncate(np.asarray(vectors, dtype=np.float32))
        return self.adapter.transform(vectors) if self.adapter else vectors

    def encode(
        self,
        texts: str | Sequence[str],
        dim: int | None = None,
        precision: str = "float32",
        int8_ranges: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Embeddings:
        """Embeddings of ``texts`` at ``dim`` (re-normalised prefix) in ``precision``.

        A single string gives one vector (1-D for floats). Int8 ranges are calibrated on these
        texts unless ``int8_ranges`` (from :func:`matryoshka.quantize.calibrate_int8`) is given.
        """
        single = isinstance(texts, str)
        result = self.encode_many([texts] if single else texts, [dim], precision, int8_ranges)[
            self.check_dim(dim)
        ]
        return result[0] if single and isinstance(result, np.ndarray) else result

    def encode_many(
        self,
        texts: Sequence[str],
        dims: Sequence[int | None],
        precision: str = "float32",
        int8_ranges: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[int, Embeddings]:
        """Every requested prefix of ``texts`` from one forward pass, keyed by dim."""
        if precision not in PRECISIONS:
            raise MatryoshkaError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        checked = [self.check_dim(dim) for dim in dims]
        full = self.encode_full(texts)
        return {dim: convert_precision(truncate(full, dim), precision, int8_ranges) for dim in checked}


def convert_precision(
    vectors: np.ndarray, precision: str, int8_ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> Embeddings:
    """Unit-norm float32 vectors in the requested storage precision."""
    if precision == "float32":
        return vectors
    if precision == "float16":
        return vectors.astype(np.float16)
    if precision == "int8":
        return to_int8(vectors, int8_ranges)
    if precision == "binary":
        return to_binary(vectors)
    raise MatryoshkaError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
