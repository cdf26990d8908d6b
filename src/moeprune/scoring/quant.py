"""Pooled weight moments of quantized expert tensors, computed on the dequantized values.

Weight criteria must see the real weights: per-block scales change relative magnitudes, so the
raw codes cannot be scored. Both formats here factor per block, so the dequantized tensor is
never built: with w = s_b * q inside block b, sum|w| = sum_b s_b sum_b|q| and
sum w^2 = sum_b s_b^2 sum_b q^2, accumulated in float64.

- FP8 with block scales (DeepSeek-V3, Qwen3 FP8): ``W`` (float8_e4m3fn, [R, C]) and
  ``W_scale_inv`` (float32, [ceil(R/br), ceil(C/bc)]); w = q * scale_inv of the block. The block
  size comes from ``quantization_config.weight_block_size`` or, when absent, is the 128 x 128 of
  every public checkpoint, checked against the scale tensor's shape.
- MXFP4 (GPT-OSS): ``*_blocks`` (uint8, [..., G, 16], two FP4 E2M1 codes per byte) and
  ``*_scales`` (uint8 E8M0, [..., G]); groups of 32 values share the scale 2^(e - 127). DeepSeek-V4
  stores the same codes as ``W.weight`` (int8, [R, C/2]) with ``W.scale`` (E8M0, [R, C/32]).
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING, Any

from moeprune.arch.layout import QUANT_COMPANIONS, MoeModel
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint

if TYPE_CHECKING:
    import torch

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""|value| of the E2M1 codes 0..7 (bit 3 is the sign)."""


@cache
def byte_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """For each byte: sum of |value| and of value^2 of its two FP4 codes."""
    import torch

    mag = torch.tensor(FP4_VALUES * 2, dtype=torch.float64)  # code -> |value|, sign bit ignored
    lo, hi = mag[torch.arange(256) & 15], mag[torch.arange(256) >> 4]
    return lo + hi, lo * lo + hi * hi


