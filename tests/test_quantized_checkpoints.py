"""FP8 block-scaled and MXFP4 checkpoints: scored on dequantized values, pruned with their scales.

Tiny checkpoints are quantized here from small random tensors, in the hub layouts: DeepSeek-V3 /
Qwen3 FP8 (``W`` float8_e4m3fn + ``W_scale_inv`` float32 per block, ``weight_block_size`` in
``quantization_config``) and GPT-OSS MXFP4 (``*_blocks`` uint8 [E, R, C/32, 16] + ``*_scales``
uint8 E8M0 [E, R, C/32]).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

BLOCK = 16
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-quantize ``w`` [R, C] to float8_e4m3fn with per-block float32 scale_inv."""
    rows, cols = w.shape
    sr, sc = -(-rows // BLOCK), -(-cols // BLOCK)
    scale = torch.zeros(sr, sc)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for a in range(sr):
        for b in range(sc):
            blk = w[a * BLOCK : (a + 1) * BLOCK, b * BLOCK : (b + 1) * BLOCK]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[a, b] = s
            q[a * BLOCK : (a + 1) * BLOCK, b * BLOCK : (b + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def _dequant_fp8(q: torch.Tensor, scale: torch.Tensor) -> np.ndarray:
    full = np.kron(scale.double().numpy(), np.ones((BLOCK, BLOCK)))[: q.shape[0], : q.shape[1]]
    return q.to(torch.float64).numpy() * full


@pytest.fixture(scope="module")
def fp8_model(tiny, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    src = tiny("deepseek_v3")
    dst = tmp_path_factory.mktemp("fp8") / "model"
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    out = {}
    for name, t in tensors.items():
        if re.search(r"\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$", name):
            q, s = _fp8(t)
            out[name], out[name + "_scale_inv"] = q, s
        else:
            out[name] = t
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": ["lm_head", "model.layers.0.mlp", "model.embed_tokens"]
        + [n[: -len(".weight")] for n in out if n.endswith(".weight") and "experts." not in n],
    }
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_fp8_scores_are_those_of_the_dequantized_weights(fp8_model, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = cli("score", str(fp8_model), "--criterion", "all", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    got = json.loads((tmp_path / "s.json").read_text())["criteria"]
    tensors = load_file(fp8_model / "model.safetensors")
    for layer in (1, 2):
        for j in range(8):
            w = np.concatenate(
                [
                    _dequant_fp8(
                        tensors[f"model.layers.{layer}.mlp.experts.{j}.{p}.weight"],
                        tensors[f"model.layers.{layer}.mlp.experts.{j}.{p}.weight_scale_inv"],
                    ).ravel()
                    for p in ("gate_proj", "up_proj", "down_proj")
                ]
            )
            aimer = np.abs(w).mean() / np.sqrt((w * w).mean())
            assert got["aimer"]["layers"][str(layer)][j] == pytest.approx(aimer, rel=1e-12)
            assert got["magnitude"]["layers"][str(layer)][j] == pytest.approx(np.abs(w).mean(), rel=1e-12)
    # the raw FP8 codes would rank differently: the per-block scales matter
    raw = tensors["model.layers.1.mlp.experts.0.gate_proj.weight"].to(torch.float64).numpy()
    assert not np.isclose(np.abs(raw).mean(), got["magnitude"]["layers"]["1"][0])


def test_fp8_prune_keeps_each_experts_scales_and_verifies(fp8_model, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    r = cli("prune", str(fp8_model), "--criterion", "aimer", "--prune", "2", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    src, dst = load_file(fp8_model / "model.safetensors"), load_file(out / "model.safetensors")
    for layer, lp in plan.items():
        for k, j in enumerate(lp["kept"]):
            for p in ("gate_proj", "up_proj", "down_proj"):
                for suffix in ("weight", "weight_scale_inv"):
                    a = src[f"model.layers.{layer}.mlp.experts.{j}.{p}.{suffix}"]
                    b = dst[f"model.layers.{layer}.mlp.experts.{k}.{p}.{suffix}"]
                    assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        assert not any(f"model.layers.{layer}.mlp.experts.6." in n for n in dst)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["weight_block_size"] == [BLOCK, BLOCK]
    r = cli("verify", str(fp8_model), str(out))  # transformers dequantizes FP8 on CPU
    assert r.code == 0, r


def _mxfp4(w: torch.Tensor, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random MXFP4 codes of the shape of ``w`` [E, R, C]: blocks [E, R, C/32, 16], scales [E, R, C/32]."""
    e, r, c = w.shape
    blocks = gen.integers(0, 256, size=(e, r, c // 32, 16), dtype=np.uint8)
    scales = gen.integers(120, 128, size=(e, r, c // 32), dtype=np.uint8)
    return blocks, scales


def _dequant_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    lo, hi = blocks & 15, blocks >> 4
    vals = np.stack([E2M1[lo & 7] * np.where(lo & 8, -1, 1), E2M1[hi & 7] * np.where(hi & 8, -1, 1)], axis=-1)
    return vals.reshape(*scales.shape, 32) * np.exp2(scales.astype(np.float64) - 127)[..., None]


def test_mxfp4_experts_are_scored_dequantized_and_sliced_on_the_expert_axis(tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    shutil.copytree(tiny("gpt_oss"), src)
    tensors = load_file(src / "model.safetensors")
    gen = np.random.default_rng(0)
    out = {}
    for name, t in tensors.items():
        if re.search(r"\.mlp\.experts\.(gate_up_proj|down_proj)$", name):
            blocks, scales = _mxfp4(t.transpose(1, 2), gen)  # hub layout: [E, out, in/32, 16]
            out[name + "_blocks"], out[name + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
        else:
            out[name] = t
    save_file(out, src / "model.safetensors", metadata={"format": "pt"})
    r = cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    got = json.loads((tmp_path / "s.json").read_text())["layers"]
    for layer in got:
        for j in range(8):
            w = np.concatenate(
                [
                    _dequant_mxfp4(
                        out[f"model.layers.{layer}.mlp.experts.{p}_blocks"][j].numpy(),
                        out[f"model.layers.{layer}.mlp.experts.{p}_scales"][j].numpy(),
                    ).ravel()
                    for p in ("gate_up_proj", "down_proj")
                ]
            )
            assert got[layer][j] == pytest.approx(np.abs(w).mean() / np.sqrt((w * w).mean()), rel=1e-12)
    pruned = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "aimer", "--prune", "2", "-o", str(pruned))
    assert r.code == 0, r
    plan = json.loads((pruned / "moeprune_plan.json").read_text())["layers"]
    dst = load_file(pruned / "model.safetensors")
    for layer, lp in plan.items():
        for p in (
            "gate_up_proj_blocks",
            "gate_up_proj_scales",
            "down_proj_blocks",
            "down_proj_scales",
            "gate_up_proj_bias",
            "down_proj_bias",
        ):
            key = f"model.layers.{layer}.mlp.experts.{p}"
            assert torch.equal(dst[key], out[key][lp["kept"]])


def test_fp8_calibration_sees_the_dequantized_weights(fp8_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Calibration builds its model without transformers' quantizer, so it must dequantize FP8 itself:
    its moments equal those of the full model transformers loads (and dequantizes) from the same
    files. Before the fix the raw codes were taken for weights (sum ||f|| ~1e11 instead of ~30)."""
    from moeprune.calib.engine import calibrate
    from test_calib_reference import ATOL, RTOL, build_reference, token_batch

    ref = build_reference(fp8_model, "deepseek_v3", token_batch())
    stats = calibrate(fp8_model, token_batch(), batch_size=2)
    assert sorted(stats.layers) == sorted(ref.layers)
    for i, layer in ref.layers.items():
        got, want = stats.layer(i), layer.moments(ref.n_experts)
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


def test_fp8_without_block_scales_is_refused_by_calibration(fp8_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moeprune.calib.engine import calibrate
    from moeprune.errors import InputError
    from test_calib_reference import token_batch

    bad = tmp_path / "bad"
    shutil.copytree(fp8_model, bad)
    tensors = load_file(bad / "model.safetensors")
    for name in [n for n in tensors if n.endswith("_scale_inv")]:  # codes with no scales at all
        del tensors[name]
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="without block scales"):
        calibrate(bad, token_batch(), batch_size=2)
