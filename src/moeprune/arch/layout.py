"""Where a checkpoint's routed experts are: its MoE layers and their tensors, from the index.

`describe()` combines a family entry with a checkpoint's config and tensor table. It detects
whether experts are stored per expert (``experts.{j}.*``) or fused (first axis = expert), and
checks everything the entry predicts before any weight is read: the router of every MoE layer,
every expert's tensors, matching shapes, and no router in a layer the config calls dense.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moeprune.arch.families import family_for_config
from moeprune.arch.spec import ExpertSets, Family, Groups
from moeprune.errors import InputError
from moeprune.io.format import TensorInfo


@dataclass
class MoeLayer:
    """The expert tensors of one MoE layer (all names are full checkpoint keys)."""

    index: int
    block: str
    """Key prefix of the MoE block, e.g. ``model.layers.3.mlp.``."""
    router: str
    per_expert: dict[int, list[str]] = field(default_factory=dict)
    """Expert id -> its own tensors (``...experts.{j}.*``)."""
    fused: list[str] = field(default_factory=list)
    """Tensors whose first axis is the expert (fused weights, their biases)."""
    sliced: list[tuple[str, int]] = field(default_factory=list)
    """Router and selection-bias tensors with one entry per expert along the given axis."""
    rows: dict[str, int] = field(default_factory=dict)
    """Tensors of ``fused`` stored as blocks of rows (``Family.row_blocks``, [E·R, ...]): name -> R,
    the rows of one expert (absent: 1, the first axis is the expert)."""
    sets: dict[str, int] = field(default_factory=dict)
    """Tensors of ``sliced`` that belong to one expert set (``Family.expert_sets``): name -> the set,
    or -1 for a [S, E] tensor that holds one row per set."""
    extra_rows: dict[str, int] = field(default_factory=dict)
    """Tensors of ``sliced`` with rows after the E experts (``Family.router_rows``): name -> how
    many; those rows are kept verbatim after the kept experts."""
    id_tables: list[str] = field(default_factory=list)
    """Tensors whose values are expert ids (``Family.id_tables``: DeepSeek-V4's ``gate.tid2eid``),
    rewritten by `moeprune.io.idtable.reroute`."""

    @property
    def expert_tensors(self) -> list[str]:
        """Every routed-expert tensor of the layer (per-expert and fused)."""
        return [n for names in self.per_expert.values() for n in names] + self.fused

    @property
    def layout(self) -> str:
        return "fused" if self.fused and not self.per_expert else "per-expert"


@dataclass
class MoeModel:
    """A checkpoint seen as a MoE model: family, counts, and every MoE layer's tensors."""

    family: Family
    config: dict[str, Any]
    n_experts: int
    top_k: int
    count_key: str
    groups: Groups | None
    layers: list[MoeLayer]
    n_layers: int

    @property
    def text_config(self) -> dict[str, Any]:
        return text_config(self.config, self.family)


def text_config(config: dict[str, Any], family: Family) -> dict[str, Any]:
    if family.nested:
        text: Any = config
        for key in family.text_in:  # text_config; Qwen3-Omni: thinker_config.text_config
            text = text.get(key) if isinstance(text, dict) else None
        if not isinstance(text, dict):
            raise InputError(f"config.json of a {family.model_type} model has no {'.'.join(family.text_in)}")
        return text
    return config  # type: ignore[return-value]


def counts_config(text: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """The object of the (text) config that holds the expert count and top-k: the config itself, or
    its ``family.counts_in`` object (DBRX: ``ffn_config``)."""
    if not family.counts_in:
        return text  # type: ignore[return-value]
    inner = text.get(family.counts_in)
    if not isinstance(inner, dict):
        raise InputError(f"config.json of a {family.model_type} model has no {family.counts_in} object")
    return inner


def first_key(cfg: Mapping[str, Any], keys: tuple[str, ...], what: str) -> tuple[str, int]:
    for key in keys:
        if cfg.get(key) is not None:
            return key, int(cfg[key])
    raise InputError(f"config.json has no {what} (looked for {', '.join(keys)})")


QUANT_COMPANIONS = ("_scale_inv", "_scales", "weight_scale", "weight_scale_2", "input_scale", ".scale")
"""Suffixes of quantization companions (FP8 block scales, MXFP4 scales, DeepSeek-V4's ``w1.scale``
beside ``w1.weight``, ...): read with their weight, never pooled on their own."""


def is_weight(name: str) -> bool:
    """Tensors pooled by weight criteria: matrices, not biases or quantization scales."""
    return not name.endswith(("bias", *QUANT_COMPANIONS))


def describe(config: dict[str, Any], tensors: Mapping[str, TensorInfo]) -> MoeModel:
    """Resolve the family and locate and check every routed-expert tensor."""
    family = family_for_config(config)
    text = text_config(config, family)
    counts = counts_config(text, family)
    count_key, n_experts = first_key(counts, family.count_keys, "routed expert count")
    count_key = f"{family.counts_in}.{count_key}" if family.counts_in else count_key  # as inspect shows it
    _, top_k = first_key(counts, family.topk_keys, "top-k")
    n_layers = family.n_layers(text)
    if n_layers is None:
        raise InputError("config.json has no num_hidden_layers")
    n_layers = int(n_layers)
    moe_ids = family.moe_layers(text)
    if not moe_ids or n_experts <= 1:
        raise InputError(f"config.json describes no routed-expert layer ({family.model_type}); nothing to prune")
    groups = family.groups(text)
    if family.expert_sets is not None:  # S sets of E: a layer of S·E experts in S groups (ERNIE-4.5-VL)
        n_experts *= len(family.expert_sets.routers)
        groups = Groups(len(family.expert_sets.routers), 1, min_per_group=1)  # a token picks within one set

    trunk = _by_layer(tensors, family.layers)
    router_layers = {i for i, names in trunk.items() if _block(family, family.layers, i) + family.router in names}
    unexpected = sorted(router_layers - set(moe_ids) - set(range(n_layers, n_layers + 64)))
    if unexpected:
        raise InputError(
            f"layer {unexpected[0]} holds a router but config.json makes it a dense layer; "
            "the config does not match the weights"
        )
    # layers past num_hidden_layers that hold experts (DeepSeek/GLM next-n, MTP) are pruned too,
    # numbered after the decoder layers, so that serving engines see one expert count
    ids = sorted(set(moe_ids) | {i for i in router_layers if i >= n_layers})
    extra = int(family.router_rows.extra(text))
    layers = [
        _layer(family, i, _block(family, family.layers, i), trunk.get(i, []), tensors, n_experts, extra) for i in ids
    ]
    if family.mtp is not None:
        mtp = _by_layer(tensors, family.mtp)
        for k in sorted(mtp):
            block = _block(family, family.mtp, k)
            if block + family.router in mtp[k]:
                layers.append(_layer(family, n_layers + k, block, mtp[k], tensors, n_experts, extra))
    return MoeModel(family, config, n_experts, top_k, count_key, groups, layers, n_layers)


def _by_layer(tensors: Mapping[str, TensorInfo], prefix: str) -> dict[int, list[str]]:
    """Tensor names under ``prefix.{i}.``, grouped by i."""
    found: dict[int, list[str]] = defaultdict(list)
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    for name in tensors:
        m = pat.match(name)
        if m:
            found[int(m.group(1))].append(name)
    return found


def _block(family: Family, prefix: str, i: int) -> str:
    return f"{prefix}.{i}." + (f"{family.block}." if family.block else "")  # "": router, experts on the layer


def _layer(
    family: Family, i: int, block: str, names: list[str], tensors: Mapping[str, TensorInfo], n: int, extra: int = 0
) -> MoeLayer:
    router = block + family.router
    if router not in tensors:
        raise InputError(f"layer {i}: router weight {router!r} not found in the checkpoint")
    layer = MoeLayer(i, block, router)
    axis = family.router_rows.axis
    sets = family.expert_sets
    per_set = n // len(sets.routers) if sets else n
    _check_rows(tensors[router], router, per_set, axis, extra)
    layer.sliced.append((router, axis))
    if sets:
        _set_tensors(layer, sets, block, tensors, per_set, axis)
    if extra:
        layer.extra_rows[router] = extra
    for rel, axis in family.sliced:
        if block + rel in tensors:
            more = extra if rel in family.router_rows.tensors else 0
            _check_rows(tensors[block + rel], block + rel, n, axis, more)
            layer.sliced.append((block + rel, axis))
            if more:
                layer.extra_rows[block + rel] = more
    for rel, _ in family.id_tables:  # present only in the layers that route by table
        if block + rel in tensors:
            table = tensors[block + rel]
            if len(table.shape) != 2 or not table.dtype.startswith(("I", "U")):
                raise InputError(
                    f"{block + rel!r} has dtype {table.dtype} and shape {list(table.shape)}; an expert-id table "
                    "is a 2-D integer tensor"
                )
            layer.id_tables.append(block + rel)
    experts = block + family.experts + "."
    per = re.compile(re.escape(experts) + r"(\d+)\.")
    fused = {block + rel for rel in family.fused}
    blocks = {block + rel for rel in family.row_blocks}
    shared = {block + rel for rel in family.shared}  # under `experts`, no expert axis: copied whole
    for name in sorted(names):
        m = per.match(name)
        if m:
            j = int(m.group(1))
            if j >= n:
                raise InputError(f"layer {i}: tensor {name!r} names expert {j}, but the config says {n} experts")
            layer.per_expert.setdefault(j, []).append(name)
        elif name in blocks:
            layer.rows[name] = _check_blocks(tensors[name], name, n)
            layer.fused.append(name)
        elif (name.startswith(experts) and name not in shared) or name in fused:
            _check_rows(tensors[name], name, n, 0)
            layer.fused.append(name)
    absent = sorted(blocks - set(layer.rows))
    if absent:
        raise InputError(f"layer {i}: expert tensor {absent[0]!r} not found in the checkpoint")
    if len(set(layer.rows.values())) > 1:
        raise InputError(f"layer {i}: its experts' blocks of rows differ in height between tensors ({layer.rows})")
    if layer.per_expert:
        missing = sorted(set(range(n)) - set(layer.per_expert))
        if missing:
            raise InputError(f"layer {i}: tensors of expert {missing[0]} are missing ({len(missing)} experts missing)")
        suffixes = [sorted(k[len(experts) + len(str(j)) + 1 :] for k in v) for j, v in sorted(layer.per_expert.items())]
        odd = next((j for j, s in enumerate(suffixes) if s != suffixes[0]), None)
        if odd is not None:
            raise InputError(f"layer {i}: expert {odd} does not have the same tensors as expert 0")
        for j, names in layer.per_expert.items():
            ref = j // per_set * per_set  # the first expert of j's set (expert sets may differ in size)
            first = [(tensors[k].dtype, tensors[k].shape) for k in sorted(layer.per_expert[ref])]
            pairs = zip(sorted(names), first, strict=True)
            odd_shape = next((k for k, f in pairs if (tensors[k].dtype, tensors[k].shape) != f), None)
            if odd_shape is not None:
                t = tensors[odd_shape]
                raise InputError(
                    f"{odd_shape!r} has dtype {t.dtype} and shape {list(t.shape)}, unlike the same tensor of expert "
                    f"{ref}; the checkpoint is corrupt"
                )
    elif not layer.fused:
        raise InputError(f"layer {i}: no expert tensors under {experts!r}")
    return layer


def _set_tensors(
    layer: MoeLayer, sets: ExpertSets, block: str, tensors: Mapping[str, TensorInfo], per_set: int, axis: int
) -> None:
    """The other sets' routers (E entries on ``axis`` each) and the [S, E] tensors of a layer with
    expert sets, recorded in ``layer.sliced`` / ``layer.sets``."""
    layer.sets[layer.router] = 0
    for s, rel in enumerate(sets.routers[1:], start=1):
        name = block + rel
        if name not in tensors:
            raise InputError(
                f"layer {layer.index}: router weight {name!r} of expert set {s} not found in the checkpoint"
            )
        _check_rows(tensors[name], name, per_set, axis)
        layer.sliced.append((name, axis))
        layer.sets[name] = s
    for rel in sets.stacked:
        name = block + rel
        if name in tensors:
            if list(tensors[name].shape) != [len(sets.routers), per_set]:
                raise InputError(
                    f"{name!r} has shape {list(tensors[name].shape)}, expected [{len(sets.routers)}, {per_set}] "
                    "(one row of experts per expert set)"
                )
            layer.sliced.append((name, 1))
            layer.sets[name] = -1
    for s, rels in enumerate(sets.fused):  # JetMoE: each set's own fused tensors, E entries on axis 0
        for rel in rels:
            name = block + rel
            if name not in tensors:
                raise InputError(f"layer {layer.index}: expert tensor {name!r} of expert set {s} not found")
            _check_rows(tensors[name], name, per_set, 0)
            layer.fused.append(name)
            layer.sets[name] = s


def _check_blocks(info: TensorInfo, name: str, n: int) -> int:
    """R, the rows of one expert in a tensor stored as [E·R, ...] (``Family.row_blocks``)."""
    if len(info.shape) < 2 or info.shape[0] < n or info.shape[0] % n:
        raise InputError(f"{name!r} has shape {list(info.shape)}, expected {n} experts' blocks of rows along axis 0")
    return info.shape[0] // n


def _check_rows(info: TensorInfo, name: str, n: int, axis: int, extra: int = 0) -> None:
    if len(info.shape) <= axis or info.shape[axis] != n + extra:
        rows = f"{n} experts" + (f" + {extra} rows that are not routed experts" if extra else "")
        raise InputError(f"{name!r} has shape {list(info.shape)}, expected {rows} along axis {axis}")
