"""config.json validated once, at the edge: every key the registry reads, typed and bounded.

`load_config` reads a checkpoint's config.json and checks it, and its ``text_config`` when
present, against `FIELDS` (a plain table of checks: this runs on every command, and a schema
library's import would cost more than the check): integers are JSON integers (no strings, floats, booleans, NaN or
infinities) within a range a real model can have, lists are lists of such integers, objects are
objects. Any other key is kept as it is and never read by moeprune. Everything past this edge (the
family rules in `families`, `layout.describe`, surgery, verify, eval) reads the checked dict. A
family rule that starts reading a new key adds it here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from moeprune.errors import InputError
from moeprune.io.jsonfile import read_json, shown

_LIMIT = 1 << 24
"""No count, index or size a family rule reads is this large (16.7 M)."""

Check = Callable[[Any], str | None]
"""A value's check: None when it is fine, else what is wrong (checks run on non-null values)."""


def _integer(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool):
            return "must be a whole number"
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"

    return check


def _list(item: Check) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return "must be a list"
        return next((f"item {i} {e}" for i, x in enumerate(v) if (e := item(x)) is not None), None)

    return check


def _string(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "must be an object"


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(*names: str) -> Check:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


def _pattern(chars: str) -> Check:
    return lambda v: None if isinstance(v, str) and set(v) <= set(chars) else f"must be a string of {chars}"


COUNT = _integer(1, _LIMIT)
"""Experts, top-k, layers, groups, steps: at least one."""
INDEX = _integer(0, _LIMIT)
"""Layer indices, offsets and counts of dense layers: 0 is a real value."""
SIZE = _integer(1, 1 << 40)
"""Vocabulary and position counts."""

FIELDS: dict[str, Check] = {
    "model_type": _string,
    "architectures": _list(_string),
    "auto_map": _object,
    "text_config": _object,
    "quantization_config": _object,
    "num_hidden_layers": COUNT,
    "vocab_size": SIZE,
    "max_position_embeddings": SIZE,
    "tie_word_embeddings": _boolean,
    # routed-expert count (every family's count key)
    "num_experts": COUNT,
    "num_local_experts": COUNT,
    "n_routed_experts": COUNT,
    "moe_num_experts": COUNT,
    # top-k
    "num_experts_per_tok": COUNT,
    "num_experts_per_token": COUNT,
    "top_k_experts": COUNT,
    "moe_k": COUNT,
    "moe_topk": COUNT,
    # group-limited routing
    "n_group": COUNT,
    "num_expert_group": COUNT,
    "topk_group": COUNT,
    "topk_method": _one_of("greedy", "group_limited_greedy", "noaux_tc"),
    # which layers are MoE layers
    "first_k_dense_replace": INDEX,
    "decoder_sparse_step": COUNT,
    "mlp_only_layers": _list(INDEX),
    "moe_layer_start_index": INDEX,
    "moe_layer_end_index": _integer(-1, _LIMIT),
    "moe_layer_interval": COUNT,
    "expert_layer_period": COUNT,
    "expert_layer_offset": INDEX,
    "interleave_moe_layer_step": COUNT,
    "moe_layers": _list(INDEX),
    "num_dense_layers": INDEX,
    "mlp_layer_types": _list(_string),
    "moe_layer_freq": _list(lambda v: None if v in (0, 1) else "must be 0 or 1"),  # M1: MiniMax-M3
    "moe_layers_enum": lambda v: (  # M1: Step-3.7, MoE layer ids as "3,4,5" or a list
        _pattern("0123456789, ")(v) if isinstance(v, str) else _list(INDEX)(v)
    ),
    # R: LongCat-Flash (layer count; identity experts: router rows after the experts)
    "num_layers": COUNT,
    "zero_expert_num": INDEX,
    # R: Inkling (shared-expert sink rows of the router; first dense layers in hub configs)
    "n_shared_experts": INDEX,
    "dense_mlp_idx": INDEX,
    # R: Ergo (its first dense layers in hub configs without mlp_layer_types)
    "num_dense_blocks": INDEX,
    # S: DBRX (n_layers; counts inside ffn_config), Nemotron-H (layer types, hub pattern)
    "n_layers": COUNT,
    "ffn_config": _object,  # its own keys are checked against this table too (check_config)
    "moe_top_k": COUNT,
    "layers_block_type": _list(_string),
    "hybrid_override_pattern": _pattern("ME*-"),
}
"""Every key of config.json (or its ``text_config``) that moeprune reads, and its check."""

QUANTIZATION_FIELDS: dict[str, Check] = {
    "weight_block_size": _list(COUNT),
    "modules_to_not_convert": _list(_string),
}
"""The part of ``quantization_config`` that scoring reads (FP8 block size)."""


NOT_NULL = frozenset({"topk_method"})
"""Keys whose explicit null transformers does not read as 'not set' (it replaces the default)."""


def _check(fields: dict[str, Check], data: dict[str, Any], where: str) -> None:
    for key, check in fields.items():
        value = data.get(key)
        if value is None and key in data and key in NOT_NULL:
            raise InputError(f"{where}: field {key}: must not be null (leave it out for the default)")
        if value is not None and (problem := check(value)) is not None:
            raise InputError(f"{where}: field {key}: {problem} (got {shown(value)})")
    types, n_layers = data.get("mlp_layer_types"), data.get("num_hidden_layers")
    if types is not None and n_layers is not None and len(types) != n_layers:
        raise InputError(f"{where}: field mlp_layer_types: {len(types)} entries for {n_layers} layers")


def check_config(config: Any, where: str) -> dict[str, Any]:
    """``config`` (parsed config.json) checked against `FIELDS`, also inside ``text_config`` and
    ``quantization_config``; returned unchanged."""
    if not isinstance(config, dict):
        raise InputError(f"{where}: not a JSON object")
    _check(FIELDS, config, where)
    text = config.get("text_config") or {}
    if text:
        _check(FIELDS, text, f"{where} (text_config)")
    ffn = (text or config).get("ffn_config")
    if isinstance(ffn, dict):  # DBRX: the expert count and top-k live in ffn_config
        _check(FIELDS, ffn, f"{where} (ffn_config)")
    for quant, label in ((config.get("quantization_config"), ""), (text.get("quantization_config"), " (text_config)")):
        if quant:
            _check(QUANTIZATION_FIELDS, quant, f"{where}{label} (quantization_config)")
    return config


def load_config(path: Path) -> dict[str, Any]:
    """The checked config.json of the checkpoint folder ``path``."""
    file = path / "config.json"
    if not (file.exists() or file.is_symlink()):
        raise InputError(f"{path}: no config.json (is this a Hugging Face checkpoint folder?)")
    return check_config(read_json(file, "config.json"), str(file))
