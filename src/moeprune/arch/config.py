"""config.json validated once, at the edge: every key the registry reads, typed and bounded.

`load_config` reads a checkpoint's config.json and checks it, and its ``text_config`` when
present, against `ConfigFields`: integers are JSON integers (no strings, floats, booleans, NaN or
infinities) within a range a real model can have, lists are lists of such integers, objects are
objects. Any other key is kept as it is and never read by moeprune. Everything past this edge (the
family rules in `families`, `layout.describe`, surgery, verify, eval) reads the checked dict. A
family rule that starts reading a new key adds it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from moeprune.errors import InputError
from moeprune.io.jsonfile import read_json, validate

_LIMIT = 1 << 24
"""No count, index or size a family rule reads is this large (16.7 M)."""

Count = Annotated[StrictInt, Field(ge=1, le=_LIMIT)]
"""Experts, top-k, layers: at least one."""
Index = Annotated[StrictInt, Field(ge=0, le=_LIMIT)]
"""Layer indices, offsets and counts of dense layers: 0 is a real value."""
Size = Annotated[StrictInt, Field(ge=1, le=1 << 40)]
"""Vocabulary and position counts."""


class ConfigFields(BaseModel):
    """The keys of config.json (or its ``text_config``) that moeprune reads."""

    model_config = ConfigDict(extra="allow", strict=True)

    model_type: StrictStr | None = None
    architectures: list[StrictStr] | None = None
    auto_map: dict[str, Any] | None = None
    text_config: dict[str, Any] | None = None
    quantization_config: dict[str, Any] | None = None
    num_hidden_layers: Count | None = None
    vocab_size: Size | None = None
    max_position_embeddings: Size | None = None
    tie_word_embeddings: StrictBool | None = None
    # routed-expert count (every family's count key)
    num_experts: Count | None = None
    num_local_experts: Count | None = None
    n_routed_experts: Count | None = None
    moe_num_experts: Count | None = None
    # top-k
    num_experts_per_tok: Count | None = None
    num_experts_per_token: Count | None = None
    top_k_experts: Count | None = None
    moe_k: Count | None = None
    moe_topk: Count | None = None
    # group-limited routing
    n_group: Count | None = None
    num_expert_group: Count | None = None
    topk_group: Count | None = None
    topk_method: Literal["greedy", "group_limited_greedy", "noaux_tc"] | None = None
    # which layers are MoE layers
    first_k_dense_replace: Index | None = None
    decoder_sparse_step: Count | None = None
    mlp_only_layers: list[Index] | None = None
    moe_layer_start_index: Index | None = None
    moe_layer_end_index: Annotated[StrictInt, Field(ge=-1, le=_LIMIT)] | None = None
    moe_layer_interval: Count | None = None
    expert_layer_period: Count | None = None
    expert_layer_offset: Index | None = None
    interleave_moe_layer_step: Count | None = None
    moe_layers: list[Index] | None = None
    num_dense_layers: Index | None = None
    mlp_layer_types: list[StrictStr] | None = None


class QuantizationFields(BaseModel):
    """The part of ``quantization_config`` that scoring reads (FP8 block size)."""

    model_config = ConfigDict(extra="allow", strict=True)

    weight_block_size: list[Count] | None = None
    modules_to_not_convert: list[StrictStr] | None = None


def check_config(config: Any, where: str) -> dict[str, Any]:
    """``config`` (parsed config.json) checked against `ConfigFields`, also inside
    ``text_config`` and ``quantization_config``; returned unchanged."""
    if not isinstance(config, dict):
        raise InputError(f"{where}: not a JSON object")
    top = validate(ConfigFields, config, where)
    if top.text_config is not None:
        validate(ConfigFields, top.text_config, f"{where} (text_config)")
    text_quant = (top.text_config or {}).get("quantization_config")
    for quant, label in ((top.quantization_config, ""), (text_quant, " (text_config)")):
        if quant is not None:
            validate(QuantizationFields, quant, f"{where}{label} (quantization_config)")
    return config


def load_config(path: Path) -> dict[str, Any]:
    """The checked config.json of the checkpoint folder ``path``."""
    file = path / "config.json"
    if not (file.exists() or file.is_symlink()):
        raise InputError(f"{path}: no config.json (is this a Hugging Face checkpoint folder?)")
    return check_config(read_json(file, "config.json"), str(file))
