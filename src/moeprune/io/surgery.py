"""The pruning rewrite: which output tensor comes from which input bytes, and the new config.

For every MoE layer in the plan: per-expert tensors of removed experts are dropped and the kept
ones renumbered 0..K-1 in their original order; fused tensors, router rows and every per-expert
bias are indexed along their expert axis with the same kept list; all other tensors (shared
experts, attention, norms, dense layers) are copied byte for byte. The expert count is rewritten
under every config key the source used.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from moeprune.arch.layout import MoeLayer, MoeModel, counts_config, text_config
from moeprune.io.format import TensorInfo
from moeprune.io.reader import INDEX, SINGLE, Checkpoint
from moeprune.io.writer import OutTensor, Range
from moeprune.plan import PrunePlan

WEIGHT_FILES = re.compile(
    r"^(model.*\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin(\.index\.json)?)$"
)
REWRITTEN = {"config.json", "README.md"}


@dataclass(frozen=True)
class ExpertTensor:
    """A tensor of one expert (per-expert layout): kept, dropped or renumbered whole."""

    layer: MoeLayer
    expert: int


@dataclass(frozen=True)
class SlicedTensor:
    """A tensor with one entry per expert along ``axis`` (fused experts, router rows, biases),
    followed by ``extra`` entries that are not routed experts (kept verbatim, after the kept ones)."""

    layer: MoeLayer
    axis: int
    extra: int = 0
    rows: int = 1
    """Rows of one expert's entry along axis 0 (``Family.row_blocks``: [E·R, ...] tensors)."""
    part: int | None = None
    """The expert set this tensor belongs to (``Family.expert_sets``: a set's router), -1 for a
    [S, E] tensor with one row per set; None without expert sets."""


@dataclass(frozen=True)
class IdTable:
    """A tensor whose values are expert ids (``Family.id_tables``): rewritten by `idtable.reroute`."""

    layer: MoeLayer


def output_tensors(ckpt: Checkpoint, model: MoeModel, n_kept: int, kept: Callable[[int], list[int]]) -> list[OutTensor]:
    """Every output tensor, in input file order, when every MoE layer keeps ``n_kept`` experts.

    The layout depends only on ``n_kept``: output expert ``j`` of a layer takes the place of input
    expert ``j``'s tensors. Which input bytes fill a layer's tensors is asked of ``kept(layer
    index)`` (the layer's kept original ids, ascending) only when the writer reaches them, so the
    plan may still be in the making while the rest is written."""
    roles: dict[str, ExpertTensor | SlicedTensor | IdTable] = {}
    for layer in model.layers:
        for j, names in layer.per_expert.items():
            for name in names:
                roles[name] = ExpertTensor(layer, j)
        for name in layer.fused:
            roles[name] = SlicedTensor(layer, 0, rows=layer.rows.get(name, 1), part=layer.sets.get(name))
        for name, axis in layer.sliced:
            roles[name] = SlicedTensor(layer, axis, layer.extra_rows.get(name, 0), part=layer.sets.get(name))
        for name in layer.id_tables:
            roles[name] = IdTable(layer)

    out: list[OutTensor] = []
    order = sorted(ckpt.tensors.items(), key=lambda kv: (str(kv[1].file), kv[1].start))
    for name, info in order:
        role = roles.get(name)
        if role is None:
            out.append(
                OutTensor(name, info.dtype, info.shape, [(info.file, info.start, info.nbytes)], nbytes=info.nbytes)
            )
        elif isinstance(role, IdTable):
            out.append(_id_table(ckpt, name, info, model.n_experts, partial(kept, role.layer.index), role.layer.index))
        elif isinstance(role, SlicedTensor) and role.part is not None:
            out.append(_set_sliced(ckpt, model, name, info, role, n_kept, partial(kept, role.layer.index)))
        elif isinstance(role, SlicedTensor) and role.rows > 1:
            out.append(_row_blocks(name, info, role.rows, n_kept, partial(kept, role.layer.index), role.layer.index))
        elif isinstance(role, SlicedTensor):
            rows = partial(_with_extra, partial(kept, role.layer.index), info.shape[role.axis], role.extra)
            out.append(_sliced(ckpt, name, info, role.axis, n_kept + role.extra, rows, role.layer.index))
        elif role.expert < n_kept:  # this tensor's place holds output expert `role.expert`
            source = partial(_expert_source, ckpt, model, role.layer, name, role.expert, kept)
            like = (
                _set_template(ckpt, model, role.layer, name, role.expert, n_kept) if model.family.expert_sets else info
            )
            out.append(
                OutTensor(
                    name,
                    like.dtype,
                    like.shape,
                    make=source,
                    nbytes=like.nbytes,
                    layer=role.layer.index,
                    origin=info.start,
                )
            )
    return out


