"""Check that a plan or scores chosen on another copy of a model (typically the Hugging Face
checkpoint, where calibration criteria can run) belong to this GGUF model before applying them:
same family (when the plan's folder holds the checkpoint's ``config.json``), same expert count,
same MoE layers, a valid kept set of the same size in every layer, routing still feasible.
Block N of a GGUF file is decoder layer N of the checkpoint it was converted from (and the
multi-token-prediction layers follow the decoder's in both numberings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from moeprune.arch.gguf import arch_for_model_type
from moeprune.errors import InputError
from moeprune.gguf.model import GgufModel, GgufTensor
from moeprune.plan import LayerPlan, PrunePlan, check_feasible


def _layers(model: GgufModel) -> list[int]:
    return [layer.index for layer in model.layers]


def _routers(model: GgufModel) -> list[tuple[int, GgufTensor]]:
    out = []
    for layer in model.layers:
        name = next(n for n in layer.sliced if model.roles[n].role == "router" and n.endswith(".weight"))
        out.append((layer.index, model.tensors[name]))
    return out


def _digest(parts: list[tuple[int, bytes]]) -> str:
    h = hashlib.sha256()
    for index, data in parts:
        h.update(f"{index}:".encode())
        h.update(data)
    return h.hexdigest()


def fingerprint(model: GgufModel) -> str:
    """sha256 over the MoE blocks of ``"{layer}:"`` and the router's bytes as stored: the recipe
    of `moeprune.provenance.fingerprint`, so GGUF files that share their routers (llama.cpp keeps
    ``ffn_gate_inp`` unquantized in every quantization of one conversion) share it."""
    return _digest([(i, _raw(model, t).tobytes()) for i, t in _routers(model)])


def _raw(model: GgufModel, t: GgufTensor) -> Any:
    return model.readers[t.shard].data[t.offset : t.offset + t.nbytes]


def checkpoint_fingerprints(model: GgufModel) -> set[str]:
    """The fingerprints the Hugging Face checkpoint this file was converted from may have: its
    routers' values written as float32, float16 and bfloat16 (the converter stores the router
    in F32/F16/BF16, exactly, from whichever of them the checkpoint holds)."""
    import numpy as np
    from gguf.quants import dequantize

    values = [(i, dequantize(np.array(_raw(model, t)), t.qtype).astype(np.float32)) for i, t in _routers(model)]
    out = {_digest([(i, v.tobytes()) for i, v in values])}
    with np.errstate(over="ignore"):
        out.add(_digest([(i, v.astype(np.float16).tobytes()) for i, v in values]))
    out.add(_digest([(i, (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()) for i, v in values]))
    return out


def source_of(model: GgufModel, given: str) -> Any:
    """The `moeprune.provenance.Source` recorded with scores and plans made on a GGUF file
    (its family is the GGUF architecture)."""
    from moeprune.provenance import Source

    return Source(
        model=given,
        family=model.arch.arch,
        n_experts=model.n_experts,
        moe_layers=[layer.index for layer in model.layers],
        fingerprint=fingerprint(model),
    )


def check_source(model: GgufModel, source: Any, what: str) -> None:
    """Refuse scores or a plan recorded as made on another model. Made on a GGUF file: same
    architecture, experts, MoE blocks and router bytes. Made on a Hugging Face checkpoint: a
    family this architecture converts from, same experts and MoE layers (router bytes are not
    compared as float32, float16 and bfloat16, since the conversion may change their dtype)."""
    if source is None:
        return
    family = getattr(source, "family", None)
    here = [layer.index for layer in model.layers]
    if (
        family not in (model.arch.arch, *model.arch.model_types)
        or source.n_experts != model.n_experts
        or list(source.moe_layers) != here
    ):
        found = arch_for_model_type(str(family))
        raise InputError(
            f"{what} was made from {source.model} ({family}{f', GGUF {found.arch}' if found else ''}, "
            f"{source.n_experts} experts, {len(source.moe_layers)} MoE layers), not from {model.path} "
            f"(GGUF {model.arch.arch}, {model.n_experts} experts, {len(here)} MoE blocks)"
        )
    if family == model.arch.arch:
        same = source.fingerprint == fingerprint(model)
    else:
        same = source.fingerprint in checkpoint_fingerprints(model)
    if not same:
        raise InputError(
            f"{what} was made from {source.model}, whose router weights differ from those of {model.path} "
            "(another model of the same architecture)"
        )


def _family_of(plan: PrunePlan, plan_path: Path | None) -> str | None:
    """The Hugging Face family a plan was chosen on: its recorded source, else the ``config.json``
    of the pruned checkpoint folder it sits in (as ``moeprune prune`` writes it)."""
    if plan_path is None or not (plan_path.parent / "config.json").is_file():
        return None
    try:
        data = json.loads((plan_path.parent / "config.json").read_text())
        model_type = data.get("model_type") or (data.get("text_config") or {}).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return model_type if isinstance(model_type, str) else None


def check_family(model: GgufModel, plan: PrunePlan, plan_path: Path | None) -> None:
    """The plan's source, when recorded, must be this model (`check_source`); else the family of
    the checkpoint folder it sits in must be one this GGUF architecture is converted from."""
    if getattr(plan, "source", None) is not None:
        check_source(model, plan.source, str(plan_path or "the plan"))
        return
    family = _family_of(plan, plan_path)
    if family is None or family in (model.arch.arch, *model.arch.model_types):
        return
    found = arch_for_model_type(family)
    raise InputError(
        f"{plan_path or 'the plan'} was made for a {family} model{f' (GGUF {found.arch})' if found else ''}, "
        f"not this GGUF {model.arch.arch} model"
    )


def check_plan(model: GgufModel, plan: PrunePlan, source: str | Path, plan_path: Path | None = None) -> PrunePlan:
    """``plan`` checked against ``model``; returns it (kept ids sorted)."""
    check_family(model, plan, plan_path)
    if plan.n_experts != model.n_experts:
        raise InputError(f"{source} is for {plan.n_experts} experts per layer; this GGUF has {model.n_experts}")
    want = _layers(model)
    if sorted(plan.layers) != want:
        raise InputError(
            f"{source} covers MoE layers {sorted(plan.layers)[:8]}...; this GGUF's MoE blocks are {want[:8]}..."
            if len(want) > 8
            else f"{source} covers MoE layers {sorted(plan.layers)}; this GGUF's MoE blocks are {want}"
        )
    n_kept = None
    for i, lp in plan.layers.items():
        ids = sorted(lp.kept)
        if len(set(ids)) != len(ids) or any(not 0 <= j < model.n_experts for j in ids):
            raise InputError(f"{source}: layer {i} keeps invalid expert ids")
        if sorted(ids + list(lp.pruned)) != list(range(model.n_experts)):
            raise InputError(f"{source}: layer {i}'s kept and pruned ids do not cover the {model.n_experts} experts")
        if n_kept is not None and len(ids) != n_kept:
            raise InputError(f"{source}: layers keep different numbers of experts; a GGUF holds one expert count")
        n_kept = len(ids)
        plan.layers[i] = LayerPlan(kept=ids, pruned=sorted(lp.pruned))
    assert n_kept is not None
    check_feasible(model.n_experts, model.top_k, model.n_experts - n_kept, model.groups)
    if model.groups is not None:
        size = model.n_experts // model.groups.n_group
        for i, lp in plan.layers.items():
            per = {j // size for j in lp.pruned}
            counts = [sum(1 for j in lp.pruned if j // size == g) for g in range(model.groups.n_group)]
            if len(set(counts)) != 1 or not per:
                raise InputError(f"{source}: layer {i} does not remove the same number from every expert group")
    return plan
