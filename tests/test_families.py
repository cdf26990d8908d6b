"""The registry-parametrized proof suite: every family, pruned through the CLI, is checked end to end.

For every family in ``moeprune.arch.FAMILIES`` (and a few routing, sharding and dtype variants) a tiny
random checkpoint in the family's real on-disk layout is pruned by 25% and 50% with ``moeprune prune``,
then:

- reloaded with transformers, its logits equal the original's with the removed experts masked out of
  the router (float32, atol 1e-5) and differ from the unmasked original by far more than that;
- its safetensors files, read with the ``safetensors`` library, hold exactly the expected tensors:
  kept experts renumbered 0..K-1 and byte-identical to their originals, router rows, selection biases
  and fused expert tensors indexed with the kept list, everything else (dense layers, shared experts,
  attention, vision tower) byte-identical, nothing extra, nothing missing;
- config.json differs from the source only in the expert count, under every key the source used;
- moeprune_plan.json and scores.csv cover exactly the MoE layers, and the plan removes the experts the
  criterion's direction names (per group for group-limited routers).

The expected on-disk layout of each family (``LAYOUT``) is written here from the architecture reference,
not read from the registry, so a wrong registry entry fails these tests. AIMER and magnitude are checked
against a float64 hand computation from the parameters transformers loads.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from moeprune.arch import FAMILIES
from moeprune.plan import PrunePlan
from moeprune.verify import decoder_layers, load_causal_lm, masked_forward

# --- what the tests know independently of the registry -------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one family's routed experts sit on disk (architectures.md §2.2)."""

    layers: str
    """Prefix of the decoder layers."""
    block: str
    """The MoE block under each decoder layer."""
    router: str
    """Router weight, relative to the block (rows = experts)."""
    sliced: dict[str, int] = field(default_factory=dict)
    """Other per-expert vectors relative to the block, and their expert axis."""
    fused: tuple[str, ...] = ()
    """Fused expert tensors relative to the block (axis 0 = expert); empty = per-expert keys."""
    experts: str = "experts"
    """Prefix of the per-expert tensors relative to the block (``{experts}.{j}.*``)."""
    router_axis: int = 0
    """The router weight's expert axis (Ergo stores it [H, E])."""
    extra: dict[str, int] = field(default_factory=dict)
    """Router / sliced tensors with rows after the E experts that are not routed experts (LongCat-Flash's
    zero experts): how many; they are kept verbatim after the kept experts' rows."""
    row_blocks: bool = False
    """The fused tensors are 2-D [E·R, ...]: expert j is the block of rows j·R .. (j+1)·R - 1 (DBRX)."""
    tables: tuple[str, ...] = ()
    """Expert-id tables relative to the block (DeepSeek-V4's hash layers: ``gate.tid2eid`` [vocab, k]);
    a layer that has one routes by it, has no selection bias, and its ids are re-routed as
    tests/test_hash_routing.expected_table computes by hand."""
    other_moe: tuple[str, ...] = ()
    """Prefixes of another MoE the family keeps whole (Qwen3-Omni's talker): its expert ids are its own,
    and its tensors are byte-identical like every other tensor outside the pruned layers."""