def _id_table(
    ckpt: Checkpoint, name: str, info: TensorInfo, n_experts: int, kept: Callable[[], list[int]], layer: int
) -> OutTensor:
    """An expert-id table with its ids renumbered and its removed experts' slots re-routed."""

    def make() -> bytes:
        import torch

        from moeprune.io.idtable import reroute

        t = reroute(ckpt.read(name), kept(), n_experts, name).contiguous()
        return t.view(torch.uint8).numpy().tobytes()

    return OutTensor(name, info.dtype, info.shape, make=make, nbytes=info.nbytes, layer=layer)


def _set_template(ckpt: Checkpoint, model: MoeModel, layer: MoeLayer, name: str, new: int, n_kept: int) -> TensorInfo:
    """With expert sets, output expert ``new`` belongs to set s = new // K and has that set's shapes
    (ERNIE-4.5-VL's vision experts are narrower): the same tensor of input expert s·E + new − s·K,
    which is in set s whatever the plan."""
    assert model.family.expert_sets is not None
    n_sets = len(model.family.expert_sets.routers)
    k, per = n_kept // n_sets, model.n_experts // n_sets
    s = new // k
    return ckpt.info(renumber(name, new, s * per + new - s * k, model, layer))


def _set_sliced(
    ckpt: Checkpoint,
    model: MoeModel,
    name: str,
    info: TensorInfo,
    role: SlicedTensor,
    n_kept: int,
    kept: Callable[[], list[int]],
) -> OutTensor:
    """A tensor of one expert set (``role.part``: its router keeps the set's kept experts, numbered
    within the set), or a [S, E] tensor (part -1) whose row s keeps set s's."""
    assert model.family.expert_sets is not None
    n_sets = len(model.family.expert_sets.routers)
    per, k = model.n_experts // n_sets, n_kept // n_sets
    shape = list(info.shape)
    shape[role.axis] = k

    def make() -> bytes:
        import torch

        t = ckpt.read(name)
        ids = torch.tensor(kept())  # (S·K,) ascending: set s's kept experts are ids[s·K : (s+1)·K]
        if role.part is not None and role.part >= 0:
            t = t.index_select(role.axis, ids[role.part * k : (role.part + 1) * k] - role.part * per)
        else:  # [S, E] flattened is ids s·E + j, in order
            t = t.reshape(-1).index_select(0, ids).reshape(shape)
        return t.contiguous().view(torch.uint8).numpy().tobytes()

    nbytes = info.nbytes // info.shape[role.axis] * k
    return OutTensor(name, info.dtype, tuple(shape), make=make, nbytes=nbytes, layer=role.layer.index)


def _expert_source(
    ckpt: Checkpoint, model: MoeModel, layer: MoeLayer, name: str, new: int, kept: Callable[[int], list[int]]
) -> list[Range]:
    """The input range of output tensor ``name`` (output expert ``new``): the same tensor of the
    ``new``-th kept expert."""
    src = ckpt.info(renumber(name, new, kept(layer.index)[new], model, layer))
    return [(src.file, src.start, src.nbytes)]


def renumber(name: str, old: int, new: int, model: MoeModel, layer: MoeLayer) -> str:
    prefix = layer.block + model.family.experts + "."
    head = f"{prefix}{old}."
    assert name.startswith(head), name
    return f"{prefix}{new}." + name[len(head) :]


def _with_extra(kept: Callable[[], list[int]], size: int, extra: int) -> list[int]:
    """The kept experts' entries, then the ``extra`` trailing entries of an axis of ``size``."""
    return kept() + list(range(size - extra, size))


def _sliced(
    ckpt: Checkpoint, name: str, info: TensorInfo, axis: int, n_kept: int, kept: Callable[[], list[int]], layer: int
) -> OutTensor:
    shape = list(info.shape)
    shape[axis] = n_kept
    nbytes = info.nbytes // info.shape[axis] * n_kept

    def make() -> bytes | list[Range]:
        if axis == 0:
            return _row_ranges(info, kept())
        import torch

        t = ckpt.read(name).index_select(axis, torch.tensor(kept())).contiguous()
        return t.view(torch.uint8).numpy().tobytes()

    origin = info.start if axis == 0 else None
    return OutTensor(name, info.dtype, tuple(shape), make=make, nbytes=nbytes, layer=layer, origin=origin)


