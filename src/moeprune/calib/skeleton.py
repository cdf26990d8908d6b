"""The model skeleton of layer-wise calibration: the model on the meta device, filled and emptied
one decoder layer at a time through transformers' own loading and key conversion, and the capture
of what the model passes to its decoder layers.

Each layer's tensors reach transformers as lazy slices (read from the checkpoint when transformers
materialises them, as ``from_pretrained`` does with safetensors slices), never as a state dict read
in advance, and never through a memory map whose pages would stay in the process's RSS. Loads run
under `memory.mapped_allocations` and every freed layer is trimmed from the C heap, so a layer's
memory goes back to the OS before the next one loads.
"""

from __future__ import annotations

import dis
import functools
import inspect
import re
import sys
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

import torch

from moeprune.arch.layout import MoeModel
from moeprune.calib import memory
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint
from moeprune.loading import decoder_layers


class _Stop(Exception):
    """Raised by the last stubbed layer: the capture pass needs nothing after it."""


class LazyTensor:
    """One checkpoint tensor, read when indexed (``t[...]``: the slice protocol transformers'
    loading uses for safetensors), so that transformers materialises each tensor only when its
    conversion needs it. A block-scaled FP8 weight is read dequantized with its ``_scale_inv``
    (``scale`` names it): the skeleton is built without transformers' quantizer, so the raw codes
    would otherwise be taken for the weights."""

    def __init__(self, ckpt: Checkpoint, name: str, scale: str = "", block: list[int] | None = None):
        self.ckpt, self.name, self.scale, self.block = ckpt, name, scale, block

    def __getitem__(self, index: Any) -> torch.Tensor:
        tensor = self.ckpt.read(self.name)
        if self.scale.endswith("_scale_inv"):  # block-scaled FP8 (DeepSeek-V3, Qwen3 FP8)
            from moeprune.scoring.quant import block_size, fp8_block_dequantize

            s = self.ckpt.read(self.scale)
            tensor = fp8_block_dequantize(tensor, s, block_size(tuple(tensor.shape), tuple(s.shape), self.block))
        elif self.scale:  # MXFP8: one E8M0 exponent per 32 values of the last axis
            from moeprune.scoring.quant import mx_dequantize

            tensor = mx_dequantize(tensor, self.ckpt.read(self.scale))
        return tensor if index is Ellipsis else tensor[index]

    def get_shape(self) -> list[int]:
        return list(self.ckpt.info(self.name).shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.get_shape())


