"""Quantized experts are scored on their dequantized values (independent element-wise reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moeprune.errors import InputError
from moeprune.scoring.quant import block_size, fp8_block_moments, mxfp4_moments

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _dequant_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Element by element, as the format defines it: low nibble first, sign in bit 3."""
    out = np.empty((*blocks.shape[:-1], 32), dtype=np.float64)
    for idx in np.ndindex(blocks.shape[:-1]):
        scale = 2.0 ** (int(scales[idx]) - 127)
        for k, byte in enumerate(blocks[idx]):
            for half, code in enumerate((int(byte) & 15, int(byte) >> 4)):
                value = E2M1[code & 7] * (-1 if code & 8 else 1)
                out[(*idx, 2 * k + half)] = value * scale
    return out


def test_mxfp4_moments_equal_the_dequantized_weights() -> None:
    gen = np.random.default_rng(0)
    blocks = gen.integers(0, 256, size=(3, 5, 16), dtype=np.uint8)
    scales = gen.integers(118, 132, size=(3, 5), dtype=np.uint8)
    w = _dequant_mxfp4(blocks, scales)
    n, a, b = mxfp4_moments(torch.from_numpy(blocks), torch.from_numpy(scales))
    assert n == w.size
    assert a == pytest.approx(np.abs(w).sum(), rel=1e-12)
    assert b == pytest.approx((w * w).sum(), rel=1e-12)


def test_mxfp4_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InputError):
        mxfp4_moments(torch.zeros(2, 3, 16, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(256, 384), (200, 300), (7, 129)])
def test_fp8_block_moments_equal_the_dequantized_weights(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    q = (torch.randn(shape, generator=gen) * 40).to(torch.float8_e4m3fn)
    block = (128, 128)
    sr, sc = -(-shape[0] // 128), -(-shape[1] // 128)
    scale = torch.rand(sr, sc, generator=gen) * 0.01 + 1e-4
    # independent reference: expand the scales to every element, dequantize, sum in float64
    full = np.kron(scale.double().numpy(), np.ones(block))[: shape[0], : shape[1]]
    w = q.to(torch.float64).numpy() * full
    n, a, b = fp8_block_moments(q, scale, block_size(shape, (sr, sc), None))
    assert n == w.size
    assert a == pytest.approx(np.abs(w).sum(), rel=1e-12)
    assert b == pytest.approx((w * w).sum(), rel=1e-12)


def test_fp8_block_size_is_checked_against_the_scales() -> None:
    assert block_size((256, 512), (2, 4), None) == (128, 128)
    assert block_size((256, 512), (4, 8), [64, 64]) == (64, 64)
    with pytest.raises(InputError, match="needs scales"):
        block_size((256, 512), (3, 4), None)


def test_quantization_ignore_lists_follow_the_pruning(tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny("deepseek_v3"), src)
    config = json.loads((src / "config.json").read_text())
    names = [
        "lm_head",
        "model.layers.1.mlp.experts.0.down_proj",
        "model.layers.1.mlp.experts.5",
        "model.layers.1.mlp.experts.6.up_proj",
        "model.layers.1.mlp.experts.50",  # no such expert: left as it is
        "model.layers.2.mlp.gate",
        "model.layers.2.mlp.shared_experts.down_proj",
    ]
    config["quantization_config"] = {"quant_method": "fp8", "modules_to_not_convert": names}
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "random", "--prune", "2", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]["1"]
    expected = []
    for name in names:
        parts = name.split(".")
        if name.startswith("model.layers.1.mlp.experts.") and int(parts[5]) < 8:
            j = int(parts[5])
            if j in plan["pruned"]:
                continue
            parts[5] = str(plan["kept"].index(j))
            name = ".".join(parts)
        expected.append(name)
    got = json.loads((out / "config.json").read_text())["quantization_config"]["modules_to_not_convert"]
    assert got == expected
    assert len(got) < len(names) or not {0, 5, 6} & set(plan["pruned"])