def _row_blocks(
    name: str, info: TensorInfo, rows: int, n_kept: int, kept: Callable[[], list[int]], layer: int
) -> OutTensor:
    """A tensor stored as [E·R, ...] (``Family.row_blocks``): the kept experts' blocks of R rows."""
    block = info.row_bytes() * rows
    shape = (n_kept * rows, *info.shape[1:])
    return OutTensor(
        name,
        info.dtype,
        shape,
        make=lambda: _row_ranges(info, kept(), block),
        nbytes=block * n_kept,
        layer=layer,
        origin=info.start,
    )


def _row_ranges(info: TensorInfo, kept: list[int], row: int = 0) -> list[Range]:
    """Byte ranges of rows ``kept`` (ascending) along axis 0 (of ``row`` bytes each, default one
    slice of axis 0), adjacent rows merged."""
    row = row or info.row_bytes()
    ranges: list[Range] = []
    for j in kept:
        start = info.start + j * row
        if ranges and ranges[-1][1] + ranges[-1][2] == start:
            f, s, n = ranges[-1]
            ranges[-1] = (f, s, n + row)
        else:
            ranges.append((info.file, start, row))
    return ranges


QUANT_MODULE_LISTS = ("ignore", "ignored_layers", "modules_to_not_convert", "exclude_modules")
"""quantization_config lists that name modules, possibly single experts by id."""


def pruned_config(model: MoeModel, plan: PrunePlan) -> dict[str, Any]:
    """config.json with the new expert count under every count key the source used, and
    quantization module lists with removed experts dropped and kept ones renumbered."""
    config = copy.deepcopy(model.config)
    counts = counts_config(text_config(config, model.family), model.family)  # DBRX: ffn_config
    sets = model.family.expert_sets  # ERNIE-4.5-VL: the config counts each of its S sets
    for key in model.family.count_keys:
        if counts.get(key) is not None:
            counts[key] = plan.n_kept // len(sets.routers) if sets else plan.n_kept
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        for key in QUANT_MODULE_LISTS:
            if isinstance(quant.get(key), list):
                quant[key] = [new for name in quant[key] if (new := _module_name(name, model, plan)) is not None]
    return config


def _module_name(name: Any, model: MoeModel, plan: PrunePlan) -> Any:
    """``name`` after pruning: None for a removed expert's module, renumbered for a kept one."""
    if not isinstance(name, str):
        return name
    for layer in model.layers:
        prefix = layer.block + model.family.experts + "."
        m = re.match(re.escape(prefix) + r"(\d+)(?=\.|$)", name)
        if m:
            lp = plan.layers[layer.index]
            j = int(m.group(1))
            if j >= plan.n_experts:
                return name
            return None if j in lp.pruned else f"{prefix}{lp.kept.index(j)}{name[m.end() :]}"
    return name


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, generation config and other top-level non-weight files."""
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name in REWRITTEN or WEIGHT_FILES.match(f.name):
            continue
        if f.name in (INDEX, SINGLE):
            continue
        shutil.copy(f, dst / f.name)
        copied.append(f.name)
    return copied


def model_card(source: str, plan: PrunePlan, model: MoeModel, original: str | None) -> str:
    """README.md of the pruned checkpoint: what was done, then the original card's body."""
    front: list[str] = []
    body = original or ""
    if body.startswith("---\n"):
        end = body.find("\n---", 4)
        if end > 0:
            front = [ln for ln in body[4:end].splitlines() if not ln.startswith("base_model")]
            body = body[end + 4 :].lstrip("\n")
    lines = ["---", *front, f"base_model: {source}", "tags:", "- moeprune", "- moe-expert-pruning", "---", ""]
    lines += [
        f"# {Path(source).name} with {plan.n_pruned} of {plan.n_experts} routed experts pruned per layer",
        "",
        f"Pruned from `{source}` by [moeprune](https://pypi.org/project/moeprune/) in one shot, no retraining.",
        "",
        "| | |",
        "|---|---|",
        f"| criterion | `{plan.criterion}` ({plan.direction.replace('_', ' ')}) |",
        f"| ratio | {plan.ratio} ({plan.n_pruned} removed, {plan.n_kept} kept per layer) |",
        f"| MoE layers | {len(plan.layers)} |",
        f"| family | `{model.family.model_type}`, top-k {model.top_k} (unchanged) |",
        "",
        "`moeprune_plan.json` lists the original ids kept and pruned in every layer; kept experts are",
        "renumbered 0..K-1 in their original order. `scores.csv` holds every expert's score and rank.",
        "Check the result with `moeprune verify ORIGINAL THIS_FOLDER`.",
        "",
    ]
    if body.strip():
        lines += ["## Original model card", "", body]
    return "\n".join(lines)
