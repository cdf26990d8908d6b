"""GGUF architectures: which tensors of a GGUF file are routed experts, which have one row per
expert, and which metadata keys carry the expert count, for every MoE architecture moeprune prunes.

GGUF names tensors the same way in every architecture (gguf-py's ``TENSOR_NAMES``): in block N,
``blk.N.ffn_{gate,up,down}_exps`` (and the fused ``ffn_gate_up_exps``) hold the routed experts,
with the expert on the OUTER axis (GGUF dims ``[ne0, ne1, n_expert]``, numpy ``(E, ne1, ne0)``),
``.weight`` and, for gpt-oss, ``.bias`` (numpy ``(E, ne0)``); ``blk.N.ffn_gate_inp`` is the router
(numpy ``(E, H)``; gpt-oss adds a ``.bias`` of E); ``blk.N.exp_probs_b`` is the selection bias of
the sigmoid routers (E). Shared experts (``ffn_*_shexp``, ``ffn_gate_inp_shexp``) are not
routed and are never touched. What differs per architecture is data, one `GgufArch` entry each:
the Hugging Face ``model_type`` it is converted from (so a plan chosen on the HF checkpoint can be
checked against the GGUF), whether its experts and router carry biases, and whether it has a
selection bias. The count lives in ``{arch}.expert_count``; ``{arch}.expert_used_count`` (top-k)
never changes when experts are removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import MODEL_TENSOR, TENSOR_NAMES, Keys

from moeprune.arch.spec import Groups
from moeprune.errors import UnsupportedFamilyError


@dataclass(frozen=True)
class GgufArch:
    """One GGUF architecture (``general.architecture``) with routed experts."""

    arch: str
    model_types: tuple[str, ...]
    """Hugging Face ``model_type`` values llama.cpp's converter writes as this architecture."""
    expert_bias: bool = False
    """Expert tensors carry ``.bias`` (gpt-oss), sliced like the weights."""
    router_bias: bool = False
    """The router has a ``.bias`` with one entry per expert (gpt-oss)."""
    selection_bias: bool = False
    """Blocks may carry ``exp_probs_b`` (the selection bias of sigmoid routers; DeepSeek-V3 style)."""
    notes: str = ""

    def count_key(self) -> str:
        return Keys.LLM.EXPERT_COUNT.format(arch=self.arch)

    def used_key(self) -> str:
        return Keys.LLM.EXPERT_USED_COUNT.format(arch=self.arch)

    def block_count_key(self) -> str:
        return Keys.LLM.BLOCK_COUNT.format(arch=self.arch)

    def group_keys(self) -> tuple[str, str]:
        return (
            Keys.LLM.EXPERT_GROUP_COUNT.format(arch=self.arch),
            Keys.LLM.EXPERT_GROUP_USED_COUNT.format(arch=self.arch),
        )


_ENTRIES = [
    GgufArch("qwen3moe", ("qwen3_moe",), notes="Qwen3-MoE"),
    GgufArch("qwen2moe", ("qwen2_moe",), notes="Qwen1.5/2-MoE; shared expert and its gate kept"),
    GgufArch("llama", ("mixtral",), notes="Mixtral (llama with experts); dense llama files are refused"),
    GgufArch("olmoe", ("olmoe",), notes="OLMoE"),
    GgufArch(
        "deepseek2",
        ("deepseek_v2", "deepseek_v3", "kimi_k2"),
        selection_bias=True,
        notes="DeepSeek-V2/V3 (exp_probs_b on V3); shared experts kept; expert groups honoured",
    ),
    GgufArch("glm4moe", ("glm4_moe",), selection_bias=True, notes="GLM-4.5/4.6; exp_probs_b"),
    GgufArch("gpt-oss", ("gpt_oss",), expert_bias=True, router_bias=True, notes="gpt-oss; expert and router biases"),
    GgufArch("ernie4_5-moe", ("ernie4_5_moe",), selection_bias=True, notes="ERNIE-4.5-MoE; exp_probs_b"),
    GgufArch("hunyuan-moe", ("hunyuan_v1_moe",), notes="Hunyuan-A13B; shared expert kept"),
    GgufArch("granitemoe", ("granitemoe",), notes="Granite-MoE"),
    GgufArch("phimoe", ("phimoe",), notes="Phi-3.5-MoE"),
    GgufArch("minimax-m2", ("minimax_m2",), selection_bias=True, notes="MiniMax-M2; exp_probs_b"),
    GgufArch("dots1", ("dots1",), selection_bias=True, notes="dots.llm1; exp_probs_b"),
    GgufArch("lfm2moe", ("lfm2_moe",), selection_bias=True, notes="LFM2-MoE; exp_probs_b"),
    GgufArch("llama4", ("llama4_text", "llama4"), notes="Llama 4; shared expert kept"),
    GgufArch("qwen3next", ("qwen3_next",), notes="Qwen3-Next; shared expert and its gate kept"),
    GgufArch("qwen35moe", ("qwen3_5_moe",), notes="Qwen3.5-MoE; shared expert and its gate kept"),
]
GGUF_ARCHS: dict[str, GgufArch] = {a.arch: a for a in _ENTRIES}


