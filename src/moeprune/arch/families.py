"""Every supported model family, one declarative `Family` entry each.

Keys are the on-disk names of hub checkpoints (transformers 5.x converts them on load); the
``mem_*`` paths are the module names of the model transformers builds. See
docs/adding-a-family.md for how to add an entry.
"""

from __future__ import annotations

from collections.abc import Callable

from moeprune.arch.spec import Config, ExpertSets, Family, Groups, RouterRows, ScaledInput, SortedGroups
from moeprune.errors import InputError, UnsupportedFamilyError

# --- which decoder layers are MoE layers -------------------------------------------------------


def _n_layers(cfg: Config) -> int:
    return int(cfg["num_hidden_layers"])


def all_layers(cfg: Config) -> list[int]:
    return list(range(_n_layers(cfg)))


def first_k_dense(default: int) -> Callable[[Config], list[int]]:
    """Layers ``>= first_k_dense_replace`` (DeepSeek, GLM)."""

    def rule(cfg: Config) -> list[int]:
        k = cfg.get("first_k_dense_replace", default) or 0
        return [i for i in range(_n_layers(cfg)) if i >= k]

    return rule


def sparse_step(cfg: Config) -> list[int]:
    """Qwen MoE rule: not in ``mlp_only_layers`` and ``(i + 1) % decoder_sparse_step == 0``."""
    step = cfg.get("decoder_sparse_step", 1) or 1
    dense = set(cfg.get("mlp_only_layers") or [])
    return [i for i in range(_n_layers(cfg)) if i not in dense and (i + 1) % step == 0]


def ernie_rule(cfg: Config) -> list[int]:
    """ERNIE-4.5: ``moe_layer_start_index <= i <= moe_layer_end_index`` (-1 = last) and
    ``(i + 1) % moe_layer_interval == 0``."""
    n = _n_layers(cfg)
    start = cfg.get("moe_layer_start_index", 1)
    end = cfg.get("moe_layer_end_index", -1)
    end = n - 1 if end is None or end == -1 else end
    interval = cfg.get("moe_layer_interval", 1) or 1
    return [i for i in range(n) if start <= i <= end and (i + 1) % interval == 0]


def jamba_rule(cfg: Config) -> list[int]:
    """Jamba: ``i % expert_layer_period == expert_layer_offset``."""
    period = cfg.get("expert_layer_period", 2)
    offset = cfg.get("expert_layer_offset", 1)
    return [i for i in range(_n_layers(cfg)) if i % period == offset]


def llama4_rule(cfg: Config) -> list[int]:
    """Llama 4: ``moe_layers`` when given, else every ``interleave_moe_layer_step``-th layer."""
    if cfg.get("moe_layers") is not None:
        return sorted(int(i) for i in cfg["moe_layers"])
    step = cfg.get("interleave_moe_layer_step", 1) or 1
    return list(range(step - 1, _n_layers(cfg), step))


def num_dense_layers(cfg: Config) -> list[int]:
    """LFM2-MoE: the first ``num_dense_layers`` layers are dense."""
    k = cfg.get("num_dense_layers", 2)
    return [i for i in range(_n_layers(cfg)) if i >= k]


def after_first(cfg: Config) -> list[int]:
    """Layer 0 dense, every other layer MoE (MiMo-V2-Flash, HY-V3: the transformers default)."""
    return list(range(1, _n_layers(cfg)))


def mlp_layer_types(fallback: Callable[[Config], list[int]]) -> Callable[[Config], list[int]]:
    """Families whose transformers config writes ``mlp_layer_types`` ("dense" / "sparse" per layer,
    the list the model reads): its "sparse" layers; hub configs that lack the list: ``fallback``."""

    def rule(cfg: Config) -> list[int]:
        types = cfg.get("mlp_layer_types")
        if isinstance(types, list) and len(types) == _n_layers(cfg):
            return [i for i, t in enumerate(types) if t == "sparse"]
        return fallback(cfg)

    return rule


# M1: GLM-5-Next


def after_first_three(cfg: Config) -> list[int]:
    """GLM-5-Next without ``mlp_layer_types``: transformers makes the first three layers dense
    (whatever ``first_k_dense_replace`` says)."""
    return list(range(min(3, _n_layers(cfg)), _n_layers(cfg)))


def minimax_m3_rule(cfg: Config) -> list[int]:
    """MiniMax-M3: ``mlp_layer_types`` "sparse", else the hub's ``moe_layer_freq`` (1 = MoE, per
    layer), else every layer (transformers' defaults, in that order)."""
    freq = cfg.get("moe_layer_freq")
    if not isinstance(cfg.get("mlp_layer_types"), list) and isinstance(freq, list):
        return [i for i, f in enumerate(freq[: _n_layers(cfg)]) if f]
    return mlp_layer_types(all_layers)(cfg)


def step3p7_rule(cfg: Config) -> list[int]:
    """Step-3.7: ``mlp_layer_types`` "sparse", else the hub's ``moe_layers_enum`` (MoE layer ids, a
    comma-separated string or a list), else layers 3 and up (transformers' defaults, in that order)."""
    enum = cfg.get("moe_layers_enum")
    if isinstance(cfg.get("mlp_layer_types"), list) or enum is None:
        return mlp_layer_types(lambda c: list(range(3, _n_layers(c))))(cfg)
    items = enum.split(",") if isinstance(enum, str) else enum
    ids = {int(i) for i in items if str(i).strip()}
    return [i for i in range(_n_layers(cfg)) if i in ids]


# X: dots3_note


def dots3_rule(cfg: Config) -> list[int]:
    """dots3 without ``mlp_layer_types``: layers ``>= first_k_dense_replace`` (default 1) that the
    hub's ``moe_layer_freq`` list marks 1 (every layer when it is absent), as transformers derives it."""
    k = cfg.get("first_k_dense_replace", 1) or 0
    freq = cfg.get("moe_layer_freq")
    return [i for i in range(_n_layers(cfg)) if i >= k and (not isinstance(freq, list) or bool(freq[i]))]


# S: layer counts and MoE layers of configs without num_hidden_layers (DBRX, Nemotron-H)


def dbrx_layer_count(cfg: Config) -> int:
    """DBRX counts its decoder layers (``transformer.blocks``) in ``n_layers``."""
    n = cfg.get("n_layers")
    if n is None:
        raise InputError("config.json has no n_layers (DBRX's decoder layer count)")
    return int(n)


def dbrx_layers(cfg: Config) -> list[int]:
    """DBRX: every one of the ``n_layers`` blocks has routed experts."""
    return list(range(dbrx_layer_count(cfg)))


_NEMOTRON_PATTERN = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}
"""The hub's ``hybrid_override_pattern``, one character per layer (transformers' mapping)."""


def nemotron_block_types(cfg: Config) -> list[str] | None:
    """Nemotron-H's layer types: ``layers_block_type`` (what transformers writes; its length is the
    layer count, ``num_hidden_layers`` is not written), else the hub's ``hybrid_override_pattern``."""
    types = cfg.get("layers_block_type")
    if isinstance(types, list):
        return [str(t) for t in types]
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        return [_NEMOTRON_PATTERN.get(c, c) for c in pattern]
    return None


def nemotron_layer_count(cfg: Config) -> int:
    types = nemotron_block_types(cfg)
    if types is None:
        raise InputError("config.json has neither layers_block_type nor hybrid_override_pattern (Nemotron-H's layers)")
    return len(types)


def nemotron_layers(cfg: Config) -> list[int]:
    """Nemotron-H: the "moe" layers ("E" in the pattern); the others are Mamba, attention or MLP."""
    return [i for i, t in enumerate(nemotron_block_types(cfg) or []) if t == "moe"]


# --- group-limited routing ---------------------------------------------------------------------


def v3_groups(cfg: Config) -> Groups | None:
    """DeepSeek-V3 style: a group scores as the sum of its top-2 biased scores."""
    n_group = cfg.get("n_group") or cfg.get("num_expert_group") or 1  # Kimi-Linear: num_expert_group
    if n_group <= 1:
        return None
    return Groups(int(n_group), int(cfg.get("topk_group") or n_group), min_per_group=2)


def v2_groups(cfg: Config) -> Groups | None:
    """DeepSeek-V2 ``group_limited_greedy``: a group scores as its best expert."""
    n_group = cfg.get("n_group") or 1
    if cfg.get("topk_method") != "group_limited_greedy" or n_group <= 1:
        return None
    return Groups(int(n_group), int(cfg.get("topk_group") or n_group), min_per_group=1)


# --- tiny test models ----------------------------------------------------------------------------

_TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
_E8K2 = dict(num_experts_per_tok=2)
_MLA = dict(num_key_value_heads=4, head_dim=8, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)


def _tiny(**over: object) -> dict[str, object]:
    return {**_TINY, **over}


_TINY_SAM = dict(
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=64,
    patch_size=16,
    global_attn_indexes=[0],
    window_size=2,
    mlp_dim=32,
    downsample_channels=[16, 32],
)
"""The SAM image encoder of the DeepSeek-OCR families' tiny configs."""


# --- the registry --------------------------------------------------------------------------------

_ENTRIES = [
    Family(
        "mixtral",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        mem_router="mlp.gate",
        tiny=_tiny(num_local_experts=8, **_E8K2),
        notes="per-expert w1/w3/w2; softmax, top-k, renormalise",
    ),
    Family(
        "qwen2_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        mem_router="mlp.gate",
        tiny=_tiny(
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[0],
            **_E8K2,
        ),
        notes="gated shared expert (kept); mlp_only_layers / decoder_sparse_step",
    ),
    Family(
        "qwen3_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        mem_router="mlp.gate",
        tiny=_tiny(num_experts=8, moe_intermediate_size=32, norm_topk_prob=True, **_E8K2),
        notes="per-expert; norm_topk_prob decides renormalisation",
    ),
    Family(
        "qwen3_next",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        mtp="mtp.layers",
        mem_router="mlp.gate",
        tiny=_tiny(
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            linear_num_value_heads=4,
            linear_num_key_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            **_E8K2,
        ),
        notes="hybrid linear attention; gated shared expert (kept)",
    ),
    Family(
        "qwen3_5_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        layers="model.language_model.layers",
        nested=True,
        mtp="mtp.layers",
        mem_router="mlp.gate",
        tiny_fused=True,
        tiny=dict(
            text_config=_tiny(
                num_hidden_layers=2,
                num_experts=8,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                layer_types=["linear_attention", "full_attention"],
                linear_num_value_heads=4,
                linear_num_key_heads=2,
                linear_key_head_dim=16,
                linear_value_head_dim=16,
                **_E8K2,
            ),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=64,
                patch_size=2,
                spatial_merge_size=1,
                temporal_patch_size=1,
            ),
        ),
        notes="nested text_config; experts fused on disk (gate_up_proj, down_proj)",
    ),
    Family(
        "olmoe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        mem_router="mlp.gate",
        tiny=_tiny(num_experts=8, **_E8K2),
        notes="softmax, top-k, no renormalisation",
    ),
    Family(
        "deepseek_v2",
        count_keys=("n_routed_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(0),
        groups=v2_groups,
        mem_router="mlp.gate",
        tiny=_tiny(
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            q_lora_rank=None,
            topk_method="greedy",  # as DeepSeek-V2-Lite's config.json (serving engines read these)
            n_group=1,
            topk_group=1,
            scoring_func="softmax",
            **_MLA,
            **_E8K2,
        ),
        notes="first_k_dense_replace; shared experts (kept); optional group_limited_greedy",
    ),
    Family(
        "deepseek_v3",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(3),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            q_lora_rank=32,
            topk_method="noaux_tc",  # as DeepSeek-V3's config.json: vLLM loads the correction bias only then
            scoring_func="sigmoid",
            **_MLA,
            **_E8K2,
        ),
        notes="sigmoid + correction bias; group-limited (n_group, topk_group)",
    ),
    Family(
        "glm4_moe",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias)",
    ),
    Family(
        "gpt_oss",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        router="router.weight",
        sliced=(("router.bias", 0),),
        mem_router="mlp.router",
        tiny=_tiny(
            num_local_experts=8,
            intermediate_size=32,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            **_E8K2,
        ),
        notes="fused, transposed, interleaved gate/up; router bias; expert biases",
    ),
    Family(
        "phimoe",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        mem_router="mlp.router",
        # as Phi-3.5-MoE's config.json: vLLM dispatches on this architecture name and assumes the biases
        tiny=_tiny(
            num_local_experts=8,
            architectures=["PhiMoEForCausalLM"],
            attention_bias=True,
            lm_head_bias=True,
            **_E8K2,
        ),
        notes="sparsemixer routing; per-expert w1/w3/w2",
    ),
    Family(
        "granitemoe",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        router="router.layer.weight",
        fused=("input_linear.weight", "output_linear.weight"),
        mem_experts="block_sparse_moe.experts",
        mem_router="block_sparse_moe.router",
        tiny=_tiny(num_local_experts=8, **_E8K2),
        notes="fused on disk (input_linear, output_linear); top-k then softmax",
    ),
    Family(
        "ernie4_5_moe",
        count_keys=("moe_num_experts", "num_experts"),
        topk_keys=("moe_k", "num_experts_per_tok"),
        moe_layers=ernie_rule,
        sliced=(("moe_statics.e_score_correction_bias", 1),),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.moe_statics.e_score_correction_bias",
        tiny=_tiny(
            moe_num_experts=8,
            moe_k=2,
            moe_intermediate_size=32,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
            moe_layer_end_index=-1,
        ),
        notes="[1, E] correction bias added to probabilities; layer 0 dense",
    ),
    Family(
        "minimax_m2",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        sliced=(("e_score_correction_bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.e_score_correction_bias",
        # as MiniMax-M2's config.json (vLLM reads these; rotary_dim = head_dim: transformers rotates it all)
        tiny=_tiny(
            num_local_experts=8,
            scoring_func="sigmoid",
            use_routing_bias=True,
            rotary_dim=_TINY["head_dim"],
            **_E8K2,
        ),
        notes="sigmoid + correction bias on the block",
    ),
    Family(
        "hunyuan_v1_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("moe_topk", "num_experts_per_tok"),
        moe_layers=all_layers,
        router="gate.wg.weight",
        mem_router="mlp.gate.wg",
        # transformers sizes the experts by intermediate_size, vLLM by moe_intermediate_size: equal, as on the hub
        tiny=_tiny(num_experts=8, moe_topk=2, moe_intermediate_size=_TINY["intermediate_size"]),
        notes="shared_mlp (kept); softmax, top-k, renormalise",
    ),
    Family(
        "jamba",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=jamba_rule,
        block="feed_forward",
        router="router.weight",
        mem_experts="feed_forward.experts",
        mem_router="feed_forward.router",
        tiny=_tiny(
            num_experts=8,
            num_hidden_layers=4,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_expand=2,
            mamba_dt_rank=8,
            **_E8K2,
        ),
        notes="Mamba hybrid; expert_layer_period / expert_layer_offset",
    ),
    Family(
        "llama4_text",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=llama4_rule,
        block="feed_forward",
        router="router.weight",
        mem_experts="feed_forward.experts",
        scaled_input=ScaledInput(gate_up="gate_up_proj", down="down_proj", act="act_fn"),
        mem_router="feed_forward.router",
        tiny=_tiny(
            num_local_experts=8,
            num_experts_per_tok=1,
            intermediate_size=32,
            intermediate_size_mlp=96,
            interleave_moe_layer_step=2,
        ),
        notes="fused, transposed; shared expert (kept); moe_layers / interleave step",
    ),
    Family(
        "llama4",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=llama4_rule,
        layers="language_model.model.layers",
        nested=True,
        block="feed_forward",
        router="router.weight",
        mem_experts="feed_forward.experts",
        scaled_input=ScaledInput(gate_up="gate_up_proj", down="down_proj", act="act_fn"),
        mem_router="feed_forward.router",
        tiny=dict(
            text_config=_tiny(
                num_local_experts=8,
                num_experts_per_tok=1,
                intermediate_size=32,
                intermediate_size_mlp=96,
                interleave_moe_layer_step=2,
            ),
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=28,
                patch_size=14,
                vision_output_dim=32,
                projector_input_dim=32,
                projector_output_dim=32,
            ),
        ),
        notes="the hub's Llama-4 Scout/Maverick: llama4_text under language_model., vision tower kept",
    ),
    Family(
        "lfm2_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=num_dense_layers,
        block="feed_forward",
        sliced=(("expert_bias", 0),),
        mem_experts="feed_forward.experts",
        mem_router="feed_forward.gate",
        mem_bias="feed_forward.expert_bias",
        tiny=_tiny(
            num_experts=8,
            moe_intermediate_size=32,
            num_dense_layers=1,
            layer_types=["conv", "full_attention", "conv"],
            tie_word_embeddings=True,  # as LFM2-8B-A1B (vLLM always ties them)
            **_E8K2,
        ),
        notes="sigmoid + expert_bias; num_dense_layers",
    ),
    # --- families added for issue 15 (docs/families.md says what is special about each) ----------
    Family(
        "deepseek_v32",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(3)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["DeepseekV32ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            q_lora_rank=32,
            index_n_heads=2,
            index_head_dim=16,
            index_topk=8,
            **_MLA,
            **_E8K2,
        ),
        notes="as DeepSeek-V3; sparse-attention indexer (self_attn.indexer, kept); mlp_layer_types",
    ),
    Family(
        "glm_moe_dsa",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(3)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["GlmMoeDsaForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            q_lora_rank=32,
            index_n_heads=2,
            index_head_dim=16,
            index_topk=8,
            **_MLA,
            **_E8K2,
        ),
        notes="GLM-5: as DeepSeek-V3.2 (sigmoid + correction bias, DSA indexer kept)",
    ),
    Family(
        "glm4_moe_lite",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["Glm4MoeLiteForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            topk_method="noaux_tc",
            routed_scaling_factor=1.8,
            norm_topk_prob=True,
            q_lora_rank=32,
            **_MLA,
            **_E8K2,
        ),
        notes="GLM-4.7-Flash: MLA attention; as DeepSeek-V3 (sigmoid + correction bias); layer 0 dense",
    ),
    Family(
        "dots1",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(0),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["Dots1ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=2,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias); first_k_dense_replace (class default 0)",
    ),
    Family(
        "solar_open",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["SolarOpenForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.0,
            norm_topk_prob=True,
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias) in every layer",
    ),
    Family(
        "exaone_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        sliced=(("e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["ExaoneMoeForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            num_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            sliding_window=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            **_E8K2,
        ),
        notes="K-EXAONE: sigmoid + correction bias stored on the block (mlp.e_score_correction_bias)",
    ),
    Family(
        "kimi_linear",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_token", "num_experts_per_tok"),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        block="block_sparse_moe",
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["KimiLinearForCausalLM"],
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_token=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            first_k_dense_replace=1,
            num_expert_group=1,
            topk_group=1,
            moe_renormalize=True,
            moe_router_activation_func="sigmoid",
            routed_scaling_factor=2.446,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            linear_head_dim=16,
            linear_num_heads=4,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
        ),
        notes="KDA linear-attention hybrid; sigmoid + correction bias (num_expert_group); per-expert w1/w3/w2",
    ),
    Family(
        "minimax",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        mem_router="mlp.gate",
        tiny=_tiny(
            architectures=["MiniMaxForCausalLM"],
            num_local_experts=8,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            **_E8K2,
        ),
        notes="MiniMax-Text-01 / M1: lightning-attention hybrid; as Mixtral (softmax, top-k, renormalise)",
    ),
    Family(
        "flex_olmo",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        mem_router="mlp.gate",
        tiny=_tiny(
            architectures=["FlexOlmoForCausalLM"],
            num_experts=8,
            norm_topk_prob=False,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
            **_E8K2,
        ),
        notes="as OLMoE (softmax, top-k, norm_topk_prob)",
    ),
    Family(
        "afmoe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=num_dense_layers,
        router="router.gate.weight",
        sliced=(("expert_bias", 0),),
        mem_router="mlp.router.gate",
        mem_bias="mlp.expert_bias",
        tiny=_tiny(
            architectures=["AfmoeForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            num_shared_experts=1,
            num_dense_layers=1,
            route_scale=2.0,
            score_func="sigmoid",  # the hub config's routing keys (vLLM reads them; transformers hard-codes them)
            route_norm=True,
            n_group=1,
            topk_group=1,
            global_attn_every_n_layers=2,
            sliding_window=16,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
            **_E8K2,
        ),
        notes="Arcee AFMoE: sigmoid + expert_bias on the block, renormalise, x route_scale; num_dense_layers",
    ),
    Family(
        "bailing_hybrid",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_token", "num_experts_per_tok"),
        moe_layers=mlp_layer_types(first_k_dense(2)),
        sliced=(("gate.expert_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["BailingHybridForCausalLM"],
            num_key_value_heads=4,
            num_experts=8,
            num_experts_per_token=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            first_k_dense_replace=1,
            num_expert_group=2,
            topk_group=1,
            moe_renormalize=True,
            routed_scaling_factor=2.5,
            score_function="sigmoid",
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            layer_group_size=2,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
        ),
        notes="Ring/Ling linear hybrid: sigmoid + expert_bias (gate.expert_bias on disk), group-limited",
    ),
    Family(
        "cohere2_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(all_layers),
        mem_router="mlp.gate",
        tiny=_tiny(
            architectures=["Cohere2MoeForCausalLM"],
            num_experts=8,
            expert_selection_fn="softmax",
            sliding_window=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            **_E8K2,
        ),
        notes="top-k on logits, then softmax over the k (or sigmoid, expert_selection_fn); mlp_layer_types",
    ),
    Family(
        "laguna",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["LagunaForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_layer_types=["dense", "sparse", "sparse"],
            moe_router_logit_softcapping=30.0,
            sliding_window=16,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
            **_E8K2,
        ),
        notes="sigmoid + correction bias stored under experts (mlp.experts.e_score_correction_bias), softcap",
    ),
    Family(
        "granitemoeshared",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        router="router.layer.weight",
        fused=("input_linear.weight", "output_linear.weight"),
        mem_experts="block_sparse_moe.experts",
        mem_router="block_sparse_moe.router",
        tiny=_tiny(
            architectures=["GraniteMoeSharedForCausalLM"], num_local_experts=8, shared_intermediate_size=48, **_E8K2
        ),
        notes="as Granite-MoE (fused input_linear / output_linear); shared_mlp (kept)",
    ),
    Family(
        "granitemoehybrid",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        router="router.layer.weight",
        fused=("input_linear.weight", "output_linear.weight"),
        mem_experts="block_sparse_moe.experts",
        mem_router="block_sparse_moe.router",
        tiny=_tiny(
            architectures=["GraniteMoeHybridForCausalLM"],
            num_local_experts=8,
            shared_intermediate_size=48,
            layer_types=["mamba", "attention", "mamba"],
            mamba_n_heads=4,
            mamba_d_head=32,
            mamba_d_state=16,
            mamba_chunk_size=16,
            **_E8K2,
        ),
        notes="Granite-4.0-H: Mamba-2 hybrid; as Granite-MoE (fused); shared_mlp (kept)",
    ),
    Family(
        "granitemoe_swa",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="block_sparse_moe",
        router="router.weight",
        mem_experts="block_sparse_moe.experts",
        mem_router="block_sparse_moe.router",
        tiny=_tiny(
            architectures=["GraniteMoeSWAForCausalLM"],
            num_local_experts=8,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            sliding_window=16,
            **_E8K2,
        ),
        notes="Granite-MoE with sliding-window layers; fused experts.gate_up_proj / down_proj on disk",
    ),
    Family(
        "sarvam_moe",
        count_keys=("n_routed_experts", "num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        sliced=(("gate.expert_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["SarvamMoEForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=1,
            **_E8K2,
        ),
        notes="Sarvam-30B (runs as GLM-4.5 in transformers): sigmoid + gate.expert_bias; fused q/k/v kept",
    ),
    Family(
        "gemma4",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("top_k_experts", "num_experts_per_tok"),
        moe_layers=all_layers,
        layers="model.language_model.layers",
        nested=True,
        block="",
        router="router.proj.weight",
        sliced=(("router.per_expert_scale", 0),),
        mem_experts="experts",
        mem_router="router.proj",
        tiny=dict(
            architectures=["Gemma4ForConditionalGeneration"],
            tie_word_embeddings=True,
            text_config=_tiny(
                enable_moe_block=True,
                num_experts=8,
                top_k_experts=2,
                moe_intermediate_size=32,
                hidden_size_per_layer_input=0,
                vocab_size_per_layer_input=128,
                global_head_dim=16,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                sliding_window=16,
                tie_word_embeddings=True,
                pad_token_id=0,
                eos_token_id=1,
                bos_token_id=2,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=16,
                patch_size=4,
                position_embedding_size=64,
                pooling_kernel_size=1,
            ),
            audio_config=None,
        ),
        notes="router and fused experts on the decoder layer beside a dense MLP (kept); x per_expert_scale",
    ),
    Family(
        "mellum",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(all_layers),
        mem_router="mlp.gate",
        tiny=_tiny(architectures=["MellumForCausalLM"], num_local_experts=8, norm_topk_prob=True, **_E8K2),
        notes="softmax, top-k, norm_topk_prob; mlp_layer_types",
    ),
    Family(
        "mimo_v2_flash",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(after_first),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["MiMoV2FlashForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_group=1,
            topk_group=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            norm_topk_prob=True,
            v_head_dim=16,
            sliding_window=16,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            # the hub config's own keys for the same layout (vLLM reads them; transformers derives its own)
            hybrid_layer_pattern=[0, 1, 1],
            moe_layer_freq=[0, 1, 1],
            layernorm_epsilon=1e-5,
            swa_num_attention_heads=4,
            swa_num_key_value_heads=4,
            swa_head_dim=16,
            swa_v_head_dim=16,
            sliding_window_size=16,
            add_swa_attention_sink_bias=True,
            add_full_attention_sink_bias=False,
            rope_theta=5e6,
            swa_rope_theta=1e4,
            partial_rotary_factor=0.334,
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias), no shared expert; layer 0 dense",
    ),
    Family(
        "hy_v3",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(after_first),
        router="router.gate.weight",
        sliced=(("expert_bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.e_score_correction_bias",
        tiny=_tiny(
            architectures=["HYV3ForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            num_shared_experts=1,
            router_scaling_factor=2.826,
            first_k_dense_replace=1,  # the hub config's keys (vLLM reads them; transformers derives them)
            expert_hidden_dim=32,
            route_norm=True,
            qk_norm=True,
            **_E8K2,
        ),
        notes="Tencent Hy3: sigmoid + expert_bias on the block (router.gate on disk), renormalise, x scale",
    ),
    Family(
        "axk1",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["AXK1ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            topk_method="noaux_tc",
            scoring_func="sigmoid",
            routed_scaling_factor=2.5,
            q_lora_rank=32,
            **_MLA,
            **_E8K2,
        ),
        notes="A.X K1: MLA; as DeepSeek-V3 (sigmoid + correction bias, group-limited)",
    ),
    Family(
        "minicpm5_moe",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["MiniCPM5MoeForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=3.66,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias); gated attention",
    ),
    Family(
        "param2moe",
        count_keys=("n_routed_experts", "num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        sliced=(("gate.expert_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=2,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=3,
            **_E8K2,
        ),
        notes="as Sarvam-MoE (runs as GLM-4.5 in transformers): sigmoid + gate.expert_bias",
    ),
    Family(
        "sarvam_mla",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            q_lora_rank=None,
            **_MLA,
            **_E8K2,
        ),
        notes="Sarvam-105B (runs as DeepSeek-V3 in transformers): MLA; sigmoid + correction bias",
    ),
    Family(
        "axk2",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["AXK2ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            routed_scaling_factor=2.5,
            q_lora_rank=32,
            index_n_heads=2,
            index_head_dim=16,
            index_topk=8,
            gated_norm_rank=4,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=1,
            **_MLA,
            **_E8K2,
        ),
        notes="A.X K2: MLA + sparse-attention indexer (kept); as DeepSeek-V3 (sigmoid + correction bias)",
    ),
    Family(
        "flint",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        mem_router="mlp.gate",
        tiny=_tiny(
            architectures=["FlintForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[0],
            norm_topk_prob=True,
            **_E8K2,
        ),
        notes="sigmoid top-k without bias, renormalise; shared expert (kept); mlp_only_layers / sparse step",
    ),
    Family(
        "beam",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(3)),
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["BeamForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            mlp_layer_types=["dense", "sparse", "sparse"],
            n_group=2,
            topk_group=1,
            routed_scaling_factor=2.5,
            sliding_window=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **_E8K2,
        ),
        notes="as DeepSeek-V3 (sigmoid + correction bias, group-limited); x scale after the experts",
    ),
    Family(
        "lara_mini",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        mem_router="mlp.gate",
        tiny=_tiny(
            architectures=["LaraMiniForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
            layer_types=["linear_attention", "sliding_attention", "linear_attention"],
            sliding_window=16,
            linear_num_value_heads=4,
            linear_num_key_heads=2,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            tie_word_embeddings=True,
            **_E8K2,
        ),
        notes="linear-attention hybrid; softmax, top-k, renormalise; fused experts on disk; shared expert (kept)",
    ),
    Family(
        "kolibri1",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="",  # the selection bias is outside the MoE block: keys are relative to the layer
        router="mlp.gate.weight",
        experts="mlp.experts",
        sliced=(("moe.router.expert_bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["Kolibri1ForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
            sliding_window=16,
            **_E8K2,
        ),
        notes="top-k on logits + bias, sigmoid of the chosen; selection bias at moe.router.expert_bias",
    ),
    Family(
        "kolibri1_1",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        block="",  # as kolibri1
        router="mlp.gate.weight",
        experts="mlp.experts",
        sliced=(("moe.router.expert_bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["Kolibri1_1ForCausalLM"],
            num_experts=8,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=True,
            sliding_window=16,
            mlp_only_layers=[0],
            mlp_only_intermediate_size=96,
            index_num_heads=1,
            index_topk=8,
            **_E8K2,
        ),
        notes="as kolibri1, with a sparse-attention indexer (kept) and mlp_only_layers",
    ),
    # --- H: hash-routed families (DeepSeek-V4) ---
    Family(
        "deepseek_v4",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,  # every layer: "hash_moe" (table-routed) or "moe" (mlp_layer_types)
        layers="layers",  # hub keys have no "model." prefix (layers.{L}.ffn..., embed.weight, head.weight)
        block="ffn",
        sliced=(("gate.bias", 0),),  # selection bias of the score-routed layers (e_score_correction_bias)
        id_tables=(("gate.tid2eid", "mlp.gate.tid2eid"),),  # hash layers: [vocab, k] expert ids per token id
        mtp="mtp",
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["DeepseekV4ForCausalLM"],
            n_routed_experts=8,
            num_experts_per_tok=3,
            n_shared_experts=1,
            intermediate_size=32,  # an alias of moe_intermediate_size in this config class (attribute_map)
            moe_intermediate_size=32,
            num_key_value_heads=1,
            head_dim=32,
            qk_rope_head_dim=8,
            q_lora_rank=32,
            o_groups=2,
            o_lora_rank=16,
            index_n_heads=2,
            index_head_dim=16,
            index_topk=4,
            sliding_window=16,
            hc_mult=4,
            num_hash_layers=2,
            compress_ratios=[0, 4, 128],
            topk_method="noaux_tc",
            scoring_func="sqrtsoftplus",
            norm_topk_prob=True,
            routed_scaling_factor=1.5,
            swiglu_limit=10.0,
            num_nextn_predict_layers=1,
        ),
        notes="hash-routed first layers (gate.tid2eid re-routed, io/idtable.py); sqrtsoftplus + bias; "
        "hyper-connections and compressor attention kept",
    ),
    # --- K: families whose decoder layers carry state between layers ---
    Family(
        "hy_v4",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(after_first),
        mtp="model.mtp_layers",  # the next-n layers transformers does not load (_keys_to_ignore_on_load_unexpected)
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["HYV4ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=24,  # 2I != H: the fused tensors' axes cannot be confused
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=2.827,
            norm_topk_prob=True,
            q_lora_rank=32,
            index_n_heads=2,
            index_head_dim=16,
            index_topk=8,
            hc_mult=2,
            swiglu_limit=0.3,  # small, so that the tiny's expert activations reach the clamp
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=1,
            **_MLA,
            **_E8K2,
        ),
        notes="Tencent Hy-V4: as DeepSeek-V3 with fused experts; clamped SwiGLU; hyper-connection streams; "
        "a V3.2 indexer whose top-k later layers may share (carried by calibration)",
    ),
    # --- R: routers with extra rows / transposed routers ---
    Family(
        "longcat_flash",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("moe_topk", "num_experts_per_tok"),
        n_layers=lambda cfg: cfg.get("num_layers"),  # each layer: two attention blocks, two MLPs, one MoE
        moe_layers=lambda cfg: list(range(int(cfg["num_layers"]))),
        router="router.classifier.weight",
        sliced=(("router.e_score_correction_bias", 0), ("router.classifier.bias", 0)),
        router_rows=RouterRows(
            extra=lambda cfg: int(cfg.get("zero_expert_num") or 0),  # zero-computation (identity) experts
            tensors=("router.e_score_correction_bias", "router.classifier.bias"),
            zero_weight_slots=True,
        ),
        mem_router="mlp.router.classifier",
        mem_bias="mlp.router.e_score_correction_bias",
        tiny=dict(
            architectures=["LongcatFlashForCausalLM"],
            hidden_size=64,
            num_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=128,
            max_position_embeddings=256,
            ffn_hidden_size=96,
            expert_ffn_hidden_size=32,
            n_routed_experts=8,
            zero_expert_num=4,
            zero_expert_type="identity",
            moe_topk=2,
            norm_topk_prob=False,  # as LongCat-Flash-Chat's config.json (transformers never renormalises)
            routed_scaling_factor=6.0,
            router_bias=False,
            q_lora_rank=32,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            head_dim=8,
            mla_scale_q_lora=True,
            mla_scale_kv_lora=True,
            tie_word_embeddings=False,
        ),
        notes="zero-computation experts: router rows n_routed_experts + zero_expert_num (extra rows kept); num_layers",
    ),
    Family(
        "inkling_mm_model",
        count_keys=("n_routed_experts",),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(
            lambda cfg: [i for i in range(_n_layers(cfg)) if i >= int(cfg.get("dense_mlp_idx") or 0)]
        ),
        layers="model.llm.layers",  # the hub's names (model.language_model.layers in memory)
        nested=True,
        sliced=(("gate.bias", 0),),  # the selection bias (e_score_correction_bias in memory), E entries
        router_rows=RouterRows(extra=lambda cfg: int(cfg.get("n_shared_experts") or 0)),  # shared-expert sink rows
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["InklingForConditionalGeneration"],
            text_config=dict(
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=2,
                swa_head_dim=16,
                sliding_window_size=16,
                local_layer_ids=[0, 1],
                d_rel=4,
                rel_extent=32,
                vocab_size=128,
                max_position_embeddings=256,
                intermediate_size=96,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=2,
                shared_expert_sink=True,
                route_scale=8.0,
                dense_mlp_idx=1,
            ),
            vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=4),
            audio_config=dict(n_mel_bins=8, mel_vocab_size=16),
        ),
        notes="router rows n_routed_experts + n_shared_experts (shared-expert sinks, kept); selection bias gate.bias",
    ),
    Family(
        "ergo",
        count_keys=("num_experts",),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(
            lambda cfg: [i for i in range(_n_layers(cfg)) if i >= int(cfg.get("num_dense_blocks", 1) or 0)]
        ),
        layers="layers",  # the hub's keys have no "model." prefix
        block="feed_forward",
        router="gate_kernel",  # stored [H, E]: experts on axis 1 (transposed on load)
        router_rows=RouterRows(axis=1),
        # the selection bias and each expert's output RMSNorm scale [E, H]: sliced with the experts, not
        # pooled by weight criteria (a norm scale, like a bias)
        sliced=(("router_bias", 0), ("expert_output_norm.scale", 0)),
        fused=("up_proj", "down_proj"),  # non-gated relu² experts, [E, H, I] and [E, I, H]
        mem_router="mlp.gate.linear",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=_tiny(
            architectures=["ErgoForCausalLM"],
            first_dense_intermediate_size=96,
            num_dense_blocks=1,
            moe_intermediate_size=32,
            shared_intermediate_size=48,
            num_experts=8,
            sliding_window=16,
            global_attention_every_n_layers=2,
            **_E8K2,
        ),
        notes="transposed router gate_kernel [H, E]; keys without model.; non-gated relu² experts, per-expert norm",
    ),
    Family(
        "zaya",
        count_keys=("num_experts",),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        router="gate.router_mlp.out_proj.weight",  # the last layer of an MLP router, E + 1 outputs
        sliced=(("gate.balancing_biases", 0),),
        router_rows=RouterRows(
            extra=lambda cfg: 1,  # the skip expert (no computation), the router's last class
            tensors=("gate.balancing_biases",),
            zero_weight_slots=True,
        ),
        mem_router="mlp.gate.router_mlp.out_proj",
        mem_bias="mlp.gate.balancing_biases",
        tiny=_tiny(
            architectures=["ZayaForCausalLM"],
            num_hidden_layers=2,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=1,
            router_hidden_size=16,
            tie_word_embeddings=True,
            initializer_range=0.5,  # a random router that spreads tokens over the experts (0.02: one expert)
        ),
        notes="MLP router with E + 1 outputs (the last: a skip expert, kept); balancing_biases [E + 1]; top-1",
    ),
    # --- S: row-blocked experts, coupled expert sets, non-gated experts ---
    Family(
        "nemotron_h",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        n_layers=nemotron_layer_count,
        moe_layers=nemotron_layers,
        layers="backbone.layers",
        block="mixer",
        mtp="mtp.layers",  # Nemotron-3 Super: mtp.layers.{k} after mtp_hybrid_override_pattern ("*E")
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mixer.gate",
        mem_experts="mixer.experts",
        mem_bias="mixer.gate.e_score_correction_bias",
        # as Nemotron-3-Nano-30B-A3B's config.json (layers_block_type: what transformers writes for its pattern)
        tiny=dict(
            architectures=["NemotronHForCausalLM"],
            hidden_size=64,
            vocab_size=128,
            max_position_embeddings=256,
            layers_block_type=["linear_attention", "moe", "full_attention", "moe"],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=96,
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=48,
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            mlp_hidden_act="relu2",
            mamba_num_heads=4,
            mamba_head_dim=16,
            ssm_state_size=16,
            n_groups=2,
            chunk_size=16,
            tie_word_embeddings=False,
        ),
        notes="Mamba hybrid (layers_block_type / hybrid_override_pattern); non-gated ReLU² experts (up, down)",
    ),
    Family(
        "dbrx",
        count_keys=("moe_num_experts",),
        topk_keys=("moe_top_k",),
        counts_in="ffn_config",
        n_layers=dbrx_layer_count,
        moe_layers=dbrx_layers,
        layers="transformer.blocks",
        block="ffn",
        router="router.layer.weight",
        row_blocks=("experts.mlp.w1", "experts.mlp.v1", "experts.mlp.w2"),
        mem_router="ffn.router.layer",
        mem_experts="ffn.experts",
        # as dbrx-instruct's config.json: counts inside ffn_config, n_layers, d_model
        tiny=dict(
            architectures=["DbrxForCausalLM"],
            d_model=64,
            n_heads=4,
            n_layers=2,
            max_seq_len=256,
            vocab_size=128,
            attn_config=dict(kv_n_heads=2, clip_qkv=8.0, rope_theta=500000.0),
            ffn_config=dict(
                ffn_hidden_size=32,
                moe_num_experts=8,
                moe_top_k=2,
                moe_jitter_eps=0.01,
                moe_loss_weight=0.05,
            ),
            tie_word_embeddings=False,
        ),
        notes="2-D fused experts w1/v1/w2 [E·I, H] (blocks of rows); counts in ffn_config; n_layers",
    ),
    Family(
        "jetmoe",
        count_keys=("num_local_experts",),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        block="",  # two expert sets on each decoder layer: mlp.* and self_attention.experts.*
        router="mlp.router.layer.weight",
        expert_sets=ExpertSets(
            routers=("mlp.router.layer.weight", "self_attention.experts.router.layer.weight"),
            fused=(
                ("mlp.input_linear.weight", "mlp.output_linear.weight"),
                ("self_attention.experts.input_linear.weight", "self_attention.experts.output_linear.weight"),
            ),
            mem_routers=("mlp.router.layer", "self_attention.experts.router.layer"),
        ),
        mem_router="mlp.router.layer",
        mem_experts="mlp",
        # --- C: calibration hooks each set's router and output projection (rows sorted by expert) ---
        sorted_groups=SortedGroups(
            routers=("mlp.router", "self_attention.experts.router"),
            outputs=("mlp.output_linear", "self_attention.experts.output_linear"),
        ),
        # as JetMoE-8B's config.json (num_attention_heads = num_key_value_heads × top-k, derived)
        tiny=_tiny(
            architectures=["JetMoeForCausalLM"],
            num_local_experts=8,
            num_experts_per_tok=2,
            intermediate_size=32,
            kv_channels=16,
            num_key_value_heads=2,
        ),
        notes="MLP experts and mixture-of-attention experts, both counted by num_local_experts: two sets",
    ),
    # --- M1: multimodal MoEs (text model), group 1 ---
    Family(
        "qwen3_vl_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        layers="model.language_model.layers",
        nested=True,
        mem_router="mlp.gate",
        tiny_transposed=("experts.gate_up_proj", "experts.down_proj"),
        tiny=dict(
            architectures=["Qwen3VLMoeForConditionalGeneration"],
            text_config=_tiny(
                num_hidden_layers=2,
                num_experts=8,
                moe_intermediate_size=24,
                decoder_sparse_step=1,
                mlp_only_layers=[],
                rope_parameters=dict(
                    rope_type="default", rope_theta=5000000.0, mrope_section=[4, 2, 2], mrope_interleaved=True
                ),
                **_E8K2,
            ),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=64,
                patch_size=2,
                spatial_merge_size=1,
                temporal_patch_size=1,
                num_position_embeddings=16,
                deepstack_visual_indexes=[0],
            ),
        ),
        notes="Qwen3-VL-MoE: as qwen3_moe (softmax top-k, always renormalised) under model.language_model.; "
        "experts fused and stored transposed on disk (gate_up_proj (E, H, 2I), down_proj (E, I, H)); vision tower kept",
    ),
    Family(
        "kimi_k25",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        layers="language_model.model.layers",
        nested=True,
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny_renames=((r"^language_model\.model\.blocks\.", "language_model.model.layers."),),
        tiny=dict(
            architectures=["KimiK25ForConditionalGeneration"],
            text_config=_tiny(
                model_type="kimi_k2",  # as the hub's config.json; transformers reads it as deepseek_v3
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=2,
                topk_group=1,
                q_lora_rank=32,
                topk_method="noaux_tc",
                scoring_func="sigmoid",
                routed_scaling_factor=2.827,
                norm_topk_prob=True,
                **_MLA,
                **_E8K2,
            ),
            vision_config=dict(
                patch_size=2,
                pos_emb_height=4,
                pos_emb_width=4,
                pos_emb_time=1,
                num_attention_heads=2,
                num_hidden_layers=1,
                hidden_size=32,
                intermediate_size=32,
                merge_kernel_size=[2, 2],
            ),
            projection_hidden_size=32,
            tie_word_embeddings=False,
        ),
        notes="Kimi-K2.5: as deepseek_v3 (sigmoid + correction bias, n_group) under language_model.model.; "
        "vision tower kept",
    ),
    Family(
        "glm4v_moe",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(1),
        layers="model.language_model.layers",
        nested=True,
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["Glm4vMoeForConditionalGeneration"],
            text_config=_tiny(
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=2,
                topk_group=1,
                norm_topk_prob=True,
                routed_scaling_factor=1.0,
                attention_bias=True,
                partial_rotary_factor=0.5,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1]),
                **_E8K2,
            ),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                image_size=8,
                patch_size=2,
                spatial_merge_size=1,
                temporal_patch_size=1,
                out_hidden_size=64,
            ),
        ),
        notes="GLM-4.5V: as glm4_moe (sigmoid + correction bias) under model.language_model.; vision tower kept",
    ),
    Family(
        "glm5_next",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(after_first_three),
        layers="model.language_model.layers",
        nested=True,
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["Glm5NextForConditionalGeneration"],
            text_config=_tiny(
                num_hidden_layers=3,
                num_key_value_heads=4,
                mlp_layer_types=["dense", "sparse", "sparse"],
                layer_types=["linear_attention", "indexed_attention", "linear_attention"],
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                n_group=2,
                topk_group=1,
                norm_topk_prob=True,
                routed_scaling_factor=2.5,
                kv_lora_rank=16,
                q_lora_rank=32,
                qk_rope_head_dim=0,
                qk_nope_head_dim=16,
                v_head_dim=16,
                index_topk=16,
                index_kpool=4,
                index_head_dim=16,
                index_n_heads=2,
                linear_head_dim=16,
                linear_num_heads=4,
                hc_mult=2,
                pad_token_id=0,
                **_E8K2,
            ),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                image_size=8,
                patch_size=2,
                spatial_merge_size=1,
                temporal_patch_size=1,
                out_hidden_size=64,
                projection_intermediate_size=32,
            ),
        ),
        notes="GLM-5-Next: as glm_moe_dsa's routing (sigmoid + correction bias) under model.language_model.; "
        "hyper-connection streams, linear attention; vision tower kept",
    ),
    Family(
        "minimax_m3_vl",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=minimax_m3_rule,
        layers="language_model.model.layers",
        nested=True,
        block="block_sparse_moe",
        sliced=(("e_score_correction_bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["MiniMaxM3SparseForConditionalGeneration"],
            text_config=_tiny(
                num_local_experts=8,
                intermediate_size=32,
                dense_intermediate_size=96,
                shared_intermediate_size=32,
                moe_layer_freq=[0, 1, 1],
                layer_types=["full_attention", "minimax_m3_sparse", "minimax_m3_sparse"],
                bos_token_id=1,
                eos_token_id=2,
                rotary_dim=8,
                routed_scaling_factor=2.0,
                index_n_heads=2,
                index_head_dim=16,
                index_block_size=4,
                index_topk_blocks=2,
                **_E8K2,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=8,
                patch_size=2,
            ),
        ),
        notes="MiniMax-M3 (VL): as minimax_m2 routing (sigmoid + bias on the block, renormalised, "
        "x routed_scaling_factor) under language_model.model.; clamped SwiGLU experts; vision tower kept",
    ),
    Family(
        "step3p7",
        count_keys=("moe_num_experts", "n_routed_experts", "num_local_experts"),
        topk_keys=("moe_top_k", "num_experts_per_tok"),
        moe_layers=step3p7_rule,
        layers="model.layers",
        nested=True,
        block="moe",
        router="gate.weight",
        sliced=(("router_bias", 0),),
        experts="",
        fused=("gate_proj.weight", "up_proj.weight", "down_proj.weight"),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["Step3p7ForConditionalGeneration"],
            text_config=_tiny(
                moe_num_experts=8,
                moe_top_k=2,
                moe_intermediate_size=32,
                share_expert_dim=32,
                moe_layers_enum="1,2",
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                sliding_window=16,
                swiglu_limits=[0.0, 0.0, 7.0],
                moe_router_scaling_factor=3.0,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=8,
                patch_size=2,
            ),
        ),
        notes="Step-3.7: sigmoid + moe.router_bias, renormalised, x moe_router_scaling_factor; experts stacked "
        "per layer on disk (moe.gate_proj / up_proj / down_proj.weight [E, ...]); text under model.layers; vision kept",
    ),
    Family(
        "mistral4",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=first_k_dense(0),
        groups=v3_groups,
        mem_router="mlp.gate",
        tiny_fused=True,
        tiny=_tiny(
            architectures=["Mistral4ForCausalLM"],
            n_routed_experts=8,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=2,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=1.5,
            q_lora_rank=32,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            num_key_value_heads=4,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,  # head_dim = 16 = nope + rope, as the config class sets it
            v_head_dim=16,
            rope_parameters=dict(
                type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=64,
                max_position_embeddings=256,
                beta_fast=32.0,
                beta_slow=1.0,
                mscale_all_dim=1.0,
                mscale=1.0,
                llama_4_scaling_beta=0.1,
                partial_rotary_factor=0.5,
            ),
            **_E8K2,
        ),
        notes="Mistral 4 text model: softmax scores, group-limited (top-2 sum per group), renormalised, "
        "x routed_scaling_factor; MLA; fused experts on disk (no conversion entry)",
    ),
    Family(
        "mistral_large4",
        count_keys=("n_routed_experts", "num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        layers="layers",
        nested=True,
        block="",
        router="gate.weight",
        groups=v3_groups,
        mem_router="mlp.gate",
        tiny=dict(
            architectures=["MistralLarge4ForConditionalGeneration"],
            text_config=_tiny(
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                first_k_dense_replace=1,
                n_group=2,
                topk_group=1,
                routed_scaling_factor=1.5,
                num_key_value_heads=4,
                kv_lora_rank=16,
                qk_rope_head_dim=8,
                qk_nope_head_dim=8,
                v_head_dim=16,
                index_topk=16,
                index_head_dim=16,
                index_n_heads=2,
                kv_source_layers=[0, 1, 1],  # layer 2 reuses layer 1's latent KV cache
                indexer_types=["full", "full", "shared"],  # and its index mask
                rope_parameters=dict(
                    rope_type="yarn",
                    rope_theta=10000.0,
                    factor=4.0,
                    original_max_position_embeddings=64,
                    beta_fast=32.0,
                    beta_slow=1.0,
                    attention_factor=1.0,
                ),
                bos_token_id=1,
                eos_token_id=2,
                **_E8K2,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                head_dim=16,
                image_size=8,
                patch_size=2,
            ),
        ),
        notes="Mistral Large 4: as mistral4 routing (softmax, group-limited, renormalised, x routed_scaling_factor); "
        "Mistral's own key names (layers.{L}.gate.weight, layers.{L}.experts.{j}.w1/w2/w3); vision tower kept",
    ),
    # --- M2: multimodal MoEs (text model), group 2 ---
    Family(
        "ernie4_5_vl_moe",
        count_keys=("moe_num_experts", "num_experts"),
        topk_keys=("moe_k", "num_experts_per_tok"),
        moe_layers=mlp_layer_types(ernie_rule),
        nested=True,
        router_rows=RouterRows(axis=1),  # gate.weight / gate.weight_1 are stored [H, E] (Paddle's layout)
        expert_sets=ExpertSets(
            routers=("gate.weight", "gate.weight_1"),  # text, vision
            stacked=("moe_statics.e_score_correction_bias",),  # [2, E]: row 0 text, row 1 vision
            mem_routers=("mlp.text_moe.gate", "mlp.vision_moe.gate"),
            mem_biases=(
                "mlp.text_moe.gate.moe_statics.e_score_correction_bias",
                "mlp.vision_moe.gate.moe_statics.e_score_correction_bias",
            ),
            select="moe_mm_token_type_ids",  # 1: the token goes to the vision set
        ),
        mem_router="mlp.text_moe.gate",
        mem_bias="mlp.text_moe.gate.moe_statics.e_score_correction_bias",
        mem_experts="mlp.text_moe.experts",
        calibration_blocker="calibration data is text, and text tokens are routed to the text expert set only "
        "(a token reaches the vision set only as an image patch, through the vision tower, which calibrate does not "
        "run): the vision set would get no statistics to be ranked by; prune by the weights instead: "
        "moeprune prune MODEL --criterion aimer --ratio R -o OUT",
        tiny=dict(
            architectures=["Ernie4_5_VLMoeForConditionalGeneration"],
            text_config=_tiny(
                moe_num_experts=8,
                moe_k=2,
                moe_intermediate_size=[32, 16],  # text, vision experts
                moe_num_shared_experts=1,
                mlp_layer_types=["dense", "sparse", "sparse"],
                rope_parameters=dict(rope_type="default", rope_theta=500000.0, mrope_section=[3, 3, 2]),
            ),
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=2),
        ),
        notes="ERNIE-4.5-VL: a text and a vision expert set per layer (experts.{0..E-1} and {E..2E-1}), each with "
        "its own transposed router; pruned by the same count, ranked per set",
    ),
    Family(
        "hy_v4_vl",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(after_first),
        nested=True,  # the text model stays under model.layers on disk (model.language_model.layers in memory)
        mtp="model.mtp_layers",  # as hy_v4, should a VL checkpoint ship its next-n layers
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["HYV4VLForConditionalGeneration"],
            text_config=_tiny(  # as hy_v4's tiny, with the VL model's 3-D rope sections
                n_routed_experts=8,
                moe_intermediate_size=24,
                n_shared_experts=1,
                n_group=1,
                topk_group=1,
                routed_scaling_factor=2.827,
                norm_topk_prob=True,
                q_lora_rank=32,
                index_n_heads=2,
                index_head_dim=16,
                index_topk=8,
                hc_mult=2,
                swiglu_limit=0.3,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=1,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1]),
                **_MLA,
                **_E8K2,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                out_hidden_size=64,
                patch_size=2,
                spatial_merge_size=1,
                max_image_size=16,
            ),
        ),
        notes="Tencent Hy-V4-VL: the hy_v4 text model (sigmoid + correction bias, fused clamped SwiGLU experts, "
        "hyper-connections, V3.2 indexer) under model.layers; vision tower (vit.*) kept",
    ),
    Family(
        "inkling2",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        layers="model.llm.layers",  # the hub's names (model.language_model.layers in memory)
        nested=True,
        sliced=(("gate.bias", 0),),  # the selection bias (e_score_correction_bias in memory)
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["Inkling2ForConditionalGeneration"],
            text_config=dict(
                hidden_size=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=2,
                swa_head_dim=16,
                sliding_window_size=16,
                d_rel=4,
                rel_extent=32,
                vocab_size=128,
                unpadded_vocab_size=128,
                max_position_embeddings=256,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                scoring_func="sigmoid",
                route_scale=8.0,
                mlp_gate_softcap=0.5,  # small, so that the tiny's gates and ups reach the softcaps
                mlp_up_softcap=0.5,
                n_layers_per_attn_res_block=3,
                eos_token_id=1,
            ),
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                patch_size=4,
                posemb_grid_size=4,
                projection_hidden_dim=32,
                text_hidden_size=64,
            ),
        ),
        notes="Inkling2: sigmoid + selection bias (gate.bias), renormalised, x route_scale; fused interleaved "
        "experts.w13_weight / w2_weight under model.llm.; softcapped SwiGLU; vision tower kept",
    ),
    Family(
        "inkling2_loop",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,
        layers="model.llm.layers",  # as inkling2
        nested=True,
        sliced=(("gate.bias", 0),),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        calibration_blocker="its looped layers (loop_layer_index_start .. end) run loop_num_passes times per "
        "forward, each later pass restarting from the pre-loop states with messages that model.llm.message_input "
        "computes from every looped layer's previous-pass output, so a looped layer's later inputs depend on the "
        "layers after it: layer-by-layer calibration (each layer loaded once, run once on cached inputs) cannot "
        "replay that (the messages are no stack of earlier layers' inputs); prune by the weights instead: "
        "moeprune prune MODEL --criterion aimer --ratio R -o OUT",
        tiny=dict(
            architectures=["Inkling2LoopForConditionalGeneration"],
            text_config=dict(
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=2,
                swa_head_dim=16,
                sliding_window_size=16,
                d_rel=4,
                rel_extent=32,
                vocab_size=128,
                unpadded_vocab_size=128,
                max_position_embeddings=256,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                scoring_func="sigmoid",
                route_scale=8.0,
                n_layers_per_attn_res_block=1,
                loop_layer_index_start=1,
                loop_layer_index_end=3,
                loop_num_passes=2,
                loop_gate_rank=4,
                eos_token_id=1,
            ),
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                patch_size=4,
                posemb_grid_size=4,
                projection_hidden_dim=32,
                text_hidden_size=64,
            ),
        ),
        notes="Inkling2-Loop: as inkling2, with layers loop_layer_index_start..end run loop_num_passes times "
        "(one set of experts per layer, pruned once)",
    ),
    Family(
        "qwen3_omni_moe",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=sparse_step,
        layers="thinker.model.layers",  # the thinker's text model; the talker's MoE is not pruned
        nested=True,
        text_in=("thinker_config", "text_config"),
        language_model="thinker",
        mem_router="mlp.gate",
        tiny=dict(
            architectures=["Qwen3OmniMoeForConditionalGeneration"],
            thinker_config=dict(
                vision_start_token_id=120,  # as the hub's thinker_config: the thinker's forward reads it
                text_config=_tiny(
                    num_experts=8,
                    moe_intermediate_size=32,
                    decoder_sparse_step=1,
                    mlp_only_layers=[],
                    norm_topk_prob=True,
                    rope_parameters=dict(
                        rope_type="default", rope_theta=1000000.0, mrope_section=[4, 2, 2], interleaved=True
                    ),
                    **_E8K2,
                ),
                vision_config=dict(
                    depth=1,
                    hidden_size=32,
                    intermediate_size=32,
                    num_heads=2,
                    out_hidden_size=64,
                    patch_size=2,
                    spatial_merge_size=1,
                    temporal_patch_size=1,
                    num_position_embeddings=16,
                    deepstack_visual_indexes=[0],
                ),
                audio_config=dict(
                    num_mel_bins=8,
                    encoder_layers=1,
                    encoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    d_model=32,
                    output_dim=64,
                    downsample_hidden_size=8,
                    max_source_positions=32,
                    n_window=4,
                    n_window_infer=8,
                    conv_chunksize=8,
                ),
            ),
            talker_config=dict(  # a MoE of its own (5 experts: no count the thinker's pruning gives), kept
                text_config=_tiny(
                    hidden_size=32,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    num_hidden_layers=2,
                    num_experts=5,
                    num_experts_per_tok=2,
                    moe_intermediate_size=16,
                    shared_expert_intermediate_size=16,
                    decoder_sparse_step=1,
                    mlp_only_layers=[],
                ),
                code_predictor_config=dict(
                    vocab_size=16,
                    hidden_size=32,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    num_key_value_heads=1,
                    head_dim=16,
                    num_code_groups=2,
                ),
                num_code_groups=2,
                thinker_hidden_size=64,
                accept_hidden_layer=1,
                spatial_merge_size=1,
            ),
            code2wav_config=dict(
                codebook_size=16,
                hidden_size=32,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=32,
                num_hidden_layers=1,
                num_quantizers=2,
                decoder_dim=16,
                upsample_rates=[2],
                upsampling_ratios=[2],
                sliding_window=8,
            ),
        ),
        notes="Qwen3-Omni: the thinker's Qwen3-MoE text model (thinker.model.layers, counts in "
        "thinker_config.text_config) pruned; the talker's own MoE, code2wav, vision and audio towers kept",
    ),
    Family(
        "aria",
        count_keys=("moe_num_experts",),
        topk_keys=("moe_topk",),
        moe_layers=all_layers,
        layers="language_model.model.layers",
        nested=True,
        router="router.weight",
        mem_router="mlp.router",
        tiny=dict(
            architectures=["AriaForConditionalGeneration"],
            text_config=_tiny(model_type="aria_text", moe_num_experts=8, moe_topk=2, moe_num_shared_experts=1),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                patch_size=14,
                image_size=28,
            ),
            projector_patch_to_query_dict={"4": 4},
        ),
        notes="Aria: top-k on the logits, softmax over the chosen; fused fc1 (E, H, 2I) / fc2 (E, I, H) "
        "under language_model.model.; shared experts and vision tower kept",
    ),
    Family(
        "deepseek_ocr2",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        nested=True,
        groups=v2_groups,
        mem_router="mlp.gate",
        tiny=dict(
            architectures=["DeepseekOcr2ForConditionalGeneration"],
            text_config=_tiny(
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                mlp_layer_types=["dense", "sparse", "sparse"],
                topk_method="greedy",
                n_group=1,
                topk_group=1,
                **_E8K2,
            ),
            vision_config=dict(
                sam_config=_TINY_SAM,
                encoder_config=dict(
                    hidden_size=32,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    num_key_value_heads=2,
                    vocab_size=128,
                    max_position_embeddings=64,
                ),
            ),
        ),
        notes="DeepSeek-OCR-2: a DeepSeek-V2 text model (softmax, greedy or group_limited_greedy) under model.layers; "
        "SAM + Qwen2 vision encoders kept",
    ),
    Family(
        "unlimited_ocr",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(first_k_dense(1)),
        nested=True,
        groups=v2_groups,
        mem_router="mlp.gate",
        tiny=dict(
            architectures=["UnlimitedOcrForConditionalGeneration"],
            text_config=_tiny(
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                mlp_layer_types=["dense", "sparse", "sparse"],
                topk_method="greedy",
                n_group=1,
                topk_group=1,
                sliding_window=16,
                **_E8K2,
            ),
            vision_config=dict(
                sam_config=_TINY_SAM,
                encoder_config=dict(
                    hidden_size=32,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=28,
                    patch_size=14,
                ),
            ),
        ),
        notes="Unlimited-OCR: a DeepSeek-V2 text model with sliding-window attention under model.layers; "
        "SAM + CLIP vision encoders kept",
    ),
    Family(
        "muse_spark",
        count_keys=("num_local_experts", "num_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(all_layers),
        layers="model.language_model.layers",
        nested=True,
        sliced=(("gate.e_score_correction_bias", 0),),
        shared=("experts.post_expert_norm.weight",),
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            architectures=["MuseSparkForConditionalGeneration"],
            text_config=_tiny(
                num_local_experts=8,
                moe_intermediate_size=32,
                moe_hidden_size=48,
                routed_scaling_factor=2.5,
                mlp_layer_types=["dense", "sparse", "sparse"],
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                sliding_window=16,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                **_E8K2,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                patch_size=2,
                pos_emb_height=4,
                pos_emb_width=4,
                max_position_embeddings=16,
                layer_types=["full_attention"],
            ),
            audio_config=dict(hidden_sizes=[8, 8, 8, 16], depths=[1, 1, 1, 1], out_hidden_size=64),
            out_hidden_size=64,
            projector_hidden_size=32,
        ),
        notes="Muse Spark: sigmoid + correction bias on the router (x output_multiplier), experts at a pooled width "
        "(pre/post_expert_proj kept) with one shared experts.post_expert_norm (kept); vision and audio towers kept",
    ),
    # --- X: the last families of issue 15 (dots3_note, qwen4_exp) ---
    Family(
        "dots3_note",
        count_keys=("n_routed_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=mlp_layer_types(dots3_rule),
        nested=True,  # the text model stays under model.layers on disk (model.language_model.layers in memory)
        sliced=(("gate.e_score_correction_bias", 0),),
        groups=v3_groups,
        mem_router="mlp.gate",
        mem_bias="mlp.gate.e_score_correction_bias",
        tiny=dict(
            text_config=_tiny(
                num_key_value_heads=4,  # the validator wants as many key-value heads as heads
                n_routed_experts=8,
                moe_intermediate_size=32,
                n_shared_experts=1,
                shared_experts_intermediate_size=32,
                n_group=2,
                topk_group=1,
                routed_scaling_factor=2.5,
                norm_topk_prob=True,
                q_lora_rank=32,
                kv_lora_rank=16,
                qk_rope_head_dim=8,
                qk_nope_head_dim=8,
                v_head_dim=16,
                index_topk=8,
                index_head_dim=16,
                index_n_heads=2,
                sliding_window=8,
                swa_num_attention_heads=4,
                swa_num_key_value_heads=4,
                swa_q_lora_rank=32,
                swa_kv_lora_rank=16,
                swa_head_dim=16,
                swa_qk_nope_head_dim=8,
                swa_v_head_dim=16,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                **_E8K2,
            ),
            vision_config=dict(  # a vision MoE of its own (4 experts), kept whole
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                patch_size=2,
                adapter_in_dim=32,
                adapter_out_dim=64,
                mlp_layer_types=["sparse"],
                moe_intermediate_size=16,
                num_local_experts=4,
                num_experts_per_tok=2,
            ),
            audio_config=dict(
                hidden_size=32,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                adapter_input_size=32,
                adapter_out_dim=64,
                downsample_hidden_size=16,
                feature_size=16,
            ),
        ),
        notes="dots3 Note: sigmoid + correction bias, group-limited (as DeepSeek-V3) under model.layers; MLA with "
        "sliding-window and indexed (DSA) layers; the vision tower's own MoE and the audio tower kept",
    ),
    Family(
        "qwen4_exp",
        count_keys=("num_experts", "num_local_experts"),
        topk_keys=("num_experts_per_tok",),
        moe_layers=all_layers,  # transformers builds a sparse MoE block in every decoder layer
        layers="model.language_model.layers",
        nested=True,
        mtp="mtp.layers",  # as Qwen3.5-MoE: transformers ignores mtp.* on load, a hub checkpoint may ship them
        mem_router="mlp.gate",
        tiny=dict(
            text_config=_tiny(
                num_hidden_layers=2,
                num_experts=8,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                layer_types=["linear_attention", "full_attention"],  # the hub's name for QSA-indexed layers
                linear_num_value_heads=4,
                linear_num_key_heads=2,
                linear_key_head_dim=16,
                linear_value_head_dim=16,
                hc_count=2,
                hc_lowrank=8,
                ple_layer_ids=[1],  # per-layer n-gram embeddings on the linear-attention layer
                ple_embed_dim=16,
                heads_per_ngram=2,
                ngram_vocab_size_base=64,
                make_ngram_vocab_size_divisible_by=8,
                split_ngram_parts=2,
                indexer_n_heads=2,
                indexer_kv_heads=1,
                indexer_head_dim=16,
                indexer_budget=8,
                indexer_compress_ratio=4,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                **_E8K2,
            ),
            vision_config=dict(
                depth=1,
                hidden_size=32,
                intermediate_size=32,
                num_heads=2,
                out_hidden_size=64,
                patch_size=2,
                spatial_merge_size=1,
                temporal_patch_size=1,
            ),
        ),
        notes="Qwen4-Exp: as Qwen3.5-MoE (softmax, top-k, renormalise; gated shared expert kept) with hyper-connection "
        "streams, per-layer n-gram embeddings and QSA-indexed attention (kept); vision tower kept",
    ),
]

FAMILIES: dict[str, Family] = {f.model_type: f for f in _ENTRIES}


def supported() -> list[str]:
    return sorted(FAMILIES)


def family_for_config(config: Config) -> Family:
    """The registry entry for a config.json, or a clear error listing what is supported."""
    model_type = config.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    text = config.get("text_config") or {}
    if text.get("model_type") in FAMILIES:  # e.g. a text model saved inside a wrapper
        return FAMILIES[text["model_type"]]
    raise UnsupportedFamilyError(
        f"model_type {model_type!r} is not supported; supported families: "
        f"{', '.join(supported())}. To add one, see docs/adding-a-family.md"
    )