_FUSED = ("experts.gate_up_proj", "experts.down_proj")
LAYOUT: dict[str, Layout] = {
    "mixtral": Layout("model.layers", "block_sparse_moe", "gate.weight"),
    "qwen2_moe": Layout("model.layers", "mlp", "gate.weight"),
    "qwen3_moe": Layout("model.layers", "mlp", "gate.weight"),
    "qwen3_next": Layout("model.layers", "mlp", "gate.weight"),
    "qwen3_5_moe": Layout("model.language_model.layers", "mlp", "gate.weight", fused=_FUSED),
    "olmoe": Layout("model.layers", "mlp", "gate.weight"),
    "deepseek_v2": Layout("model.layers", "mlp", "gate.weight"),
    "deepseek_v3": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "glm4_moe": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "gpt_oss": Layout(
        "model.layers",
        "mlp",
        "router.weight",
        {"router.bias": 0},
        (*_FUSED, "experts.gate_up_proj_bias", "experts.down_proj_bias"),
    ),
    "phimoe": Layout("model.layers", "block_sparse_moe", "gate.weight"),
    "granitemoe": Layout(
        "model.layers", "block_sparse_moe", "router.layer.weight", fused=("input_linear.weight", "output_linear.weight")
    ),
    "ernie4_5_moe": Layout("model.layers", "mlp", "gate.weight", {"moe_statics.e_score_correction_bias": 1}),
    "minimax_m2": Layout("model.layers", "block_sparse_moe", "gate.weight", {"e_score_correction_bias": 0}),
    "hunyuan_v1_moe": Layout("model.layers", "mlp", "gate.wg.weight"),
    "jamba": Layout("model.layers", "feed_forward", "router.weight"),
    "llama4_text": Layout("model.layers", "feed_forward", "router.weight", fused=_FUSED),
    "llama4": Layout("language_model.model.layers", "feed_forward", "router.weight", fused=_FUSED),
    "lfm2_moe": Layout("model.layers", "feed_forward", "gate.weight", {"expert_bias": 0}),
    # issue 15 (docs/families.md)
    "deepseek_v32": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "glm_moe_dsa": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "glm4_moe_lite": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "dots1": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "solar_open": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "exaone_moe": Layout("model.layers", "mlp", "gate.weight", {"e_score_correction_bias": 0}),
    "kimi_linear": Layout("model.layers", "block_sparse_moe", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "minimax": Layout("model.layers", "block_sparse_moe", "gate.weight"),
    "flex_olmo": Layout("model.layers", "mlp", "gate.weight"),
    "afmoe": Layout("model.layers", "mlp", "router.gate.weight", {"expert_bias": 0}),
    "bailing_hybrid": Layout("model.layers", "mlp", "gate.weight", {"gate.expert_bias": 0}),
    "cohere2_moe": Layout("model.layers", "mlp", "gate.weight"),
    "laguna": Layout("model.layers", "mlp", "gate.weight", {"experts.e_score_correction_bias": 0}),
    "granitemoeshared": Layout(
        "model.layers", "block_sparse_moe", "router.layer.weight", fused=("input_linear.weight", "output_linear.weight")
    ),
    "granitemoehybrid": Layout(
        "model.layers", "block_sparse_moe", "router.layer.weight", fused=("input_linear.weight", "output_linear.weight")
    ),
    "granitemoe_swa": Layout("model.layers", "block_sparse_moe", "router.weight", fused=_FUSED),
    "sarvam_moe": Layout("model.layers", "mlp", "gate.weight", {"gate.expert_bias": 0}),
    "gemma4": Layout("model.language_model.layers", "", "router.proj.weight", {"router.per_expert_scale": 0}, _FUSED),
    "mellum": Layout("model.layers", "mlp", "gate.weight"),
    "mimo_v2_flash": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "hy_v3": Layout("model.layers", "mlp", "router.gate.weight", {"expert_bias": 0}),
    "axk1": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "minicpm5_moe": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "param2moe": Layout("model.layers", "mlp", "gate.weight", {"gate.expert_bias": 0}),
    "sarvam_mla": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "axk2": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "flint": Layout("model.layers", "mlp", "gate.weight"),
    "beam": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "lara_mini": Layout("model.layers", "mlp", "gate.weight", fused=_FUSED),
    "kolibri1": Layout("model.layers", "", "mlp.gate.weight", {"moe.router.expert_bias": 0}, experts="mlp.experts"),
    "kolibri1_1": Layout("model.layers", "", "mlp.gate.weight", {"moe.router.expert_bias": 0}, experts="mlp.experts"),
    # S: non-gated experts (Nemotron-H), row-blocked experts (DBRX)
    "nemotron_h": Layout("backbone.layers", "mixer", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "dbrx": Layout(
        "transformer.blocks",
        "ffn",
        "router.layer.weight",
        fused=("experts.mlp.w1", "experts.mlp.v1", "experts.mlp.w2"),
        row_blocks=True,
    ),
    "jetmoe": Layout("model.layers", "", "mlp.router.layer.weight"),  # + the attention set: test_family_structure.py
    # M1: multimodal MoEs by their text model, group 1 (vision towers byte-identical)
    "qwen3_vl_moe": Layout("model.language_model.layers", "mlp", "gate.weight", fused=_FUSED),  # (E, H, 2I), (E, I, H)
    "kimi_k25": Layout("language_model.model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "glm4v_moe": Layout("model.language_model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "glm5_next": Layout("model.language_model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}),
    "minimax_m3_vl": Layout(
        "language_model.model.layers", "block_sparse_moe", "gate.weight", {"e_score_correction_bias": 0}
    ),
    "step3p7": Layout(
        "model.layers",
        "moe",
        "gate.weight",
        {"router_bias": 0},
        fused=("gate_proj.weight", "up_proj.weight", "down_proj.weight"),
    ),
    "mistral4": Layout("model.layers", "mlp", "gate.weight", fused=_FUSED),
    "mistral_large4": Layout("layers", "", "gate.weight"),  # Mistral's names: layers.{L}.experts.{j}.w1/w2/w3
    # M2: multimodal MoEs by their text model (vision towers byte-identical)
    "ernie4_5_vl_moe": Layout("model.layers", "mlp", "gate.weight"),  # + gate.weight_1: test_multimodal_sets.py
    "aria": Layout(
        "language_model.model.layers", "mlp", "router.weight", fused=("experts.fc1.weight", "experts.fc2.weight")
    ),
    "deepseek_ocr2": Layout("model.layers", "mlp", "gate.weight"),
    "inkling2": Layout(
        "model.llm.layers", "mlp", "gate.weight", {"gate.bias": 0}, ("experts.w13_weight", "experts.w2_weight")
    ),
    "inkling2_loop": Layout(
        "model.llm.layers", "mlp", "gate.weight", {"gate.bias": 0}, ("experts.w13_weight", "experts.w2_weight")
    ),
    "hy_v4_vl": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}, _FUSED),
    "unlimited_ocr": Layout("model.layers", "mlp", "gate.weight"),
    "qwen3_omni_moe": Layout("thinker.model.layers", "mlp", "gate.weight", other_moe=("talker.",)),
    "muse_spark": Layout(
        "model.language_model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}, _FUSED
    ),
    # H: hash-routed layers (tests/test_hash_routing.py)
    "deepseek_v4": Layout("layers", "ffn", "gate.weight", {"gate.bias": 0}, tables=("gate.tid2eid",)),
    # R: routers whose rows are not exactly the experts (tests/test_router_rows.py)
    "longcat_flash": Layout(
        "model.layers",
        "mlp",
        "router.classifier.weight",
        {"router.e_score_correction_bias": 0},
        extra={"router.classifier.weight": 4, "router.e_score_correction_bias": 4},  # zero_expert_num of the tiny
    ),
    "inkling_mm_model": Layout(
        "model.llm.layers",
        "mlp",
        "gate.weight",
        {"gate.bias": 0},
        fused=("experts.w13_weight", "experts.w2_weight"),
        extra={"gate.weight": 2},  # n_shared_experts: the shared-expert sink rows
    ),
    "ergo": Layout(
        "layers",
        "feed_forward",
        "gate_kernel",
        {"router_bias": 0, "expert_output_norm.scale": 0},
        fused=("up_proj", "down_proj"),
        router_axis=1,
    ),
    "zaya": Layout(
        "model.layers",
        "mlp",
        "gate.router_mlp.out_proj.weight",
        {"gate.balancing_biases": 0},
        fused=_FUSED,
        extra={"gate.router_mlp.out_proj.weight": 1, "gate.balancing_biases": 1},  # the skip expert
    ),
    # K: Tencent Hy-V4, fused experts on disk as in memory ([E, 2I, H], [E, H, I])
    "hy_v4": Layout("model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}, _FUSED),
    # X: dots3 Note, per-expert keys on disk (qwen2_moe conversion); its vision MoE is kept whole
    "dots3_note": Layout(
        "model.layers", "mlp", "gate.weight", {"gate.e_score_correction_bias": 0}, other_moe=("vision_encoder.",)
    ),
    "qwen4_exp": Layout("model.language_model.layers", "mlp", "gate.weight"),  # per-expert (qwen2_moe conversion)
}

DENSE_RULE = {"qwen2_moe", "deepseek_v2", "deepseek_v3", "glm4_moe", "ernie4_5_moe", "jamba", "llama4_text", "lfm2_moe"}
DENSE_RULE |= {"llama4"}
DENSE_RULE |= {"deepseek_v32", "glm_moe_dsa", "glm4_moe_lite", "dots1", "exaone_moe", "kimi_linear", "afmoe"}
DENSE_RULE |= {"bailing_hybrid", "laguna", "sarvam_moe", "mimo_v2_flash", "hy_v3", "axk1", "minicpm5_moe"}
DENSE_RULE |= {"param2moe", "sarvam_mla", "axk2", "flint", "beam", "kolibri1_1"}
DENSE_RULE |= {"inkling_mm_model", "ergo"}
DENSE_RULE |= {"deepseek_ocr2", "unlimited_ocr", "muse_spark", "hy_v4_vl"}  # M2
DENSE_RULE |= {"nemotron_h"}  # S: Mamba and attention layers (layers_block_type)
DENSE_RULE |= {"kimi_k25", "glm4v_moe", "glm5_next", "minimax_m3_vl", "step3p7", "mistral4", "mistral_large4"}  # M1
DENSE_RULE |= {"hy_v4"}  # K: layer 0 dense (mlp_layer_types)
DENSE_RULE |= {"dots3_note"}  # X: layer 0 dense (mlp_layer_types from first_k_dense_replace)
"""Families whose tiny config makes some decoder layers dense (first_k_dense_replace, mlp_only_layers,
moe_layer_start_index, expert_layer_period, interleave_moe_layer_step, num_dense_layers)."""

COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOPK_KEYS = ("num_experts_per_tok", "moe_k", "moe_topk", "num_experts_per_token", "top_k_experts", "moe_top_k")
RATIOS = (0.25, 0.5)
ATOL = 1e-5


V3_GROUPED = {"deepseek_v3", "glm4_moe", "deepseek_v32", "glm_moe_dsa", "glm4_moe_lite", "dots1", "solar_open"}
V3_GROUPED |= {"exaone_moe", "kimi_linear", "bailing_hybrid", "sarvam_moe", "mimo_v2_flash", "axk1", "minicpm5_moe"}
V3_GROUPED |= {"param2moe", "sarvam_mla", "axk2", "beam"}
V3_GROUPED |= {"kimi_k25", "glm4v_moe", "glm5_next", "mistral4", "mistral_large4"}  # M1
V3_GROUPED |= {"hy_v4"}  # K
V3_GROUPED |= {"hy_v4_vl"}  # M2
V3_GROUPED |= {"dots3_note"}  # X
"""Families with DeepSeek-V3 group-limited routing (n_group, topk_group)."""


def n_groups(family: str, text: dict[str, Any]) -> int:
    """Expert groups of a group-limited router (1 = flat), from the config (architectures.md §2.3)."""
    if family in V3_GROUPED:
        return int(text.get("n_group") or text.get("num_expert_group") or 1)
    if family == "deepseek_v2" and text.get("topk_method") == "group_limited_greedy":
        return int(text.get("n_group") or 1)
    return 1


def text_of(config: dict[str, Any]) -> dict[str, Any]:
    if isinstance(config.get("thinker_config"), dict):  # Qwen3-Omni: the thinker's text model (not the talker's)
        config = config["thinker_config"]
    return config["text_config"] if isinstance(config.get("text_config"), dict) else config


def counts_of(config: dict[str, Any]) -> dict[str, Any]:
    """The config object with the expert count and top-k: DBRX nests them in ``ffn_config``."""
    text = text_of(config)
    return text["ffn_config"] if isinstance(text.get("ffn_config"), dict) else text


def test_every_family_has_a_layout() -> None:
    missing = sorted(set(FAMILIES) - set(LAYOUT))
    assert not missing, f"add the on-disk layout of {missing} to LAYOUT in tests/test_families.py"


# --- cases: every family at both ratios, plus routing, sharding and dtype variants -------------------


@dataclass(frozen=True, eq=False)
class Case:
    name: str
    family: str
    ratio: float
    tiny: dict[str, Any] = field(default_factory=dict)
    args: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.name}-{self.ratio}"


_NORM_FALSE = {"overrides": {"norm_topk_prob": False}}
_V2_GROUPED = {"overrides": {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1}}
_SHARDED = {"max_shard_size": "50KB"}
_BF16 = {"dtype": "bfloat16"}
EXPERT_SETS = {"ernie4_5_vl_moe", "jetmoe"}
"""Families with several expert sets per MoE layer under one config count (ERNIE-4.5-VL: text and vision
experts, each with its own router; JetMoE: MLP and attention experts): a layer holds S·E experts, which the
checks here do not model; tests/test_multimodal_sets.py and tests/test_family_structure.py prove the same
guarantees for them."""
CASES = [Case(f, f, r) for f in sorted(set(FAMILIES) - EXPERT_SETS) for r in RATIOS] + [
    *(Case("qwen3_moe-norm_topk_prob_false", "qwen3_moe", r, _NORM_FALSE) for r in RATIOS),
    *(Case("deepseek_v2-group_limited_greedy", "deepseek_v2", r, _V2_GROUPED) for r in RATIOS),
    Case("qwen3_moe-sharded", "qwen3_moe", 0.25, _SHARDED, ("--max-shard-size", "40KB")),
    Case("gpt_oss-sharded", "gpt_oss", 0.5, _SHARDED, ("--max-shard-size", "40KB")),
    Case("mixtral-bf16", "mixtral", 0.5, _BF16),
    Case("granitemoe-bf16", "granitemoe", 0.25, _BF16),
]
BY_NAME = {c.id: c for c in CASES}
case_param = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])