def gguf_arch(name: str) -> GgufArch:
    """The entry of a ``general.architecture`` value, or one clear error."""
    found = GGUF_ARCHS.get(name)
    if found is None:
        raise UnsupportedFamilyError(
            f"GGUF architecture {name!r} has no routed experts moeprune knows; supported: {', '.join(GGUF_ARCHS)}"
        )
    return found


def arch_for_model_type(model_type: str) -> GgufArch | None:
    """The GGUF architecture a Hugging Face ``model_type`` is converted to, if known."""
    return next((a for a in _ENTRIES if model_type in a.model_types), None)


EXPERT_KINDS = (
    MODEL_TENSOR.FFN_GATE_EXP,
    MODEL_TENSOR.FFN_UP_EXP,
    MODEL_TENSOR.FFN_DOWN_EXP,
    MODEL_TENSOR.FFN_GATE_UP_EXP,
)
"""Routed-expert tensors: expert on the outer numpy axis."""
ROUTER = MODEL_TENSOR.FFN_GATE_INP
SELECTION = MODEL_TENSOR.FFN_EXP_PROBS_B


def _pattern(kind: MODEL_TENSOR) -> str:
    return re.escape(TENSOR_NAMES[kind]).replace(re.escape("{bid}"), r"(\d+)")


_ROLES = [("expert", k) for k in EXPERT_KINDS] + [("router", ROUTER), ("selection", SELECTION)]
_MATCH = [(role, kind, re.compile(_pattern(kind) + r"\.(weight|bias)$")) for role, kind in _ROLES]


@dataclass(frozen=True)
class Role:
    """What one tensor is to pruning."""

    layer: int
    role: str
    """``expert`` (sliced on numpy axis 0, one slice per expert), ``router`` or ``selection``
    (one row / entry per expert on numpy axis 0)."""
    kind: MODEL_TENSOR
    suffix: str
    """``weight`` or ``bias``."""

    @property
    def pooled(self) -> bool:
        """Counted by the weight criteria: expert weights, not biases (as for safetensors)."""
        return self.role == "expert" and self.suffix == "weight"


def role(name: str) -> Role | None:
    """The pruning role of tensor ``name``; None for every tensor left untouched."""
    for r, kind, rx in _MATCH:
        m = rx.fullmatch(name)
        if m:
            return Role(int(m.group(1)), r, kind, m.group(2))
    return None


def expected(arch: GgufArch, present: set[str], layer: int) -> list[str]:
    """Tensors every MoE block of ``arch`` must have (given the names ``present`` in the file):
    the router, gate/up/down experts (or fused gate_up + down), and the biases the entry declares."""

    def name(kind: MODEL_TENSOR, suffix: str = "weight") -> str:
        return TENSOR_NAMES[kind].format(bid=layer) + "." + suffix

    fused = name(MODEL_TENSOR.FFN_GATE_UP_EXP) in present
    kinds = [MODEL_TENSOR.FFN_GATE_UP_EXP] if fused else [MODEL_TENSOR.FFN_GATE_EXP, MODEL_TENSOR.FFN_UP_EXP]
    kinds.append(MODEL_TENSOR.FFN_DOWN_EXP)
    out = [name(ROUTER)] + [name(k) for k in kinds]
    if arch.expert_bias:
        out += [name(k, "bias") for k in kinds]
    if arch.router_bias:
        out.append(name(ROUTER, "bias"))
    return out


def groups(arch: GgufArch, n_group: int, n_group_used: int, has_selection_bias: bool) -> Groups | None:
    """Group-limited routing from ``{arch}.expert_group_count`` / ``expert_group_used_count``:
    llama.cpp splits the experts into ``n_group`` equal contiguous groups, so pruning must remove
    the same number from each. Routers with a selection bias (DeepSeek-V3 style) score a group by
    its top-2 experts, so two must survive per group."""
    if n_group <= 1:
        return None
    return Groups(n_group, n_group_used or n_group, min_per_group=2 if has_selection_bias else 1)
