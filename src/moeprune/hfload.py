"""Every transformers load moeprune does, in one place: never a checkpoint's own code, never noise.

`causal_lm`, `tokenizer` and `config` pass ``trust_remote_code=False`` explicitly (so no prompt can
appear, even on a terminal) after `refuse_custom_code` has checked that transformers knows the
checkpoint's ``model_type``: a model that only its own Python files can build is refused with one
line instead. `quiet()` silences transformers' progress bars and warnings inside a library call and
restores the caller's settings afterwards.

A multimodal model whose text model transformers only builds inside a ``...ForConditionalGeneration``
(Qwen3-VL-MoE, Kimi-K2.5, GLM-4.5V...: no causal-LM class in transformers' auto mapping) is loaded
with ``AutoModelForImageTextToText`` instead (`auto_class`); moeprune then runs its text path only
(``input_ids``, logits from the LM head), so the vision tower is loaded untouched and never run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moeprune.errors import InputError


@contextmanager
def quiet() -> Iterator[None]:
    """transformers' progress bars off and its logging at ERROR, restored on exit."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _known_model_types() -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING


def refuse_custom_code(path: Path) -> None:
    """One clear error when the checkpoint at ``path`` can only be built by its own code: its
    config.json names a ``model_type`` transformers does not know (``auto_map`` then points at the
    Python files moeprune will not run). A known ``model_type`` with an ``auto_map`` is built from
    transformers' own classes, and the ``auto_map`` is ignored."""
    from moeprune.io.jsonfile import read_json

    file = path / "config.json"
    config = read_json(file, "config.json") if os.path.lexists(file) else None
    if not isinstance(config, dict):
        return  # no config (a tokenizer-only folder) or not an object: the loader reports it
    model_type = config.get("model_type")
    known = _known_model_types()
    if isinstance(model_type, str) and model_type in known:
        return
    needs = " (its auto_map points at the checkpoint's own Python files)" if "auto_map" in config else ""
    raise InputError(
        f"{path}: model_type {model_type!r} is not built into transformers{needs}; moeprune never runs "
        "code from a checkpoint folder (trust_remote_code=False)"
    )


def auto_class(model_type: str, where: Path | str = "") -> Any:
    """The transformers auto class that builds ``model_type`` with its language-model head:
    ``AutoModelForCausalLM`` where transformers maps the type to a causal-LM class, else
    ``AutoModelForImageTextToText`` (a multimodal model whose text model only exists inside its
    ``...ForConditionalGeneration``); `InputError` when transformers maps it to neither."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultimodalLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    if model_type in MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES and language_model(model_type):
        return AutoModelForMultimodalLM  # Qwen3-Omni's thinker-talker class; its `language_model` runs
    prefix = f"{where}: " if where else ""
    raise InputError(
        f"{prefix}transformers has no causal-LM or image-text-to-text class for model_type {model_type!r}, "
        "so moeprune cannot run it as a language model"
    )


def language_model(model_type: str) -> str:
    """The registry's ``Family.language_model`` for ``model_type``: the submodule of the model
    transformers builds that is the language model ("" for the model itself, or an unknown type)."""
    from moeprune.arch.families import FAMILIES

    family = FAMILIES.get(model_type)
    return family.language_model if family is not None else ""


def causal_lm(path: Path, **kwargs: Any) -> Any:
    """``from_pretrained(path, trust_remote_code=False, **kwargs)`` of `auto_class` (the causal LM,
    or the ``...ForConditionalGeneration`` of a multimodal model, run on text only), quietly."""
    cfg = config(path)  # refuses a model only its own code can build
    auto = auto_class(cfg.model_type, path)
    with quiet():
        model, info = auto.from_pretrained(path, trust_remote_code=False, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:  # transformers would run them with random or default values: no proof, no evaluation
        import transformers

        raise InputError(
            f"{path}: transformers {transformers.__version__} finds no stored value for {len(missing)} "
            f"weight(s) of the model it builds, e.g. {missing[0]} (the checkpoint does not hold them under "
            "the names it expects); they would be random"
        )
    sub = language_model(cfg.model_type)  # Qwen3-Omni: its thinker (the talker is loaded, never run)
    return model.get_submodule(sub) if sub else model


def from_config(cfg: Any, **kwargs: Any) -> Any:
    """``from_config(cfg, trust_remote_code=False, **kwargs)`` of `auto_class` (call it under
    ``torch.device("meta")`` for a model without memory), quietly."""
    auto = auto_class(cfg.model_type)
    with quiet():
        return auto.from_config(cfg, trust_remote_code=False, **kwargs)


def tokenizer(path: Path) -> Any:
    """``AutoTokenizer.from_pretrained(path, trust_remote_code=False)``, quietly."""
    from transformers import AutoTokenizer

    with quiet():
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def config(path: Path) -> Any:
    """``AutoConfig.from_pretrained(path, trust_remote_code=False)``, quietly."""
    from transformers import AutoConfig

    refuse_custom_code(path)
    with quiet():
        return AutoConfig.from_pretrained(path, trust_remote_code=False)
