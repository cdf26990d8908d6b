"""Tiny random checkpoints of any registered family, in the family's real on-disk key layout.

Built from the transformers Config class with the entry's tiny overrides, then every weight is
perturbed with seeded noise, so that biases and routers are not at their (often zero) initial
values and every slicing mistake shows. Used by the tests, the benchmarks and ``make-tiny``.
"""

from __future__ import annotations

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
    config = AutoConfig.for_model(entry.model_type, **kwargs)  # transformers' own class: no remote code
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if entry.nested else auto_class(entry.model_type)
    with quiet():
        model = auto.from_config(config, trust_remote_code=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * noise)
    model = model.to(getattr(torch, dtype))
    with quiet():  # no "Writing model shards" bar
        model.save_pretrained(out, max_shard_size=shard_bytes, save_original_format=not entry.tiny_fused)
    if "architectures" in kwargs:  # the hub's name, which save_pretrained replaces (serving engines dispatch on it)
        written = json.loads((out / "config.json").read_text())
        written["architectures"] = kwargs["architectures"]
        (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    return out
