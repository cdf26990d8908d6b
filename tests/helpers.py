"""Small helpers shared by several test modules (imported as ``from helpers import ...``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

WORDS = ["expert", "router", "token", "layer", "weight", "gate", "norm", "moe", "prune", "keep", "score", "mean"]
"""Words of the word-level test tokenizer (ids 3, 4, ...)."""


def save_word_tokenizer(folder: Path, words: list[str]) -> None:
    """Write a word-level tokenizer into ``folder``: <pad> 0, </s> 1 (eos), <unk> 2, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(folder)


def one_line_error(result: Any, *needles: str) -> None:
    """A CLI result that failed with exit code 2 and one ``error: ...`` line holding every needle."""
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    for needle in needles:
        assert needle in lines[0], result


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (and every sub-folder)."""
    if not folder.exists():
        return {}
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out
