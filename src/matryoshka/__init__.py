"""matryoshka: nested text embeddings, encoded, trained, evaluated, indexed and served at any dimension."""

from matryoshka.dims import truncate, validate_dim
from matryoshka.encoder import Encoder
from matryoshka.errors import DimensionError, MatryoshkaError

__version__ = "0.1.0"
__all__ = ["DimensionError", "Encoder", "MatryoshkaError", "truncate", "validate_dim"]
