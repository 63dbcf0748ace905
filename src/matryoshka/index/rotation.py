"""An index-wide rotation: make vectors from a model that was not trained to nest (an API, base
MiniLM) nest before they are stored.

An orthogonal matrix ``R`` maps every stored vector and every query (``v @ R``), so full-dim scores are
unchanged while the leading coordinates carry the most variance: short prefixes then rank far better,
which is what the prefix-only parts of the index (a float first stage, an HNSW graph over a prefix,
prefix ladders) live on. Sign bits do not gain (a binary first stage over all dims is better unrotated).
The matrix is the post-hoc adapter's ``mean_last_rotation`` fitted on a sample of the vectors, saved
beside the data and checked by size and checksum when read.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from matryoshka.errors import DimensionError, MatryoshkaError
from matryoshka.index.store import atomic_write

ROTATION_FILE = "rotation.f32"
FIT_SAMPLE = 20_000
ORTHOGONAL_TOLERANCE = 1e-3


def fit_rotation(vectors: np.ndarray, sample: int = FIT_SAMPLE, seed: int = 0) -> np.ndarray:
    """Mean-last principal axes of up to ``sample`` rows of ``vectors`` (float32, full x full)."""
    from matryoshka.adapter import mean_last_rotation

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise MatryoshkaError(f"a rotation is fitted on 2 or more vectors, got shape {vectors.shape}")
    if len(vectors) > sample:
        vectors = vectors[np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))]
    return mean_last_rotation(vectors)


def check_rotation(matrix: np.ndarray, full_dim: int) -> np.ndarray:
    """``matrix`` as float32 if it is an orthogonal ``full_dim`` square; else a clear error."""
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.shape != (full_dim, full_dim):
        raise DimensionError(f"a rotation of {full_dim}-dim vectors is square {full_dim}, got {matrix.shape}")
    error = np.abs(matrix.T.astype(np.float64) @ matrix - np.eye(full_dim)).max()
    if not error <= ORTHOGONAL_TOLERANCE:
        raise MatryoshkaError(f"rotation not orthogonal (|R'R - I| up to {error:.2g}): scores would change")
    return matrix


def save_rotation(root: Path, matrix: np.ndarray) -> dict:
    """Write the matrix (``atomic_write``) and return its manifest record."""
    data = np.ascontiguousarray(matrix, dtype=np.float32).tobytes()
    atomic_write(root / ROTATION_FILE, data)
    return {"file": ROTATION_FILE, "bytes": len(data), "crc32": zlib.crc32(data)}


def load_rotation(root: Path, record: dict, full_dim: int) -> np.ndarray:
    """The saved matrix, refused when it is missing, truncated or changed since it was written."""
    path = root / record["file"]
    data = path.read_bytes() if path.exists() else b""
    if len(data) != record["bytes"] or zlib.crc32(data) != record["crc32"]:
        state = "missing" if not path.exists() else "damaged (size or checksum differs from the manifest)"
        raise MatryoshkaError(f"index {root} is damaged: its rotation {record['file']} is {state}")
    return np.frombuffer(data, dtype=np.float32).reshape(full_dim, full_dim)
