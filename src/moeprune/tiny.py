"""Tiny random checkpoints of any registered family, in the family's real on-disk key layout.

Built from the transformers Config class with the entry's tiny overrides, then every weight is
perturbed with seeded noise, so that biases and routers are not at their (often zero) initial
values and every slicing mistake shows. Used by the tests, the benchmarks and ``make-tiny``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from moeprune.arch.families import FAMILIES, supported
from moeprune.errors import InputError, OutputError
from moeprune.io.writer import parse_size


def make_tiny(
    family: str,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    overrides: dict[str, Any] | None = None,
    noise: float = 0.05,
) -> Path:
    """Write a random ``family`` checkpoint to ``out`` and return its path."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from moeprune.hfload import auto_class, quiet

    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}; choose from {', '.join(supported())}")
    entry = FAMILIES[family]
    shard_bytes = parse_size(max_shard_size)  # checked before anything is built or written
    if shard_bytes < 1:
        raise OutputError(f"--max-shard-size {max_shard_size!r} must be positive")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} already exists and is not empty")
    kwargs = {**entry.tiny, **(overrides or {})}
    # transformers' own class (no remote code), on a copy: config classes may edit nested dicts in place
    config = AutoConfig.for_model(entry.model_type, **copy.deepcopy(kwargs))
    torch.manual_seed(seed)
    # a wrapper whose language model is a submodule (Qwen3-Omni's thinker-talker): its own auto class
    auto = AutoModelForImageTextToText if entry.nested and not entry.language_model else auto_class(entry.model_type)
    with quiet():
        model = auto.from_config(config, trust_remote_code=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * noise)
        for name, t in model.named_buffers():  # expert-id tables (hash routing): k distinct ids per row
            if any(name.endswith("." + mem) for _, mem in entry.id_tables):
                n_experts = next(getattr(config, k) for k in entry.count_keys if getattr(config, k, None))
                ids = torch.rand(t.shape[0], n_experts, generator=gen).argsort(dim=1)[:, : t.shape[1]]
                t.copy_(ids.to(t.dtype))
    model = model.to(getattr(torch, dtype))
    state: dict[str, Any] | None = None
    names, prefix = list(model.state_dict()), entry.layers + "."
    if not any(k.startswith(prefix) for k in names) and any(k.startswith("model." + prefix) for k in names):
        # the hub's keys lack the "model." prefix (DeepSeek-V4): saved so, transformers adds it on load
        state = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    with quiet():  # no "Writing model shards" bar
        model.save_pretrained(
            out, state_dict=state, max_shard_size=shard_bytes, save_original_format=not entry.tiny_fused
        )
    if "architectures" in kwargs:  # the hub's name, which save_pretrained replaces (serving engines dispatch on it)
        written = json.loads((out / "config.json").read_text())
        written["architectures"] = kwargs["architectures"]
        (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    _hub_text_model_type(out / "config.json", kwargs)
    if entry.tiny_transposed or entry.tiny_renames:
        transposed = [f"{entry.block}.{name}" if entry.block else name for name in entry.tiny_transposed]
        _as_on_the_hub(out, transposed, entry.tiny_renames)
    return out


def _hub_text_model_type(file: Path, given: dict[str, Any]) -> None:
    """Put back the text model's ``model_type`` the entry gave where transformers saves another
    (Kimi-K2.5's hub config.json says "kimi_k2", which transformers reads and saves as deepseek_v3)."""
    wanted = (given.get("text_config") or {}).get("model_type")
    written = json.loads(file.read_text())
    text = written.get("text_config")
    if wanted is not None and isinstance(text, dict) and text.get("model_type") != wanted:
        text["model_type"] = wanted
        file.write_text(json.dumps(written, indent=2) + "\n")


def _as_on_the_hub(out: Path, transposed: list[str], renames: tuple[tuple[str, str], ...]) -> None:
    """Rewrite the saved shards as the hub stores them: the last two axes of every tensor whose name
    ends with one of ``transposed`` swapped, then every name passed through ``renames`` (the index's
    weight map too)."""
    import re

    from safetensors import safe_open
    from safetensors.torch import save_file

    def hub_name(name: str) -> str:
        for pattern, repl in renames:
            name = re.sub(pattern, repl, name)
        return name

    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        hub = {
            hub_name(k): t.transpose(-1, -2).contiguous() if any(k.endswith(s) for s in transposed) else t
            for k, t in tensors.items()
        }
        save_file(hub, shard, metadata=metadata)
    index = out / "model.safetensors.index.json"
    if index.exists():
        written = json.loads(index.read_text())
        written["weight_map"] = {hub_name(k): v for k, v in written["weight_map"].items()}
        index.write_text(json.dumps(written, indent=2) + "\n")
