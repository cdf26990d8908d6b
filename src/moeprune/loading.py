"""Opening a model: the checkpoint seen as a MoE model (`open_model`, no weights read), and what
the commands that run the network need besides (tokenizer, text limits, the decoder layers of a
model transformers built), with transformers never allowed to run code from the checkpoint
(``trust_remote_code=False``, through `hfload`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from moeprune.arch.config import load_config
from moeprune.arch.families import FAMILIES
from moeprune.arch.layout import MoeModel, describe, text_config
from moeprune.errors import InputError
from moeprune.hfload import tokenizer as hf_tokenizer
from moeprune.io.reader import Checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def open_model(model: str | os.PathLike[str], *, weights: bool = True) -> tuple[Checkpoint, MoeModel]:
    """The checkpoint (config and headers checked) and where its routed experts are."""
    ckpt = Checkpoint.open(model, weights=weights)
    return ckpt, describe(ckpt.config, ckpt.tensors)


def decoder_layers(model: Any) -> Any:
    """The decoder's ``layers`` ModuleList (the first one, outermost first, inside the language model
    where transformers names one: a vision tower's ``layers`` may come first in a multimodal model)."""
    import torch

    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    root = decoder if isinstance(decoder, torch.nn.Module) else model
    for suffix in ("layers", "blocks"):  # DBRX: transformer.blocks
        for name, module in root.named_modules():
            if name.endswith(suffix) and isinstance(module, torch.nn.ModuleList):
                return module
    raise InputError("cannot find the decoder layers of the loaded model")


def load_tokenizer(path: Path) -> Any | None:
    """The checkpoint's tokenizer (`hfload.tokenizer`: transformers' own classes only, quietly), or
    None when it ships no tokenizer files."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return hf_tokenizer(path)
    except Exception as e:  # many failure types; one meaning
        raise InputError(f"{path}: cannot load its tokenizer ({e.__class__.__name__})") from None


def text_limits(path: Path) -> tuple[int | None, int | None]:
    """(vocab_size, max_position_embeddings) from the checked config.json, looking inside
    ``text_config`` when the top level does not have them."""
    config = load_config(path)
    text = config.get("text_config") or {}
    family = FAMILIES.get(config.get("model_type"))  # type: ignore[arg-type]
    if family is not None and family.nested:  # Qwen3-Omni: thinker_config.text_config
        text = text_config(config, family)
    found: list[int | None] = []
    for key in ("vocab_size", "max_position_embeddings"):
        value = config.get(key)
        found.append(value if value is not None else text.get(key))
    return found[0], found[1]