def mxfp4_moments(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[int, float, float]:
    """(n, sum|w|, sum w^2) of MXFP4 ``blocks`` [..., G, 16] with E8M0 ``scales`` [..., G]."""
    if blocks.shape[:-1] != scales.shape:
        raise InputError(f"MXFP4 blocks {list(blocks.shape)} do not match scales {list(scales.shape)}")
    import torch

    byte_abs, byte_sq = byte_tables()
    idx = blocks.to(torch.int64)
    a = byte_abs[idx].sum(-1)  # (..., G)
    b = byte_sq[idx].sum(-1)
    scale = torch.exp2(scales.to(torch.float64) - 127.0)
    return blocks.numel() * 2, float((a * scale).sum()), float((b * scale * scale).sum())


def block_size(shape: tuple[int, ...], scale_shape: tuple[int, ...], configured: list[int] | None) -> tuple[int, int]:
    """Block (rows, cols) of an FP8 weight of ``shape`` with scales of ``scale_shape``."""
    rows, cols = shape
    br, bc = (int(configured[0]), int(configured[1])) if configured else (128, 128)
    if (math.ceil(rows / br), math.ceil(cols / bc)) != tuple(scale_shape):
        raise InputError(
            f"FP8 weight {list(shape)} with block {br}x{bc} needs scales "
            f"{[math.ceil(rows / br), math.ceil(cols / bc)]}, found {list(scale_shape)}"
        )
    return br, bc


def fp8_block_moments(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> tuple[int, float, float]:
    """(n, sum|w|, sum w^2) of an FP8 weight [R, C] dequantized with per-block ``scale_inv``."""
    import torch

    br, bc = block
    rows, cols = q.shape
    sr, sc = scale_inv.shape
    x = torch.zeros(sr * br, sc * bc, dtype=torch.float32)
    x[:rows, :cols] = q.to(torch.float32)  # exact: every FP8 value is a float32
    x = x.view(sr, br, sc, bc)
    a = x.abs().sum(dim=(1, 3), dtype=torch.float64)  # (sr, sc)
    b = x.square().sum(dim=(1, 3), dtype=torch.float64)
    s = scale_inv.to(torch.float64)
    return rows * cols, float((a * s).sum()), float((b * s * s).sum())


def fp8_block_dequantize(q: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The float32 weight [R, C] of an FP8 weight with per-block ``scale_inv`` (w = q * s of its block)."""
    import torch

    br, bc = block
    rows, cols = q.shape
    s = scale_inv.to(torch.float32).repeat_interleave(br, dim=0).repeat_interleave(bc, dim=1)
    return q.to(torch.float32) * s[:rows, :cols]


def mx_dequantize(q: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """The float32 values of an MX tensor (MXFP8): codes ``q`` [..., C] with one E8M0 exponent per 32
    values along the last axis ``exponents`` [..., C/32] (w = q * 2^(e - 127))."""
    import torch

    scale = torch.exp2(exponents.view(torch.uint8).to(torch.float32) - 127)
    return (q.to(torch.float32).reshape(*exponents.shape, 32) * scale[..., None]).reshape(q.shape)


PLAIN = ("F64", "F32", "F16", "BF16")


def is_quantized(ckpt: Checkpoint, model: MoeModel) -> bool:
    return any(
        ckpt.info(n).dtype not in PLAIN or n.endswith(QUANT_COMPANIONS)
        for layer in model.layers
        for n in layer.expert_tensors
    )


def _plain(x: torch.Tensor) -> tuple[int, float, float]:
    import torch

    v = x.reshape(-1).to(torch.float64)
    return v.numel(), float(v.abs().sum()), float(torch.dot(v, v))


def quantized_moments(ckpt: Checkpoint, model: MoeModel) -> dict[int, Any]:
    """Pooled moments (``scoring.criteria.WeightMoments``) of every MoE layer of a checkpoint whose
    experts are FP8 block-scaled or MXFP4, computed on the dequantized values."""
    from moeprune.scoring.criteria import WeightMoments

    block_cfg = (model.config.get("quantization_config") or {}).get("weight_block_size")
    out: dict[int, Any] = {}
    for layer in model.layers:
        if layer.rows or layer.sets:  # one expert = a block of rows, or a slice of its set's tensor
            raise InputError(
                f"layer {layer.index}: quantized experts stored as blocks of rows or per expert set cannot be "
                "scored by weight yet; calibrate and prune with a statistics criterion"
            )
        m = WeightMoments.zeros(model.n_experts)
        items: list[tuple[int, str, bool, set[str]]] = [
            (j, name, False, set(names)) for j, names in layer.per_expert.items() for name in names
        ]
        items += [(j, name, True, set(layer.fused)) for name in layer.fused for j in range(model.n_experts)]
        for j, name, fused, siblings in items:
            if name.endswith(QUANT_COMPANIONS) or name.endswith("bias"):
                continue
            n, a, b = _tensor_moments(ckpt, name, j if fused else None, siblings, block_cfg)
            m.n[j] += n
            m.sum_abs[j] += a
            m.sum_sq[j] += b
        out[layer.index] = m
    return out


def _tensor_moments(
    ckpt: Checkpoint, name: str, j: int | None, siblings: set[str], block_cfg: list[int] | None
) -> tuple[int, float, float]:
    """Moments of weight ``name`` (expert ``j``'s slice of a fused tensor, or all of it)."""
    rows = None if j is None else (j, j + 1)

    def read(key: str) -> torch.Tensor:
        t = ckpt.read(key, rows)
        return t[0] if j is not None else t

    info = ckpt.info(name)
    if name.endswith("_blocks"):
        scales = name[: -len("_blocks")] + "_scales"
        if scales not in siblings:
            raise InputError(f"{name!r}: MXFP4 blocks without their {scales!r}")
        return mxfp4_moments(read(name), read(scales))
    fp4_scale = name[: -len("weight")] + "scale" if name.endswith(".weight") else ""
    if info.dtype in ("I8", "U8") and fp4_scale in siblings:
        # packed FP4 (DeepSeek-V4): [R, C/2] bytes of two E2M1 codes, one E8M0 scale per 32 values [R, C/32]
        import torch

        q, s = read(name).view(torch.uint8), read(fp4_scale).view(torch.uint8)
        if q.shape[:-1] != s.shape[:-1] or q.shape[-1] != 16 * s.shape[-1]:
            raise InputError(f"{name!r} {list(q.shape)} does not match its FP4 scales {list(s.shape)}")
        return mxfp4_moments(q.reshape(*s.shape, 16), s)
    if info.dtype.startswith("F8"):
        scale = name + "_scale_inv"
        if scale not in siblings:
            raise InputError(f"{name!r}: FP8 weight without block scales ({scale!r})")
        q, s = read(name), read(scale)
        return fp8_block_moments(q, s, block_size(tuple(q.shape), tuple(s.shape), block_cfg))
    if info.dtype not in PLAIN:
        raise InputError(f"{name!r}: cannot score {info.dtype} expert weights")
    return _plain(read(name))
