"""ONNX Runtime backends: the model exported once to ONNX (fp32, or dynamically quantised to int8).

The export holds the whole sentence-transformers pipeline (transformer, pooling, any Dense layers,
normalisation), so its output is the model's sentence embedding. Exports are cached under
``cache_dir()/onnx`` keyed by the model's fingerprint (the default model lives inside site-packages,
so nothing is written next to it); a digest beside each file catches a damaged export, which is
rebuilt. Texts are tokenised with the model's fast tokenizer and batched by token length so that
batches carry little padding, with fewer rows per batch for long texts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.cache import cache_dir
from matryoshka.errors import MatryoshkaError
from matryoshka.models import ModelInfo

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

BACKENDS = ("torch", "onnx", "onnx-int8")
# The backend CPU encoders use unless told otherwise, chosen by bench/encode.py (docs/benchmarks.md):
# ONNX fp32 is faster than sentence-transformers with the same vectors, and a text's vector does not
# depend on its batch. onnx-int8 is faster still, but dynamic quantisation scales activations per
# batch, so a served or indexed vector would depend on concurrent traffic: it stays opt-in.
DEFAULT_CPU_BACKEND = "onnx"
BACKEND_ENV = "MATRYOSHKA_BACKEND"
EXPORT_VERSION = 1  # bump when the export or quantisation settings change: old files are then ignored
OPSET = 17
# Padded tokens per forward pass: 256-token texts go two to a batch, since attention scores grow with
# rows x width^2 and on CPU a big batch of long texts spends more on memory traffic than batching
# saves; short texts still fill ``batch_size`` rows. Chosen by a sweep of 256 to 2048 and no cap: 256
# was a little faster on long texts but split short batches, which moves onnx-int8's vectors.
TOKENS_PER_BATCH = 512


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise MatryoshkaError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    return backend


def default_backend(device: str) -> str:
    """$MATRYOSHKA_BACKEND if set, else the measured fastest ONNX backend on CPU and torch on a GPU."""
    if chosen := os.environ.get(BACKEND_ENV):
        return check_backend(chosen)
    return DEFAULT_CPU_BACKEND if device == "cpu" else "torch"


def export_path(info: ModelInfo, backend: str, layers: int | None = None) -> Path:
    """Where the export of ``info``'s model (cut to its first ``layers`` layers, if given) is cached."""
    model = f"{info.fingerprint}-layers{layers}" if layers else info.fingerprint
    return cache_dir() / "onnx" / f"{model}-{backend}-v{EXPORT_VERSION}.onnx"


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def is_intact(path: Path) -> bool:
    """True when ``path`` exists and matches the digest written when it was built."""
    try:
        return _digest(path) == _digest_path(path).read_text().strip()
    except OSError:
        return False


def ensure_export(
    info: ModelInfo,
    backend: str,
    load_model: Callable[[], SentenceTransformer],
    layers: int | None = None,
) -> Path:
    """Path of the cached ONNX file for ``backend``, built (from ``load_model()``, which returns the
    model already cut to ``layers``) if missing or damaged."""
    path = export_path(info, check_backend(backend), layers)
    if backend == "torch":
        raise MatryoshkaError("the torch backend has no ONNX export")
    if is_intact(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        if backend == "onnx":
            _export_fp32(load_model(), temporary)
        else:
            _quantise_int8(ensure_export(info, "onnx", load_model, layers), temporary)
        digest = _digest(temporary)
        os.replace(temporary, path)  # atomic: other processes see the old file or the whole new one
    finally:
        temporary.unlink(missing_ok=True)
    digest_temporary = _digest_path(temporary)
    digest_temporary.write_text(digest + "\n")
    os.replace(digest_temporary, _digest_path(path))  # a half-written digest only causes a rebuild
    return path


def _export_fp32(model: SentenceTransformer, target: Path) -> None:
    """torch.onnx.export (TorchScript exporter) of the full pipeline, batch and length dynamic."""
    import torch

    sample = {
        name: value
        for name, value in model.preprocess(["a short text", "a somewhat longer text to trace"]).items()
        if isinstance(value, torch.Tensor)
    }
    names = list(sample)

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(dict(zip(names, tensors, strict=True)))["sentence_embedding"]

    axes = {name: {0: "batch", 1: "tokens"} for name in names} | {"sentence_embedding": {0: "batch"}}
    # The tracer warns about shape checks that are constant for every input (mask width == token count).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pipeline().eval().cpu(),
            tuple(sample[name].cpu() for name in names),
            str(target),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _quantise_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights, per channel, with the reduced (7-bit) range.

    Chosen by measurement: quantising every op per tensor (the default) cost 0.6 STS-B Spearman points
    at 64 dims; per-channel MatMul-only with reduce_range stays within 0.15 points on STS-B dev and test.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # it logs "consider pre-processing" as a warning
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=True,
        )
    finally:
        root.setLevel(level)