class Skeleton:
    """The model with meta weights, filled layer by layer through transformers' loading code."""

    def __init__(self, ckpt: Checkpoint, moe: MoeModel, dtype: torch.dtype, device: torch.device):
        from transformers import AutoConfig
        from transformers.conversion_mapping import get_model_conversion_mapping

        from moeprune.hfload import from_config

        self.ckpt, self.moe, self.dtype, self.device = ckpt, moe, dtype, device
        config = AutoConfig.from_pretrained(ckpt.path, trust_remote_code=False)
        with torch.device("meta"):
            self.model = from_config(config, dtype=dtype)  # the multimodal ones: their ...ForConditionalGeneration
        self.model.eval()
        self.mapping = get_model_conversion_mapping(self.model)
        sub = moe.family.language_model  # Qwen3-Omni: the thinker runs; the talker stays on meta, never loaded
        self.lm = self.model.get_submodule(sub) if sub else self.model
        """The language model that runs (the model itself, or its ``Family.language_model`` submodule)."""
        root = f"{sub}." if sub else ""  # the checkpoint names of what runs

        self.layers = decoder_layers(self.lm)
        self.arity: dict[int, int] = {}
        """Per decoder layer, how many values the model takes from its output (1: the hidden states
        alone); learnt by `capture`."""
        self.stacks: dict[tuple[int, str], Stacked] | None = None
        """Per (decoder layer, argument), the `Stacked` arguments the first `capture` recognised; None
        before it."""
        pattern = re.compile(re.escape(moe.family.layers) + r"\.(\d+)\.")
        self.keys: dict[int, list[str]] = {}
        outside = []
        mtp = _mtp_root(moe.family.mtp, moe.family.layers)
        for name in ckpt.tensors:
            m = pattern.match(name)
            if m:
                self.keys.setdefault(int(m.group(1)), []).append(name)
            elif "lm_head" not in name and not (mtp and name.startswith(mtp)) and name.startswith(root):
                outside.append(name)
        with memory.mapped_allocations():
            self.load(outside)
        for name, buf in list(self.model.named_non_persistent_buffers()):  # rotary tables etc.
            owner, _, attr = name.rpartition(".")
            module = self.model.get_submodule(owner)
            module.register_buffer(attr, torch.empty_like(buf, device=device), persistent=False)
            self.model._init_weights(module)

    def load(self, names: list[str]) -> None:
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig
        from transformers.utils import logging as hf_logging

        state = self._lazy(names)
        config = LoadStateDictConfig(
            device_map={"": self.device},
            dtype=self.dtype,
            weight_mapping=self.mapping,  # type: ignore[arg-type]
        )
        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            convert_and_load_state_dict_in_model(self.model, state, config)
        finally:
            if was:
                hf_logging.enable_progress_bar()

    def _lazy(self, names: list[str]) -> dict[str, LazyTensor]:
        """The lazy tensors of ``names``: FP8 weights dequantized with their block scales (which are
        then not loaded); any other FP8 tensor is refused, since its codes are not its values."""
        block = (self.ckpt.config.get("quantization_config") or {}).get("weight_block_size")
        present = set(self.ckpt.tensors)
        state: dict[str, LazyTensor] = {}
        for n in names:
            base = n.rsplit("_scale", 1)[0]
            if n.endswith(("_scale_inv", "_scale")) and base in present and self.ckpt.info(base).dtype.startswith("F8"):
                continue  # read with its FP8 weight
            info = self.ckpt.info(n)
            if not info.dtype.startswith("F8"):
                state[n] = LazyTensor(self.ckpt, n)
            elif n + "_scale_inv" in present:
                state[n] = LazyTensor(self.ckpt, n, n + "_scale_inv", block)
            elif n + "_scale" in present and self._mx_scale(info.shape, n + "_scale"):
                state[n] = LazyTensor(self.ckpt, n, n + "_scale")
            else:
                raise InputError(
                    f"{n}: an FP8 tensor without block scales ({n}_scale_inv) or MX exponents ({n}_scale); "
                    "calibration cannot dequantize it (calibrate the bf16 checkpoint)"
                )
        return state

    def _mx_scale(self, shape: tuple[int, ...], name: str) -> bool:
        """``name`` is an MX exponent tensor for a weight of ``shape``: bytes, one per 32 values of the
        last axis."""
        info = self.ckpt.info(name)
        return (
            info.dtype in ("U8", "F8_E8M0")
            and len(info.shape) == len(shape)
            and tuple(info.shape[:-1]) == tuple(shape[:-1])
            and shape[-1] == 32 * info.shape[-1]
        )

    def load_layer(self, i: int) -> torch.nn.Module:
        with memory.mapped_allocations():
            self.load(self.keys.get(i, []))
        layer = self.layers[i]
        meta = [n for n, p in list(layer.named_parameters()) + list(layer.named_buffers()) if p.is_meta]
        if meta:
            raise InputError(f"layer {i}: the checkpoint has no weights for {meta[0]}")
        return layer

    def free_layer(self, i: int) -> None:
        self.layers[i].to("meta")
        memory.release_freed_memory()

    def free_embeddings(self) -> None:
        """Drop the input embeddings once every batch's first-layer input is captured."""
        self.lm.get_input_embeddings().to("meta")
        memory.release_freed_memory()

    def capture(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The first layer's input and every layer's keyword arguments for one batch.

        Positional arguments after the hidden states are named by the layer's signature (Gemma 4's
        ``per_layer_input``). An argument that is an earlier layer's extra output (GLM-5's top-k
        tokens, Kolibri's index pool) is recorded as `Carried`, a mapping that layers fill for later
        layers (shared keys and values) as `Shared`: the engine passes the real values when it runs
        the layers. How many values the model takes from each layer (`arity`) is read from the
        model's own forward, at the call.

        An argument that the model's forward computes from earlier layers' hidden states between
        layers cannot be taken from the capture, where every layer is a stub: each stub returns
        random values of its own, followed through every torch operation (`_Derived`). Such an
        argument that is exactly a stack of earlier layers' inputs (Inkling2's attention-residual
        ``block_states``: the inputs of its block-boundary layers) is recorded as `Stacked`, which the
        engine rebuilds from the real inputs; any other is refused with one line. Only the first
        batch's stubs draw random values (the recognised stacks are kept in `stacks`); later batches'
        stubs return their input, as the stacks are the same structure for every batch."""
        found: list[dict[str, Any]] = []
        first: list[torch.Tensor] = []
        last = len(self.layers) - 1
        shared: dict[int, Shared] = {}
        derived = _Derived()
        probe = self.stacks is None
        stacks: dict[tuple[int, str], Stacked] = {} if self.stacks is None else self.stacks
        prints: list[torch.Tensor] = []  # a fingerprint of every layer's input in this capture

        def stub(i: int, layer: torch.nn.Module, signature: inspect.Signature) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                hidden, named = _named(signature, args, kwargs)
                if not first:
                    first.append(hidden)
                prints.append(_fingerprint(hidden))
                for k, v in named.items():
                    if not derived.holds(v):
                        continue
                    if probe:  # layer j's input: the first layer's, or stub j - 1's random values (seed j)
                        stacks[i, k] = _stacked(v, prints[:-1], lambda j: _noise(hidden, j) if j else first[0], i, k)
                    elif (i, k) not in stacks:
                        raise InputError(
                            f"layer {i}: the model computes its argument {k!r} from earlier layers' hidden states "
                            "between layers in this batch only, which layer-by-layer calibration does not replay"
                        )
                    named[k] = stacks[i, k]
                found.append({k: _record(v, shared, i) for k, v in named.items()})
                n = _unpacked_by_caller(sys._getframe(1), layer)
                if self.arity.setdefault(i, n) != n:
                    raise InputError(
                        f"layer {i}: the model takes {n} outputs from it in one batch and {self.arity[i]} in another"
                    )
                if i == last:
                    raise _Stop
                # first batch: values of its own, so that a stack of layer inputs is recognised by value
                out = derived.add(_noise(hidden, len(prints)) if probe else hidden.view_as(hidden))
                return out if n == 1 else (out, *(_Marker(i, s) for s in range(1, n)))

            return run

        for i, layer in enumerate(self.layers):
            signature = inspect.signature(layer.forward)
            layer.forward = stub(i, layer, signature)
        try:
            with torch.no_grad(), derived:
                self.lm.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
        except _Stop:
            pass
        except TypeError as e:  # the model used a placeholder of an earlier layer's output as a value
            if "_Marker" not in str(e):
                raise
            raise InputError(f"the model computes with a decoder layer's extra output between layers: {e}") from None
        finally:
            for layer in self.layers:
                del layer.forward
        self.stacks = stacks
        return first[0], found


@dataclass(frozen=True)
class Carried:
    """An argument of a decoder layer that is extra output ``slot`` (1, 2, ...; 0 is the hidden
    states) of the earlier decoder layer ``layer``, as the model's forward passes it on."""

    layer: int
    slot: int

    @property
    def key(self) -> str:
        return f"out{self.layer}.{self.slot}"


