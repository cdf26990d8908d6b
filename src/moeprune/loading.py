"""What the commands that run the network load from a checkpoint besides its weights: the
tokenizer and the text limits (vocabulary size, context length), with transformers never allowed
to run code from the checkpoint (``trust_remote_code=False``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moeprune.arch.config import load_config
from moeprune.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: Path) -> Any | None:
    """The checkpoint's tokenizer, or None when it ships no tokenizer files."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # many failure types; one meaning
        raise InputError(f"{path}: cannot load its tokenizer ({e.__class__.__name__})") from None


def text_limits(path: Path) -> tuple[int | None, int | None]:
    """(vocab_size, max_position_embeddings) from the checked config.json, looking inside
    ``text_config`` when the top level does not have them."""
    config = load_config(path)
    text = config.get("text_config") or {}
    found: list[int | None] = []
    for key in ("vocab_size", "max_position_embeddings"):
        value = config.get(key)
        found.append(value if value is not None else text.get(key))
    return found[0], found[1]
