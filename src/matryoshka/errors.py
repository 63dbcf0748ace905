"""User-facing errors: the CLI prints these as one line and exits 2, the server maps them to 4xx."""


class MatryoshkaError(Exception):
    """A problem with the user's input (a file, a model name, a dimension), not a bug."""


class DimensionError(MatryoshkaError, ValueError):
    """A requested embedding dimension is not valid for the model or the vectors."""