@dataclass(eq=False)
class Shared:
    """A mapping the model passes to its decoder layers, which layers fill for later ones (shared
    keys and values: Kolibri 1.1, Gemma 4): ``initial`` is what it held before the first layer."""

    key: str
    mapping: MutableMapping[Any, Any]
    initial: dict[Any, Any]


def _mtp_root(mtp: str | None, layers: str) -> str | None:
    """The prefix of every MTP tensor, which transformers does not load: the MTP prefix's first
    component (Qwen3-Next's ``mtp.``: ``mtp.fc``, ``mtp.norm`` beside ``mtp.layers``), unless the
    decoder layers share it (Hy-V4's ``model.mtp_layers.`` beside ``model.layers.``)."""
    if not mtp:
        return None
    root = mtp.split(".")[0] + "."
    return mtp + "." if layers.startswith(root) else root


@dataclass(frozen=True)
class Stacked:
    """An argument of a decoder layer that the model's forward builds between layers by stacking the
    inputs of the earlier decoder layers ``layers`` (in that order) along ``axis``: Inkling2's
    ``block_states``, the inputs of its attention-residual block boundaries."""

    layers: tuple[int, ...]
    axis: int

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f"in{j}" for j in self.layers)


def _noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    """Random values shaped like ``like``, the same for the same seed."""
    gen = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(like.shape, generator=gen, device=like.device).to(like.dtype)


FINGERPRINT = 16
"""Values of a tensor compared before the whole tensor (`_stacked`)."""


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """A tensor's dtype-preserving first values (shape (n,)), kept instead of the tensor."""
    return t.detach().reshape(-1)[:FINGERPRINT].clone()


