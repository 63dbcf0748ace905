"""HTTP serving: OpenAI-compatible embeddings at any dimension, search over an index, and a web page."""