# --- reading checkpoints independently of moeprune ---------------------------------------------------


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder; with an index, each shard must hold exactly what it says."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        weight_map = {}
        files = ["model.safetensors"]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == files, "stray or missing shard files"
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        part = load_file(folder / fname)
        assert not set(part) & set(tensors), f"tensors in two shards: {sorted(set(part) & set(tensors))[:3]}"
        if weight_map:
            assert {k for k, v in weight_map.items() if v == fname} == set(part), f"index disagrees with {fname}"
        tensors.update(part)
    return tensors


def raw(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_bytes(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(raw(got), raw(want)), f"{name}: bytes differ"


@dataclass
class Pruned:
    case: Case
    src: Path
    out: Path
    src_config: dict[str, Any]
    out_config: dict[str, Any]
    src_tensors: dict[str, torch.Tensor]
    out_tensors: dict[str, torch.Tensor]
    plan_json: dict[str, Any]
    plan: PrunePlan

    @property
    def layout(self) -> Layout:
        return LAYOUT[self.case.family]

    @property
    def n_experts(self) -> int:
        text = counts_of(self.src_config)
        return int(next(text[k] for k in COUNT_KEYS if text.get(k) is not None))

    @property
    def n_pruned(self) -> int:
        exact = self.case.ratio * self.n_experts
        assert exact == int(exact), "choose ratios that give a whole number of experts"
        return int(exact)

    def moe_layers(self) -> list[int]:
        """Decoder layers that hold a router on disk."""
        lay = self.layout
        block = re.escape(lay.block + ".") if lay.block else ""  # "": router and experts on the layer (Gemma 4)
        pat = re.compile(rf"{re.escape(lay.layers)}\.(\d+)\.{block}{re.escape(lay.router)}$")
        return sorted(int(m.group(1)) for k in self.src_tensors if (m := pat.match(k)))

    def block(self, layer: int) -> str:
        return f"{self.layout.layers}.{layer}." + (f"{self.layout.block}." if self.layout.block else "")


@pytest.fixture(scope="session")
def pruned(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Pruned]:
    """``pruned(case, cli)`` -> the case's source and pruned checkpoint, pruned once per session."""
    cache: dict[str, Pruned] = {}

    def get(case: Case, cli: Callable[..., Any]) -> Pruned:
        if case.id not in cache:
            src = tiny(case.family, **case.tiny)
            out = tmp_path_factory.mktemp("pruned") / case.id
            r = cli("prune", str(src), "--ratio", str(case.ratio), "-o", str(out), *case.args)
            assert r.code == 0, r
            plan_json = json.loads((out / "moeprune_plan.json").read_text())
            cache[case.id] = Pruned(
                case,
                src,
                out,
                json.loads((src / "config.json").read_text()),
                json.loads((out / "config.json").read_text()),
                read_tensors(src),
                read_tensors(out),
                plan_json,
                PrunePlan.load(out / "moeprune_plan.json"),
            )
        return cache[case.id]

    return get


# --- 1. the pruned model equals the masked original ---------------------------------------------------


def expert_layers(model: Any) -> dict[int, Any]:
    """Decoder layer index -> its routed-experts module, in the model transformers built."""
    found: dict[int, Any] = {}
    for i, layer in enumerate(decoder_layers(model)):
        mods = [m for name, m in layer.named_modules() if name.rsplit(".", 1)[-1] == "experts"]
        assert len(mods) <= 1, f"layer {i}: several experts modules"
        if mods:
            found[i] = mods[0]
    return found


def expert_matrices(experts: Any) -> dict[str, torch.Tensor]:
    """The routed-expert matrices of an experts module as transformers builds it, each (E, ...), expert
    first, biases apart: fused ``gate_up_proj`` / ``down_proj`` (either orientation); Nemotron-H's
    non-gated ``up_proj`` / ``down_proj``; DBRX's ``mlp.w1`` / ``v1`` / ``w2`` [E·I, H], viewed (E, I, H)."""
    params = dict(experts.named_parameters())
    # Muse Spark: one norm every expert shares, no expert axis; Ergo: one per expert, sliced with it but,
    # as a norm scale, not pooled by the weight criteria
    shared = {"post_expert_norm.weight"}
    names = sorted(set(params) - {"gate_up_proj_bias", "down_proj_bias"} - shared)
    assert names in (["down_proj", "gate_up_proj"], ["down_proj", "up_proj"], ["mlp.v1", "mlp.w1", "mlp.w2"]), names
    if names[0].startswith("mlp."):
        n = int(experts.num_experts)
        return {k: params[k].reshape(n, -1, params[k].shape[-1]) for k in names}
    return {k: params[k] for k in names}


@case_param
def test_logits_equal_masked_original(case: Case, pruned: Callable[..., Pruned], cli: Callable[..., Any]) -> None:
    r = pruned(case, cli)
    vocab = int(text_of(r.src_config)["vocab_size"])
    ids = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(1))
    original = load_causal_lm(r.src)
    assert next(original.parameters()).dtype == torch.float32
    in_memory = expert_layers(original)
    assert sorted(in_memory) == sorted(r.plan.layers) == r.moe_layers(), "plan does not cover exactly the MoE layers"
    with torch.no_grad():
        unmasked = original(ids).logits
    reference = masked_forward(original, r.src_config, r.plan, ids)

    model = load_causal_lm(r.out)
    kept = r.n_experts - r.n_pruned
    for i, experts in expert_layers(model).items():
        assert {w.shape[0] for w in expert_matrices(experts).values()} == {kept}, f"layer {i}"
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, reference, atol=ATOL, rtol=0)
    moved = float((got - unmasked).abs().max())
    assert moved > 100 * ATOL, f"pruning barely changed the logits ({moved:.2e}): the test could not fail"


