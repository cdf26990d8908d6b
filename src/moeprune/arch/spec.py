"""The registry entry type: everything moeprune must know about one model family, as data.

A `Family` says where the MoE blocks sit in a checkpoint (on-disk key names), which config keys
hold the expert count, top-k and group settings, which decoder layers are MoE layers, which tensors
carry one row per expert, and how `verify` masks experts in the model transformers builds.
Layout details (per-expert keys or fused tensors) are detected from the checkpoint, not declared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Config = Mapping[str, Any]
"""The part of config.json that describes the language model (``text_config`` when nested)."""


@dataclass(frozen=True)
class Groups:
    """Group-limited routing read from a config: experts are split into ``n_group`` contiguous
    blocks and each token may only pick experts in its best ``topk_group`` groups."""

    n_group: int
    topk_group: int
    min_per_group: int
    """Experts that must survive in every group (DeepSeek-V3 scores a group by its top-2)."""


@dataclass(frozen=True)
class ScaledInput:
    """How calibration computes an expert's output itself when the experts module never sees the
    routing: attribute names on the experts module of its fused, transposed weights and activation,
    f_j(x) = (up * act(gate)) @ down[j] with gate, up = (x @ gate_up[j]).chunk(2)."""

    gate_up: str = "gate_up_proj"
    """(E, H, 2I)."""
    down: str = "down_proj"
    """(E, I, H)."""
    act: str = "act_fn"


@dataclass(frozen=True)
class SortedGroups:
    """How calibration observes experts that a block calls itself, on its token rows sorted by expert,
    instead of through an experts module (JetMoE's MLP experts and its mixture-of-attention experts).

    Per expert set s: the router module ``routers[s]`` (relative to a decoder layer in memory) returns
    a tuple holding, at ``token``, ``gate`` and ``sizes``, the token of every (token, slot) pair in
    the order the block runs them (grouped by expert: ``sizes[j]`` pairs of expert 0, then of expert
    1, ...) and the weight the block multiplies that pair's expert output by; the module
    ``outputs[s]`` is then called on those pairs in that order and returns, row by row, f_j before
    gating. Calibration hooks both: the routing and f_j are the model's own, nothing is recomputed.
    Set s's expert j is moeprune's id s·E + j (`ExpertSets`)."""

    routers: tuple[str, ...]
    outputs: tuple[str, ...]
    token: int = 1
    gate: int = 2
    sizes: int = 3


@dataclass(frozen=True)
class RouterRows:
    """A router whose expert axis is not exactly the E routed experts, as data.

    The router weight (and the ``sliced`` tensors named in ``tensors``) may carry ``extra(config)``
    rows after the E routed experts: LongCat-Flash's zero-computation (identity) experts, Inkling's
    shared-expert sink rows, ZAYA's skip expert. They are no routed expert: never scored, never removed, kept verbatim
    after the kept experts (the layout check expects E + extra rows, the surgery keeps rows
    ``kept + [E, E + extra)``, verify leaves their logits unmasked, and a plan cannot name them).
    ``axis`` is the router weight's expert axis on disk (1 when it is stored [H, E]: Ergo)."""

    extra: Callable[[Config], int] = field(default=lambda cfg: 0)
    """Rows after the E routed experts, from the config."""
    tensors: tuple[str, ...] = ()
    """Tensors of ``Family.sliced`` (relative to the block) that carry the extra rows as well (the
    router weight always does); the others have exactly E entries."""
    axis: int = 0
    """The router weight's expert axis on disk."""
    zero_weight_slots: bool = False
    """The experts module receives a token's slots on extra rows as weight-0 pairs on a real expert
    (LongCat-Flash's identity experts, ZAYA's skip expert): calibration does not count pairs whose weight is 0, which
    contribute nothing to the layer's output."""


@dataclass(frozen=True)
class ExpertSets:
    """Several routed-expert sets in one MoE block that the config counts once, each with its own
    router (ERNIE-4.5-VL: a text set and a vision set of ``moe_num_experts`` experts each; a token
    is routed within one set).

    moeprune sees such a layer as S·E experts: set s owns ids s·E .. (s+1)·E − 1, the hub's own
    numbering of the per-expert keys ``experts.{j}``. The S sets are S groups: every plan removes the
    same number from each set, ranked within the set (`plan.select`), and each set keeps at least
    top-k. The kept experts are renumbered 0..S·K − 1 in order, so output set s owns s·K ..
    (s+1)·K − 1 (again the hub's numbering), and the config's count becomes K. Set s's router
    (``routers[s]``, expert axis ``Family.router_rows.axis``) keeps set s's kept experts; a
    ``stacked`` tensor [S, E] keeps, in row s, set s's. `verify` masks each set's router with the
    set's removed experts."""

    routers: tuple[str, ...]
    """Router weight of each set, relative to the block; the first is ``Family.router``."""
    stacked: tuple[str, ...] = ()
    """Tensors [S, E] relative to the block, row s for set s (ERNIE-4.5-VL's selection biases
    ``moe_statics.e_score_correction_bias``)."""
    mem_routers: tuple[str, ...] = ()
    """Each set's router module, relative to a decoder layer of the loaded model."""
    mem_biases: tuple[str, ...] = ()
    """Each set's selection-bias tensor in the loaded model (empty: none), set to -inf for its
    removed experts."""
    select: str = ""
    """The model's keyword argument that sends a token to set s (ERNIE-4.5-VL:
    ``moe_mm_token_type_ids``, 1 = vision); `verify` runs a second batch with the tokens spread over
    the sets through it, so that every set's pruning is proven, not only the text set's."""
    fused: tuple[tuple[str, ...], ...] = ()
    """Each set's fused expert tensors relative to the block (first axis = the set's E experts), for
    sets that are not per-expert keys: JetMoE's MLP experts (``mlp.input_linear.weight``,
    ``mlp.output_linear.weight``) and its attention experts (``self_attention.experts.*``, the
    mixture-of-attention heads: a query and an output projection per expert, with a router of
    their own). Empty: the sets are the per-expert keys."""


def hidden_layers(cfg: Config) -> Any:
    """The decoder-layer count of most configs: ``num_hidden_layers`` (None when absent)."""
    return cfg.get("num_hidden_layers")


@dataclass(frozen=True)
class Family:
    """One model family (a config.json ``model_type``)."""

    model_type: str
    count_keys: tuple[str, ...]
    """Config keys that may hold the routed-expert count; the first present is read and every
    present one is rewritten."""
    topk_keys: tuple[str, ...]
    """Config keys that may hold top-k; the first present is read."""
    moe_layers: Callable[[Config], list[int]]
    """Indices of the decoder layers that hold routed experts, from the config."""
    mem_router: str
    """Router module path, relative to a decoder layer of the loaded transformers model; its
    ``weight`` has one row per expert (used by verify to mask logits)."""
    mem_experts: str = "mlp.experts"
    """Experts module path, relative to a decoder layer of the loaded model; calibration observes
    the routing it receives, ``(hidden [T, H], top_k_index [T, k], top_k_weights [T, k])``."""
    scaled_input: ScaledInput | None = None
    """Set when the router's score multiplies the expert INPUT (Llama 4): the experts module sees no
    routing, so calibration reads it from the router (``mem_router``) and computes f_j on the
    unscaled input with the experts' weights this names; g is the router's score."""
    sorted_groups: SortedGroups | None = None
    """Set when the block runs its experts itself on token rows sorted by expert (JetMoE):
    calibration hooks each set's router and expert-output module instead of ``mem_experts``."""
    block: str = "mlp"
    """The MoE block's name under each decoder layer, on disk; "" when the router and experts sit on
    the decoder layer itself (Gemma 4: ``layers.{L}.router``, ``layers.{L}.experts``)."""
    router: str = "gate.weight"
    """Router weight key relative to the block; its rows are the experts (unless ``router_rows``
    says otherwise)."""
    router_rows: RouterRows = RouterRows()
    """Router rows that are not routed experts, and the router's expert axis (default: the rows
    are exactly the E experts)."""
    n_layers: Callable[[Config], Any] = hidden_layers
    """The decoder-layer count from the config (None when absent); LongCat-Flash counts
    ``num_layers``."""
    sliced: tuple[tuple[str, int], ...] = ()
    """Other tensors (relative to the block) with one entry per expert, and their expert axis:
    router biases, selection-bias vectors."""
    experts: str = "experts"
    """Prefix of the expert tensors relative to the block: ``experts.{j}.*`` (per-expert keys)
    or ``experts.<name>`` (fused tensors whose first axis is the expert)."""
    fused: tuple[str, ...] = ()
    """Fused expert tensors (first axis = expert) that do not live under ``experts``."""
    expert_sets: ExpertSets | None = None
    """Several expert sets per MoE block under one config count (ERNIE-4.5-VL's text and vision
    experts); None: one set."""
    shared: tuple[str, ...] = ()
    """Tensors under ``experts`` (relative to the block) that every expert shares, with no expert
    axis (Muse Spark's ``experts.post_expert_norm.weight``): copied whole, never sliced."""
    row_blocks: tuple[str, ...] = ()
    """Fused expert tensors (relative to the block) stored two-dimensional as [E·R, ...]: expert j is
    the block of rows j·R .. (j+1)·R - 1 of axis 0 (DBRX: ``experts.mlp.w1``, ``v1``, ``w2``, R =
    ``ffn_hidden_size``). Checked, scored and sliced a block of rows at a time."""
    counts_in: str = ""
    """The object inside the config that holds ``count_keys`` and ``topk_keys`` when they are nested
    (DBRX: ``ffn_config``); "" = the (text) config itself. Pruning rewrites the count there only."""
    layers: str = "model.layers"
    """Prefix of the decoder layers on disk."""
    mtp: str | None = None
    """Prefix of multi-token-prediction layers stored outside the decoder (``mtp.layers``); their
    experts are pruned with the trunk's count and numbered after the decoder layers."""
    nested: bool = False
    text_in: tuple[str, ...] = ("text_config",)
    """Where the text model's config sits in config.json when ``nested``: the path of keys
    (Qwen3-Omni: ``thinker_config``, ``text_config``)."""
    language_model: str = ""
    """The submodule of the model transformers builds that is the language model moeprune runs
    (verify, eval: its ``input_ids`` -> logits), "" for the model itself (Qwen3-Omni: ``thinker``,
    inside a thinker-talker class that has no forward of its own)."""
    """The language-model keys live in ``text_config``."""
    groups: Callable[[Config], Groups | None] = field(default=lambda cfg: None)
    """Group-limited routing settings, or None for a flat router."""
    mem_bias: str | None = None
    """Selection-bias tensor (relative to a decoder layer in memory) that verify sets to -inf
    for removed experts, because masking the logits alone does not stop selection."""
    id_tables: tuple[tuple[str, str], ...] = ()
    """Tensors whose VALUES are expert ids, as (on-disk key relative to the block, path relative to a
    decoder layer in memory): DeepSeek-V4's hash-routing table ``gate.tid2eid`` [vocab, k], present
    only in the layers that route by table. Not sliced but rewritten: every id is renumbered, and a
    slot naming a removed expert is re-routed by the rule of `moeprune.io.idtable.reroute`, which
    verify applies to the original as its masking of those layers."""
    tiny: Mapping[str, Any] = field(default_factory=dict)
    """Config overrides that make a tiny random model of this family (tests, make-tiny)."""
    calibration_blocker: str = ""
    """Why the layer-wise calibration engine cannot run this family yet (empty: it can, and the tests
    compare it with a full-model reference). Scoring by weights, pruning and verify are unaffected."""
    tiny_fused: bool = False
    """Hub checkpoints store experts under the in-memory fused names although transformers
    saves per-expert keys by default: tiny checkpoints are written fused, as on the hub."""
    tiny_transposed: tuple[str, ...] = ()
    """Fused expert tensors (relative to the block) that hub checkpoints store with their last two
    axes swapped from transformers' in-memory layout (Qwen3-VL-MoE ``experts.gate_up_proj``
    (E, H, 2I)); transformers transposes them on load but saves them untransposed, so tiny
    checkpoints are rewritten as on the hub. Pruning slices the expert axis 0 either way."""
    tiny_renames: tuple[tuple[str, str], ...] = ()
    """(regex, replacement) pairs applied to the tensor names of a saved tiny checkpoint, where
    transformers' reverse key conversion does not give the hub's names back (Kimi-K2.5: its vision
    rename ``blocks`` -> ``layers`` reversed turns the text model's ``layers`` into ``blocks``)."""
    notes: str = ""
    """One line for the docs' family table."""
