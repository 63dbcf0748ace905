"""Vector search over nested embeddings."""