# --- 1. tensors, read back with the safetensors library -----------------------------------------------


@case_param
def test_tensors_sliced_renumbered_and_untouched(
    case: Case, pruned: Callable[..., Pruned], cli: Callable[..., Any]
) -> None:
    r = pruned(case, cli)
    lay, src, out = r.layout, r.src_tensors, r.out_tensors
    n, k = r.n_experts, r.n_experts - r.n_pruned
    moe = r.moe_layers()
    assert moe, "no router found on disk"
    expected: dict[str, torch.Tensor] = {}
    routed: set[str] = set()
    indexed: set[str] = set()
    for layer in moe:
        kept = r.plan.layers[layer].kept
        idx = torch.tensor(kept)
        block = r.block(layer)
        rows = {lay.router: lay.router_axis, **lay.sliced, **dict.fromkeys(lay.fused, 0)}
        tables = [block + t for t in lay.tables if block + t in src]
        for rel, axis in rows.items():
            name = block + rel
            if tables and rel in lay.sliced and name not in src:
                continue  # a table-routed layer (DeepSeek-V4 hash layer) has no selection bias
            assert name in src, f"{name} missing from the source checkpoint"
            more = lay.extra.get(rel, 0)  # rows after the experts: kept, after the kept experts' rows
            if lay.row_blocks and rel in lay.fused:  # [E·R, ...]: expert j's block of R rows
                t = src[name]
                assert t.shape[0] % n == 0 and t.shape[0] > n, f"{name}: {tuple(t.shape)} is no [E·R, ...] tensor"
                expected[name] = t.reshape(n, -1, *t.shape[1:])[idx].reshape(-1, *t.shape[1:])
                indexed.add(name)
                continue
            assert src[name].shape[axis] == n + more, f"{name}: {tuple(src[name].shape)} has no expert axis {axis}"
            expected[name] = src[name].index_select(axis, torch.cat([idx, torch.arange(n, n + more)]))
            indexed.add(name)
        for name in tables:
            from test_hash_routing import expected_table

            expected[name] = expected_table(src[name], kept, n)
            routed.add(name)
        per = re.compile(re.escape(f"{block}{lay.experts}.") + r"(\d+)\.(.+)$")
        found: dict[int, set[str]] = {}
        routed |= indexed
        for name in src:
            if m := per.match(name):
                j, suffix = int(m.group(1)), m.group(2)
                found.setdefault(j, set()).add(suffix)
                routed.add(name)
                if j in kept:
                    expected[f"{block}{lay.experts}.{kept.index(j)}.{suffix}"] = src[name]
        if lay.fused:
            assert not found, f"layer {layer}: per-expert keys in a fused checkpoint"
        else:
            assert sorted(found) == list(range(n)), f"layer {layer}: source experts {sorted(found)}"
            assert all(s == found[0] and s for s in found.values()), f"layer {layer}: experts differ in tensors"
            got = {int(m.group(1)) for name in out if (m := per.match(name))}
            assert sorted(got) == list(range(k)), f"layer {layer}: output expert ids {sorted(got)}"
    for name, t in src.items():
        if name not in routed:
            expected[name] = t

    # no tensor outside the MoE layers names an expert id the output does not have
    for name in out:
        if lay.other_moe and name.startswith(lay.other_moe):
            continue  # another MoE with its own count (Qwen3-Omni's talker), checked byte-identical below
        if m := re.search(r"\.experts\.(\d+)\.", name):
            assert int(m.group(1)) < k, f"{name}: expert id out of range 0..{k - 1}"
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    for name, want in expected.items():
        assert_same_bytes(out[name], want, name)
    for name in indexed:
        assert out[name].shape != src[name].shape, f"{name}: an indexed tensor kept its original shape"

    text = text_of(r.src_config)
    n_layers = text.get("num_hidden_layers") or text.get("num_layers")  # LongCat-Flash counts num_layers
    n_layers = n_layers or text.get("n_layers") or len(text["layers_block_type"])  # DBRX; Nemotron-H
    dense = sorted(set(range(int(n_layers))) - set(moe))
    if case.family in DENSE_RULE:
        assert dense, "this family's tiny config should have dense layers"
    for layer in dense:
        names = [x for x in src if x.startswith(f"{lay.layers}.{layer}.")]
        assert names and all(x not in routed for x in names), f"dense layer {layer} was touched"


