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

import re
from collections.abc import Callable
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
    conversion needs it."""

    def __init__(self, ckpt: Checkpoint, name: str):
        self.ckpt, self.name = ckpt, name

    def __getitem__(self, index: Any) -> torch.Tensor:
        tensor = self.ckpt.read(self.name)
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

        self.layers = decoder_layers(self.model)
        pattern = re.compile(re.escape(moe.family.layers) + r"\.(\d+)\.")
        self.keys: dict[int, list[str]] = {}
        outside = []
        for name in ckpt.tensors:
            m = pattern.match(name)
            if m:
                self.keys.setdefault(int(m.group(1)), []).append(name)
            elif "lm_head" not in name and not (moe.family.mtp and name.startswith(moe.family.mtp.split(".")[0] + ".")):
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

        state = {n: LazyTensor(self.ckpt, n) for n in names}
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
        self.model.get_input_embeddings().to("meta")
        memory.release_freed_memory()

    def capture(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The first layer's input and every layer's keyword arguments for one batch."""
        found: list[dict[str, Any]] = []
        first: list[torch.Tensor] = []
        last = len(self.layers) - 1

        def stub(i: int) -> Callable[..., Any]:
            def run(*args: Any, **kwargs: Any) -> Any:
                hidden = args[0] if args else kwargs.pop("hidden_states")
                if not first:
                    first.append(hidden)
                found.append({k: v for k, v in kwargs.items() if k != "hidden_states"} | _extra(args))
                if i == last:
                    raise _Stop
                return hidden

            return run

        for i, layer in enumerate(self.layers):
            layer.forward = stub(i)
        try:
            with torch.no_grad():
                self.model.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            for layer in self.layers:
                del layer.forward
        return first[0], found


def _extra(args: tuple[Any, ...]) -> dict[str, Any]:
    if len(args) > 1:
        raise InputError("a decoder layer is called with positional arguments this version cannot replay")
    return {}
