"""What decoder layers pass on to later layers, carried through layer-wise calibration.

Some models hand a decoder layer more than the hidden states of the layer before: GLM-5's layers
return ``(hidden, topk_indices)`` and the next layer takes them as ``prev_topk_indices`` (a layer
whose indexer is ``shared`` reuses them); Kolibri 1.1's return ``(hidden, index_pool)``; Kolibri 1.1
and Gemma 4 fill a ``shared_kv_states`` mapping with keys and values that later layers read. The
capture pass (`calib.skeleton.Skeleton.capture`) records such arguments as `Carried` (an earlier
layer's extra output, as the model's forward passes it on), `Shared` (a mapping passed to several
layers) or `Stacked` (earlier layers' inputs that the forward stacks between layers: Inkling2's
attention-residual ``block_states``; the state keeps each stacked input until its last reader).
When the engine runs layer i on a batch, `resolve` puts the real values in their place and
`passed_on` keeps, beside the layer's hidden states, only what a later layer still reads: the
batch's *state*, stored with its hidden states in the activation cache (on disk with them under
``--offload-dir`` or a STATS folder, so a resumed run has it: `flatten` / `unflatten`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from moeprune.calib.skeleton import Carried, Shared, Stacked
from moeprune.errors import InputError


def resolve(kwargs: dict[str, Any], state: dict[str, Any], layer: int) -> dict[str, Any]:
    """Layer ``layer``'s keyword arguments with every `Carried` and `Shared` one filled from
    ``state`` (a `Shared` mapping is the model's own object, refilled in place)."""
    out = {}
    for name, value in kwargs.items():
        if isinstance(value, Carried):
            if value.key not in state:
                raise InputError(
                    f"layer {layer}: its argument {name} is an output of layer {value.layer}, which the "
                    "activation cache does not hold"
                )
            value = state[value.key]
        elif isinstance(value, Stacked):
            missing = [k for k in value.keys if k not in state]
            if missing:
                raise InputError(
                    f"layer {layer}: its argument {name} stacks the input of {missing[0]}, which the activation "
                    "cache does not hold"
                )
            value = torch.stack([state[k] for k in value.keys], dim=value.axis)
        elif isinstance(value, Shared):
            value.mapping.clear()
            value.mapping.update(state.get(value.key, value.initial))
            value = value.mapping
        out[name] = value
    return out


def _keys(value: Any) -> tuple[str, ...]:
    """The state keys a layer argument reads."""
    if isinstance(value, (Carried, Shared)):
        return (value.key,)
    if isinstance(value, Stacked):
        return value.keys
    return ()


def passed_on(
    out: Any,
    arity: int,
    layers: list[dict[str, Any]],
    i: int,
    state: dict[str, Any],
    hidden_in: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """(hidden states, state) that layer ``i`` passes on, from its output ``out`` of which the
    model takes ``arity`` values; ``layers`` are the keyword arguments of every layer for this
    batch. The state keeps what layers after ``i`` read (their `Carried` outputs and `Shared`
    mappings, the inputs their `Stacked` arguments stack: layer ``i``'s is ``hidden_in``), nothing
    else; a `Shared` mapping is emptied once its contents are in the state."""
    if arity > 1:
        if not isinstance(out, tuple) or len(out) != arity:
            n = len(out) if isinstance(out, tuple) else 1
            raise InputError(f"layer {i} returned {n} values where the model's forward takes {arity}")
        hidden, extras = out[0], out[1:]
    else:
        hidden, extras = (out[0] if isinstance(out, tuple) else out), ()
    later = {k for kw in layers[i + 1 :] for v in kw.values() for k in _keys(v)}
    new = {k: v for k, v in state.items() if k in later}
    if hidden_in is not None and f"in{i}" in later:
        new[f"in{i}"] = hidden_in
    for slot, value in enumerate(extras, 1):
        key = Carried(i, slot).key
        if key in later:
            new[key] = value
    for value in layers[i].values():
        if isinstance(value, Shared):
            if value.key in later:
                new[value.key] = dict(value.mapping)
            value.mapping.clear()
    return hidden, new


def flatten(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The JSON structure of ``state``; its tensors are added to ``tensors`` (``state.0``, ...),
    on the CPU, each a copy of its own (safetensors refuses tensors that share memory)."""

    def walk(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        if isinstance(value, torch.Tensor):
            name = f"state.{len(tensors)}"
            tensors[name] = value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            return {"tensor": name}
        if isinstance(value, (tuple, list)):
            return {type(value).__name__: [walk(v) for v in value]}
        if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
            return {"map": {k: walk(v) for k, v in value.items()}}
        raise InputError(f"a decoder layer passes on a {type(value).__name__}, which calibration cannot store")

    return {key: walk(value) for key, value in state.items()}


def unflatten(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The state `flatten` wrote."""

    def walk(node: dict[str, Any]) -> Any:
        ((kind, value),) = node.items()
        if kind == "value":
            return value
        if kind == "tensor":
            return tensors[value]
        if kind == "tuple":
            return tuple(walk(v) for v in value)
        if kind == "list":
            return [walk(v) for v in value]
        return {k: walk(v) for k, v in value.items()}

    return {key: walk(node) for key, node in structure.items()}