# --- 1. config.json -----------------------------------------------------------------------------


@case_param
def test_config_changes_only_the_expert_count(
    case: Case, pruned: Callable[..., Pruned], cli: Callable[..., Any]
) -> None:
    r = pruned(case, cli)
    kept = r.n_experts - r.n_pruned
    expected = copy.deepcopy(r.src_config)
    rewritten = 0
    for cfg in (expected, expected.get("text_config"), expected.get("ffn_config"), text_of(expected)):
        if isinstance(cfg, dict):
            for key in COUNT_KEYS:
                if cfg.get(key) is not None:
                    cfg[key] = kept
                    rewritten += 1
    assert rewritten >= 1
    assert r.out_config == expected
    src_text, out_text = counts_of(r.src_config), counts_of(r.out_config)
    topk = [key for key in TOPK_KEYS if src_text.get(key) is not None]
    assert topk and all(out_text[key] == src_text[key] for key in topk)


# --- 1. plan and scores -------------------------------------------------------------------------


def expected_pruned(scores: list[float], p: int, groups: int, higher_pruned: bool) -> list[int]:
    """The p experts the direction names, p / groups from each contiguous group, ties: lower id first."""
    size, per = len(scores) // groups, p // groups
    out: list[int] = []
    for g in range(groups):
        ids = list(range(g * size, (g + 1) * size))
        ids.sort(key=lambda j: (-scores[j] if higher_pruned else scores[j], j))
        out += ids[:per]
    return sorted(out)


