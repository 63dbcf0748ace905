"""Vector search over nested embeddings: chunked on-disk storage (or Milvus) and funnel search."""

from matryoshka.index.backends import Index, create_index, open_index
from matryoshka.index.local import MatryoshkaIndex
from matryoshka.index.search import exact_search
from matryoshka.index.stages import SearchResult, Stage

__all__ = ["Index", "MatryoshkaIndex", "SearchResult", "Stage", "create_index", "exact_search", "open_index"]