def _stacked(
    value: Any, prints: list[torch.Tensor], full: Callable[[int], torch.Tensor], layer: int, name: str
) -> Stacked:
    """``value`` (computed from the stub layers' outputs) as a `Stacked` of earlier layer inputs, matched
    exactly by value: layer j's input has the fingerprint ``prints[j]`` and is ``full(j)``; an InputError
    when ``value`` is anything else."""
    if isinstance(value, torch.Tensor) and prints:
        shape = tuple(full(0).shape)
        for axis in range(value.dim()):
            if tuple(value.shape[:axis] + value.shape[axis + 1 :]) != shape:
                continue
            found = []
            for s in range(value.shape[axis]):
                part = value.select(axis, s)
                head = _fingerprint(part)
                match = [
                    j
                    for j, fp in enumerate(prints)
                    if fp.dtype == head.dtype and torch.equal(fp, head) and torch.equal(full(j), part)
                ]
                if not match:
                    break
                found.append(match[0])
            else:
                return Stacked(tuple(found), axis)
    raise InputError(
        f"layer {layer}: the model computes its argument {name!r} from earlier layers' hidden states between "
        "layers (not as a stack of their inputs), which layer-by-layer calibration does not replay"
    )


class _Derived(torch.overrides.TorchFunctionMode):
    """Follows the stubbed layers' outputs through the capture: the result of every torch operation
    on such a tensor (or on one derived from it) is derived too."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        """id -> tensor, for as long as the model holds it (an entry goes with its tensor: no id reuse)."""

    def add(self, value: Any) -> Any:
        for t in _tensors(value):
            self.tensors[id(t)] = t
        return value

    def holds(self, value: Any) -> bool:
        return any(self.tensors.get(id(t)) is t for t in _tensors(value))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.tensors and self.holds((args, kwargs)):
            self.add(out)
        return out


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value`` and in the tuples, lists and mappings it holds."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Marker:
    """What a stubbed layer returns in place of its extra output ``slot`` during the capture."""

    __slots__ = ("layer", "slot")

    def __init__(self, layer: int, slot: int):
        self.layer, self.slot = layer, slot

    def __repr__(self) -> str:
        return f"_Marker(layer {self.layer}, output {self.slot})"


def _named(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(hidden states, every other argument by name) of one decoder-layer call."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise InputError(f"a decoder layer is called with arguments its signature does not take: {e}") from None
    hidden, named = None, {}
    for k, (name, value) in enumerate(bound.arguments.items()):
        kind = signature.parameters[name].kind
        if k == 0:
            hidden = value
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL or kind is inspect.Parameter.POSITIONAL_ONLY:
            if value:
                raise InputError("a decoder layer is called with positional arguments this version cannot replay")
        else:
            named[name] = value
    return hidden, named


def _record(value: Any, shared: dict[int, Shared], layer: int) -> Any:
    if isinstance(value, _Marker):
        return Carried(value.layer, value.slot)
    if isinstance(value, MutableMapping):
        if id(value) not in shared:
            shared[id(value)] = Shared(f"shared{len(shared)}", value, dict(value))
        return shared[id(value)]
    if _holds_marker(value):
        raise InputError(f"layer {layer}: the model passes an earlier layer's output inside {type(value).__name__}")
    return value


def _holds_marker(value: Any) -> bool:
    if isinstance(value, _Marker):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_marker(v) for v in value)
    if isinstance(value, Mapping):
        return any(_holds_marker(v) for v in value.values())
    return False


def _unpacked_by_caller(frame: FrameType | None, layer: torch.nn.Module) -> int:
    """How many values the model's forward unpacks from this call of ``layer`` (1 when it keeps the
    result whole): the instruction after the call in the first caller that is not the layer's own
    ``__call__`` machinery (``UNPACK_SEQUENCE n`` for ``hidden_states, topk = layer(...)``)."""
    while frame is not None and frame.f_locals.get("self") is layer:
        frame = frame.f_back
    if frame is None:
        return 1
    after = _after(frame.f_code, frame.f_lasti)
    if after is None:
        return 1
    if after.opname == "UNPACK_SEQUENCE":
        return int(after.argval)
    if after.opname == "UNPACK_EX":
        raise InputError(
            "the model unpacks a decoder layer's outputs with a starred target, which this version cannot replay"
        )
    return 1


@functools.lru_cache(maxsize=256)
def _after(code: CodeType, offset: int) -> dis.Instruction | None:
    """The instruction after the one at ``offset`` (a call, with its inline caches) in ``code``."""
    return next((ins for ins in dis.get_instructions(code) if ins.offset > offset), None)
