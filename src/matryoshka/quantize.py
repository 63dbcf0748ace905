"""Int8 and binary codes of (prefix) embeddings, and scoring them against float queries.

Int8 codes use per-dimension ranges calibrated on a sample; the ranges travel with the codes so
they can be decoded and scored later. Binary codes are sign bits packed with ``np.packbits``.
Scoring is asymmetric (float query against codes), which keeps more accuracy than quantising both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from matryoshka.errors import DimensionError, MatryoshkaError

PRECISIONS = ("float32", "float16", "int8", "binary")
VALUE_BYTES = {"float32": 4, "float16": 2, "int8": 1}


def bytes_per_vector(dim: int, precision: str) -> int:
    """Bytes one vector's ``dim``-prefix takes in ``precision`` (binary packs 8 sign bits a byte)."""
    if precision not in PRECISIONS:
        raise MatryoshkaError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return -(-dim // 8) if precision == "binary" else dim * VALUE_BYTES[precision]


@dataclass
class Int8Codes:
    """Codes in [-128, 127]; value ≈ ``starts + steps * (code + 128)`` per dimension."""

    codes: np.ndarray  # (n, dim) int8
    starts: np.ndarray  # (dim,) float32
    steps: np.ndarray  # (dim,) float32

    @property
    def dim(self) -> int:
        return self.codes.shape[-1]

    def dequantize(self) -> np.ndarray:
        return self.starts + self.steps * (self.codes.astype(np.float32) + 128)

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".npz")
        np.savez(path, codes=self.codes, starts=self.starts, steps=self.steps)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Int8Codes:
        try:
            with np.load(path) as data:
                return cls(data["codes"], data["starts"], data["steps"])
        except (OSError, KeyError, ValueError) as exc:
            raise MatryoshkaError(f"{path} does not hold int8 codes: {exc}") from exc


@dataclass
class BinaryCodes:
    """Sign bits of ``dim`` coordinates, packed 8 per byte (``np.packbits`` order)."""

    bits: np.ndarray  # (n, ceil(dim / 8)) uint8
    dim: int

    def signs(self) -> np.ndarray:
        """±1 per coordinate, as float32."""
        unpacked = np.unpackbits(self.bits, axis=-1, count=self.dim)
        return unpacked.astype(np.float32) * 2 - 1


def calibrate_int8(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(starts, steps)`` that map the sample's [min, max] onto 256 levels."""
    sample = np.asarray(sample, dtype=np.float32)
    if sample.ndim != 2 or len(sample) == 0:
        raise MatryoshkaError("int8 calibration needs a non-empty 2-D sample of vectors")
    low, high = sample.min(axis=0), sample.max(axis=0)
    steps = np.maximum(high - low, 1e-12) / 255
    return low.astype(np.float32), steps.astype(np.float32)


def to_int8(x: np.ndarray, ranges: tuple[np.ndarray, np.ndarray] | None = None) -> Int8Codes:
    """Quantise rows of ``x``; ranges default to a calibration on ``x`` itself."""
    x = np.asarray(x, dtype=np.float32)
    starts, steps = calibrate_int8(x) if ranges is None else ranges
    if len(starts) != x.shape[-1]:
        raise DimensionError(f"int8 ranges are for {len(starts)} dims, vectors have {x.shape[-1]}")
    levels = np.rint((x - starts) / steps)
    codes = (np.clip(levels, 0, 255) - 128).astype(np.int8)
    return Int8Codes(codes, starts, steps)


def to_binary(x: np.ndarray) -> BinaryCodes:
    """Sign bit per coordinate (1 where > 0), packed along the last axis."""
    x = np.asarray(x)
    return BinaryCodes(np.packbits(x > 0, axis=-1), x.shape[-1])


def score(queries: np.ndarray, codes: Int8Codes | BinaryCodes | np.ndarray) -> np.ndarray:
    """Similarity of float queries ``(q, dim)`` to every coded vector: a ``(q, n)`` matrix.

    Int8 scores equal the dot product with the decoded vectors; binary scores are the dot product
    with the sign vector divided by sqrt(dim), on the same scale as a cosine.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    dim = codes.shape[-1] if isinstance(codes, np.ndarray) else codes.dim
    if queries.shape[-1] != dim:
        raise DimensionError(f"queries have {queries.shape[-1]} dims, codes have {dim}")
    if isinstance(codes, Int8Codes):
        offset = queries @ (codes.starts + 128 * codes.steps)
        return (queries * codes.steps) @ codes.codes.T.astype(np.float32) + offset[:, None]
    if isinstance(codes, BinaryCodes):
        return queries @ codes.signs().T / np.sqrt(dim)
    return queries @ np.asarray(codes, dtype=np.float32).T
