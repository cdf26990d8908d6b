"""Proof that a pruned checkpoint equals its original with the removed experts masked.

Both checkpoints are loaded with transformers on CPU in float32. In the original, removed
experts are masked out of every MoE layer's router: their router logits get -inf (intercepted
where the router computes them, so every routing rule downstream sees the mask), and for routers
that select on score + bias, their selection-bias entries are set to -inf as well, because a
sigmoid of -inf plus a finite bias can still be chosen. In layers that choose experts from a table
of expert ids (DeepSeek-V4's hash layers), the table's slots naming removed experts are re-routed
as the surgery re-routes them (`moeprune.io.idtable`), since the pruned table cannot leave a slot
empty. The two models' logits on a fixed random token batch must agree to ``atol``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeprune.arch.families import family_for_config
from moeprune.arch.layout import text_config
from moeprune.arch.spec import Family
from moeprune.errors import InputError
from moeprune.hfload import quiet
from moeprune.io.idtable import reroute_original
from moeprune.io.reader import load_config, resolve
from moeprune.loading import decoder_layers, open_model
from moeprune.plan import PrunePlan, check_pruned_from

TOLERANCE = 1e-4


@dataclass
class VerifyResult:
    max_abs_diff: float
    max_abs_logit: float
    layers_masked: int
    tokens: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def load_causal_lm(path: Path) -> Any:
    """The checkpoint at ``path`` in float32 on CPU, built by transformers' own classes only
    (``trust_remote_code=False``; a model that needs its own code is refused), quietly."""
    import torch

    from moeprune.hfload import causal_lm

    return causal_lm(path, dtype=torch.float32, device_map="cpu").eval()


def masked_forward(model: Any, config: dict[str, Any], plan: PrunePlan, ids: Any, **inputs: Any) -> Any:
    """Logits of ``model`` on ``ids`` (and ``inputs``) with ``plan``'s pruned experts masked out of
    every router."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    family = family_for_config(config)
    layers = decoder_layers(model)
    masks: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for i, lp in plan.layers.items():
            if i >= len(layers):  # MTP layers are not loaded by transformers
                continue
            layer = layers[i]
            for mem_router, mem_bias, pruned in _per_set(family, lp.pruned, plan.n_experts):
                router = layer.get_submodule(mem_router)
                mask = torch.zeros(router.weight.shape[0])  # rows after the E experts (router_rows) stay unmasked
                mask[pruned] = float("-inf")
                masks[router.weight.data_ptr()] = mask
                if mem_bias is not None and _has(layer, mem_bias):  # table-routed layers have none
                    bias = _tensor(layer, mem_bias)
                    bias[..., pruned] = float("-inf")
            for _, path in family.id_tables:  # hash routing: removed slots re-routed as the surgery does
                if _has(layer, path):
                    table = _tensor(layer, path)
                    table.copy_(reroute_original(table, lp.kept, plan.n_experts))

    class MaskRouters(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if func is F.linear:
                weight = args[1] if len(args) > 1 else (kwargs or {}).get("weight")
                mask = masks.get(weight.data_ptr()) if isinstance(weight, torch.Tensor) else None
                if mask is not None:
                    out = out + mask.to(out.dtype)
            return out

    with torch.no_grad(), MaskRouters():
        return model(ids, **inputs).logits


def _per_set(family: Family, pruned: list[int], n_experts: int) -> list[tuple[str, str | None, list[int]]]:
    """(router module, selection bias, removed experts numbered within the set) for each expert set of a
    layer: one set, or ``Family.expert_sets`` (set s owns ids s·E .. (s+1)·E − 1 of the plan)."""
    sets = family.expert_sets
    if sets is None:
        return [(family.mem_router, family.mem_bias, pruned)]
    per = n_experts // len(sets.mem_routers)
    biases: list[str | None] = list(sets.mem_biases) or [None] * len(sets.mem_routers)
    return [
        (router, bias, [j - s * per for j in pruned if s * per <= j < (s + 1) * per])
        for s, (router, bias) in enumerate(zip(sets.mem_routers, biases, strict=True))
    ]


def _tensor(module: Any, path: str) -> Any:
    owner, _, name = path.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _has(module: Any, path: str) -> bool:
    try:
        _tensor(module, path)
    except AttributeError:
        return False
    return True


def verify(
    original: str | os.PathLike[str],
    pruned: str | os.PathLike[str],
    *,
    batch: int = 2,
    seq_len: int = 32,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> VerifyResult:
    """Compare ``pruned`` with ``original`` masked as its ``moeprune_plan.json`` says."""
    import torch

    src, out = resolve(original), resolve(pruned)
    plan = check_pruned_from(out, src)  # before any model is loaded: the pair must belong together
    open_model(out)[0].close()  # the pruned folder's config, headers and experts checked before transformers
    config = load_config(src)
    family = family_for_config(config)
    text = text_config(config, family)
    vocab = text.get("vocab_size")
    if vocab is None:
        raise InputError(f"{src / 'config.json'}: has no vocab_size (verify draws its test tokens from it)")
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    batches: list[dict[str, Any]] = [{}]
    sets = family.expert_sets
    if sets is not None and sets.select:  # ERNIE-4.5-VL: the same tokens again, spread over the expert sets
        which = torch.randint(0, len(sets.routers), (batch, seq_len), generator=torch.Generator().manual_seed(seed + 1))
        batches.append({sets.select: which})
    with quiet(), torch.no_grad():  # transformers' bars and warnings (kernel fallbacks) stay inside
        original = load_causal_lm(src)
        references = [masked_forward(original, config, plan, ids, **extra) for extra in batches]
        del original  # one model in memory at a time
        model = load_causal_lm(out)
        gots = [model(ids, **extra).logits for extra in batches]
    diff = 0.0
    for got, reference in zip(gots, references, strict=True):
        if got.shape != reference.shape:
            raise InputError(f"logit shapes differ: pruned {list(got.shape)} vs original {list(reference.shape)}")
        diff = max(diff, float((got - reference).abs().max()))
    masked = sum(1 for i in plan.layers if i < int(family.n_layers(text)))
    largest = max(float(r.abs().max()) for r in references)
    return VerifyResult(diff, largest, masked, batch * seq_len * len(batches), tolerance)