def load_tokenizer(info: ModelInfo) -> tuple[Tokenizer, bool]:
    """The model's fast tokenizer, truncating at the model's max_seq_length, and whether to lowercase.

    Read straight from ``tokenizer.json`` when the model has one (no transformers, hence no torch, in
    the process); otherwise converted by transformers' AutoTokenizer.
    """
    from tokenizers import Tokenizer

    config_path = info.path / "sentence_bert_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    max_length = config.get("max_seq_length")
    if (info.path / "tokenizer.json").exists() and max_length:
        tokenizer = Tokenizer.from_file(str(info.path / "tokenizer.json"))
    else:
        from transformers import AutoTokenizer

        wrapper = AutoTokenizer.from_pretrained(str(info.path), local_files_only=True)
        if not wrapper.is_fast:
            raise MatryoshkaError(f"the ONNX backends need a fast tokenizer; {info.path} has none")
        tokenizer = Tokenizer.from_str(wrapper.backend_tokenizer.to_str())  # a copy: settings below are ours
        max_length = max_length or min(wrapper.model_max_length, 512)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(max_length))
    return tokenizer, bool(config.get("do_lower_case", False))


def length_batches(
    lengths: np.ndarray, batch_size: int, tokens_per_batch: int = TOKENS_PER_BATCH
) -> list[np.ndarray]:
    """Indices of each batch, shortest texts first: at most ``batch_size`` rows and at most
    ``tokens_per_batch`` padded tokens (rows x the longest row), but always one row."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and stop - start < batch_size:
            if (stop - start + 1) * lengths[order[stop]] > tokens_per_batch:
                break
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


_RUNNERS: dict[tuple[str, str, int | None, int | None], OnnxRunner] = {}


def shared_runner(
    info: ModelInfo,
    backend: str,
    load_model: Callable[[], SentenceTransformer],
    threads: int | None = None,
    layers: int | None = None,
) -> OnnxRunner:
    """One session per model, depth, backend and thread count in a process: encoders share it (sessions
    are thread-safe), so making another Encoder costs no export check and no session load."""
    key = (info.fingerprint, backend, threads, layers)
    if key not in _RUNNERS:
        _RUNNERS[key] = OnnxRunner(info, backend, load_model, threads, layers)
    return _RUNNERS[key]


class OnnxRunner:
    """An ONNX Runtime session over a cached export, with the model's tokenizer."""

    def __init__(
        self,
        info: ModelInfo,
        backend: str,
        load_model: Callable[[], SentenceTransformer],
        threads: int | None = None,
        layers: int | None = None,
    ) -> None:
        import onnxruntime

        self.path = ensure_export(info, backend, load_model, layers)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.tokenizer, self.lowercase = load_tokenizer(info)

    def encode(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> np.ndarray:
        """Sentence embeddings in input order, batches formed after sorting by token count."""
        if self.lowercase:
            texts = [text.lower() for text in texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([len(encoding.ids) for encoding in encodings])
        batches = length_batches(lengths, batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch")
        output = None
        for batch in batches:
            width = int(lengths[batch].max())
            arrays = {name: np.zeros((len(batch), width), dtype=np.int64) for name in self.input_names}
            for row, index in enumerate(batch):
                encoding, size = encodings[index], lengths[index]
                fields = {
                    "input_ids": encoding.ids,
                    "attention_mask": encoding.attention_mask,
                    "token_type_ids": encoding.type_ids,
                }
                for name in self.input_names:
                    arrays[name][row, :size] = fields[name]
            vectors = self.session.run(None, arrays)[0]
            if output is None:
                output = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            output[batch] = vectors
        return output