@case_param
def test_plan_and_scores(case: Case, pruned: Callable[..., Pruned], cli: Callable[..., Any]) -> None:
    r = pruned(case, cli)
    n, p, moe = r.n_experts, r.n_pruned, r.moe_layers()
    plan = r.plan_json
    assert plan["criterion"] == "aimer" and plan["ratio"] == case.ratio
    assert sorted(plan["layers"], key=int) == [str(i) for i in moe]
    for lp in plan["layers"].values():
        assert len(lp["pruned"]) == p and lp["pruned"] == sorted(lp["pruned"]) and lp["kept"] == sorted(lp["kept"])
        assert sorted(lp["kept"] + lp["pruned"]) == list(range(n))

    with open(r.out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [(int(row["layer"]), int(row["expert"])) for row in rows]
    assert sorted(cells) == [(i, j) for i in moe for j in range(n)], "scores.csv: not one row per (layer, expert)"
    groups = n_groups(case.family, text_of(r.src_config))
    for i in moe:
        scores = [float(row["score"]) for row in sorted(rows, key=lambda x: int(x["expert"])) if int(row["layer"]) == i]
        flagged = sorted(int(row["expert"]) for row in rows if int(row["layer"]) == i and row["pruned"] == "1")
        pruned_ids = plan["layers"][str(i)]["pruned"]
        assert flagged == pruned_ids
        assert pruned_ids == expected_pruned(scores, p, groups, higher_pruned=True), f"layer {i}"
        size = n // groups
        assert [sum(1 for j in pruned_ids if j // size == g) for g in range(groups)] == [p // groups] * groups


def test_variants_really_vary(tiny: Callable[..., Path]) -> None:
    """The routing variants above are what they claim (else their cases prove nothing new)."""
    q = json.loads((tiny("qwen3_moe", **_NORM_FALSE) / "config.json").read_text())
    assert q["norm_topk_prob"] is False
    v2 = json.loads((tiny("deepseek_v2", **_V2_GROUPED) / "config.json").read_text())
    assert (v2["topk_method"], v2["n_group"], v2["topk_group"]) == ("group_limited_greedy", 2, 1)
    v3 = json.loads((tiny("deepseek_v3") / "config.json").read_text())
    assert v3["n_group"] == 2 and n_groups("deepseek_v3", v3) == 2


# --- 3. AIMER and magnitude against a hand computation --------------------------------------------------


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - EXPERT_SETS))
def test_weight_scores_equal_hand_computation(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny(family)
    model = load_causal_lm(src)
    aimer: dict[str, list[float]] = {}
    magnitude: dict[str, list[float]] = {}
    with_bias: dict[str, list[float]] = {}
    for i, experts in expert_layers(model).items():
        params = dict(experts.named_parameters())
        matrices = [m.detach().double().numpy() for m in expert_matrices(experts).values()]  # (E, ...) each
        biases = [params[b].detach().double().numpy() for b in ("gate_up_proj_bias", "down_proj_bias") if b in params]
        aimer[str(i)], magnitude[str(i)], with_bias[str(i)] = [], [], []
        for j in range(matrices[0].shape[0]):
            w = np.concatenate([m[j].ravel() for m in matrices])
            aimer[str(i)].append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
            magnitude[str(i)].append(np.mean(np.abs(w)))
            wb = np.concatenate([w, *(b[j].ravel() for b in biases)])
            with_bias[str(i)].append(np.mean(np.abs(wb)) / np.sqrt(np.mean(wb * wb)))

    for criterion, want in (("aimer", aimer), ("magnitude", magnitude)):
        out = tmp_path / f"{criterion}.json"
        r = cli("score", str(src), "--criterion", criterion, "-o", str(out))
        assert r.code == 0, r
        got = json.loads(out.read_text())
        assert got["criterion"] == criterion
        assert sorted(got["layers"], key=int) == sorted(want, key=int)
        for layer, scores in want.items():
            np.testing.assert_allclose(got["layers"][layer], scores, rtol=1e-9, atol=0, err_msg=f"layer {layer}")
        if criterion == "aimer" and family == "gpt_oss":  # biases excluded, and that is visible
            pairs = [(a, b) for x in want for a, b in zip(got["layers"][x], with_bias[x], strict=True)]
            assert max(abs(a - b) for a, b in pairs) > 1e-6

    out = tmp_path / "all.json"
    assert cli("score", str(src), "--criterion", "all", "-o", str(out)).code == 0
    both = json.loads(out.read_text())["criteria"]
    for criterion, want in (("aimer", aimer), ("magnitude", magnitude)):
        for layer, scores in want.items():
            np.testing.assert_allclose(both[criterion]["layers"][layer], scores, rtol=1e-9, atol=0)


# --- 4. direction and seeds ---------------------------------------------------------------------


def _prune_plan(cli: Callable[..., Any], src: Path, out: Path, *args: str) -> dict[str, Any]:
    r = cli("prune", str(src), *args, "-o", str(out))
    assert r.code == 0, r
    return json.loads((out / "moeprune_plan.json").read_text())


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "granitemoe", "deepseek_v3"])
@pytest.mark.parametrize(("criterion", "higher_pruned"), [("aimer", True), ("magnitude", False)])
def test_direction(
    family: str, criterion: str, higher_pruned: bool, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny(family)
    scores_file = tmp_path / "scores.json"
    assert cli("score", str(src), "--criterion", criterion, "-o", str(scores_file)).code == 0
    scores = json.loads(scores_file.read_text())["layers"]
    plan = _prune_plan(cli, src, tmp_path / "out", "--criterion", criterion, "--ratio", "0.5")
    n = len(next(iter(scores.values())))
    groups = n_groups(family, text_of(json.loads((src / "config.json").read_text())))
    assert plan["criterion"] == criterion and sorted(plan["layers"]) == sorted(scores)
    for layer, s in scores.items():
        want = expected_pruned(s, n // 2, groups, higher_pruned)
        assert plan["layers"][layer]["pruned"] == want, f"layer {layer}"
        if groups == 1:  # the removed experts are the extreme ones of the whole layer
            worst = max if higher_pruned else min
            assert worst(s) in [s[j] for j in want]


def test_ties_go_to_the_lower_id(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """Experts 2 and 5 made identical (±0.001: AIMER exactly maximal, magnitude minimal): --prune 1 removes 2."""
    src = tmp_path / "tied"
    shutil.copytree(tiny("mixtral"), src)
    tensors = load_file(src / "model.safetensors")
    with safe_open(src / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    pat = re.compile(r"(.*\.experts\.)2\.(.*)$")
    tied = 0
    for name in list(tensors):
        if m := pat.match(name):
            flat = torch.sign(tensors[name]) * 0.001
            tensors[name] = flat
            tensors[f"{m.group(1)}5.{m.group(2)}"] = flat.clone()
            tied += 1
    assert tied == 9  # 3 layers x w1, w2, w3
    save_file(tensors, src / "model.safetensors", metadata=metadata)

    for criterion, extreme in (("aimer", max), ("magnitude", min)):
        scores_file = tmp_path / f"{criterion}.json"
        assert cli("score", str(src), "--criterion", criterion, "-o", str(scores_file)).code == 0
        for s in json.loads(scores_file.read_text())["layers"].values():
            assert s[2] == s[5] == extreme(s) and s.count(s[2]) == 2
        plan = _prune_plan(cli, src, tmp_path / criterion, "--criterion", criterion, "--prune", "1")
        assert [lp["pruned"] for lp in plan["layers"].values()] == [[2]] * 3, criterion


def test_random_is_seeded(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    src = tiny("qwen3_moe")

    def plan(seed: int, name: str) -> dict[str, Any]:
        made = _prune_plan(cli, src, tmp_path / name, "--criterion", "random", "--seed", str(seed), "--ratio", "0.5")
        assert made["criterion"] == "random"
        assert all(len(lp["pruned"]) == 4 for lp in made["layers"].values())
        return made["layers"]

    assert plan(7, "a") == plan(7, "b")
    assert plan(7, "a2") != plan(8, "c")


# --- 5. sharding and bf16 -----------------------------------------------------------------------


def test_sharded_output(pruned: Callable[..., Pruned], cli: Callable[..., Any]) -> None:
    for case_id in ("qwen3_moe-sharded-0.25", "gpt_oss-sharded-0.5"):
        r = pruned(BY_NAME[case_id], cli)
        assert len(list(r.src.glob("*.safetensors"))) > 1, "the source should be sharded"
        shards = sorted(r.out.glob("*.safetensors"))
        assert len(shards) > 1
        index = json.loads((r.out / "model.safetensors.index.json").read_text())
        weight_map = index["weight_map"]
        assert sorted(weight_map) == sorted(r.out_tensors)
        held: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for shard in shards:
            with safe_open(shard, "pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    held.setdefault(name, []).append(shard.name)
            sizes[shard.name] = sum(
                t.numel() * t.element_size() for n, t in r.out_tensors.items() if weight_map[n] == shard.name
            )
        assert all(len(v) == 1 and weight_map[k] == v[0] for k, v in held.items())
        assert set(held) == set(weight_map)
        total = sum(t.numel() * t.element_size() for t in r.out_tensors.values())
        assert index["metadata"]["total_size"] == total
        for shard, size in sizes.items():
            alone = sum(1 for v in weight_map.values() if v == shard) == 1
            assert size <= 40_000 or alone, f"{shard}: {size} bytes over the 40KB cap"
        v = cli("verify", str(r.src), str(r.out))
        assert v.code == 0 and v.out.startswith("OK:"), v


def test_bf16_prunes_and_verifies(pruned: Callable[..., Pruned], cli: Callable[..., Any]) -> None:
    for case_id in ("mixtral-bf16-0.5", "granitemoe-bf16-0.25"):
        r = pruned(BY_NAME[case_id], cli)
        assert {t.dtype for t in r.src_tensors.values() if t.is_floating_point()} == {torch.bfloat16}
        assert {t.dtype for t in r.out_tensors.values() if t.is_floating_point()} == {torch.bfloat16}
        v = cli("verify", str(r.src), str(r.out))
        assert v.code == 0 and v.out.startswith("OK:"), v


def test_both_alias_count_keys_rewritten(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """A hub-style Qwen3-MoE config.json with num_experts beside num_local_experts: both become E'."""
    src = tmp_path / "src"
    shutil.copytree(tiny("qwen3_moe"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_experts"] = cfg["num_local_experts"]
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", "0.25", "-o", str(out)).code == 0
    new = json.loads((out / "config.json").read_text())
    assert new["num_experts"] == new["num_local_experts"] == cfg["num_experts"] - 2
    assert new == {**cfg, "num_experts": new["num_experts"], "num_local_experts": new["num_experts"]}
    v = cli("verify", str(src), str(out))
    assert v.code == 0, v


# --- 6. verify catches a wrong plan -----------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["mixtral-0.25", "gpt_oss-0.25"])
def test_verify_rejects_a_false_plan(
    case_id: str, pruned: Callable[..., Pruned], cli: Callable[..., Any], tmp_path: Path
) -> None:
    r = pruned(BY_NAME[case_id], cli)
    out = tmp_path / "pruned"
    shutil.copytree(r.out, out)
    ok = cli("verify", str(r.src), str(out))
    assert ok.code == 0 and ok.out.startswith("OK:"), ok

    plan_file = out / "moeprune_plan.json"
    plan = json.loads(plan_file.read_text())
    layer = plan["layers"][min(plan["layers"], key=int)]
    swap_out, swap_in = layer["pruned"][0], layer["kept"][0]
    layer["pruned"] = sorted([*layer["pruned"][1:], swap_in])
    layer["kept"] = sorted([*layer["kept"][1:], swap_out])
    plan_file.write_text(json.dumps(plan))
    bad = cli("verify", str(r.src), str(out))
    assert bad.code == 1, bad
    lines = bad.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MISMATCH"), bad
    assert not bad.out.strip(), bad
