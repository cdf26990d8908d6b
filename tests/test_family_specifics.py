"""Checks for the families added in issue 15 beyond the registry-wide matrix of test_families.py.

- Calibration against the full-model reference of test_calib_reference.py: every new family's tiny
  checkpoint is run whole through transformers, the routing its experts module receives is recorded,
  expert outputs are recomputed by hand in float64, and ``calibrate`` (layer by layer) must return the
  same nine moments per expert, on exactly the MoE layers.
- MTP layers and FP8 experts where the new families ship them (DeepSeek-V3.2, GLM-5, GLM-4.7-Flash),
  with test_mtp.py's and test_quantized_checkpoints.py's checks.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moeprune.arch import FAMILIES
from moeprune.arch.layout import MoeModel, describe
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint
from test_calib_reference import ATOL, RTOL, build_reference, token_batch

CALIBRATED = [
    "deepseek_v32",
    "glm4_moe_lite",
    "dots1",
    "solar_open",
    "exaone_moe",
    "kimi_linear",
    "minimax",
    "flex_olmo",
    "afmoe",
    "bailing_hybrid",
    "cohere2_moe",
    "laguna",
    "granitemoeshared",
    "granitemoehybrid",
    "granitemoe_swa",
    "sarvam_moe",
    "mellum",
    "mimo_v2_flash",
    "hy_v3",
    "axk1",
    "minicpm5_moe",
    "param2moe",
    "sarvam_mla",
    "axk2",
    "flint",
    "beam",
    "lara_mini",
    "kolibri1",
    # M1: multimodal MoEs by their text model
    "qwen3_vl_moe",
    "kimi_k25",
    "glm4v_moe",
    "glm5_next",
    "minimax_m3_vl",
    "step3p7",
    "mistral4",
    "mistral_large4",
    # K: decoder layers that pass state on to later layers (calib/carry.py)
    "glm_moe_dsa",
    "kolibri1_1",
    "gemma4",
    "hy_v4",  # its experts' SwiGLU clamp reached on the tiny (swiglu_limit 0.3)
    # M2: multimodal MoEs by their text model
    "aria",
    "deepseek_ocr2",
    "unlimited_ocr",
    "muse_spark",
    "hy_v4_vl",
    "inkling2",
    "qwen3_omni_moe",
    # X: the last families of issue 15
    "dots3_note",
    "qwen4_exp",
    # H: hash-routed (the hash layers' routing comes from input_ids, which the engine replays per layer)
    "deepseek_v4",
    # R: routers with rows that are not experts (tests/test_router_rows.py)
    "inkling_mm_model",
    # of the first 18, those test_calib_reference.py does not check
    "glm4_moe",
    "hunyuan_v1_moe",
    "jamba",
    "phimoe",
    "qwen3_5_moe",
    "qwen3_next",
    "llama4",
]
"""Families whose calibration is checked against the reference here (issue 15's, and the rest)."""

CALIBRATED_ELSEWHERE = {
    "longcat_flash": "tests/test_router_rows.py (identity-expert slots excluded from the reference)",
    "ergo": "tests/test_router_rows.py (non-gated relu² experts with a per-expert output norm)",
    "zaya": "tests/test_router_rows.py (skip-expert slots excluded from the reference)",
    "nemotron_h": "tests/test_family_structure.py (non-gated ReLU² experts by hand; the latent variant too)",
    "dbrx": "tests/test_family_structure.py (experts as blocks of rows of w1, v1, w2, by hand)",
    "jetmoe": "tests/test_calib_sets.py (MLP and attention expert sets, run by the blocks on sorted rows)",
}
"""Families whose calibration is checked against a reference of their own, and where."""

NOT_CALIBRATED = {name: f.calibration_blocker for name, f in FAMILIES.items() if f.calibration_blocker}
"""Registered families whose calibration is not proven yet, and why (the registry's
``calibration_blocker``; docs/families.md says the same)."""


def test_every_family_is_calibrated_or_says_why() -> None:
    from test_calib_reference import CASES

    checked = {family for _, family, _ in CASES} | set(CALIBRATED) | set(CALIBRATED_ELSEWHERE)
    missing = sorted(set(FAMILIES) - checked - set(NOT_CALIBRATED))
    assert not missing, f"check the calibration of {missing} against the reference (CALIBRATED)"
    assert not checked & set(NOT_CALIBRATED)
    assert sorted(NOT_CALIBRATED) == ["ernie4_5_vl_moe", "inkling2_loop"]  # each said why in docs/families.md


@pytest.mark.parametrize("family", CALIBRATED)
def test_calibration_equals_the_full_model_reference(family: str, tiny: Callable[..., Path]) -> None:
    from moeprune.calib.engine import calibrate

    path = tiny(family)
    ref = build_reference(path, family, token_batch())
    for i, layer in ref.layers.items():  # the reference rebuilds what the experts module returned
        torch.testing.assert_close(layer.rebuilt.float(), layer.actual, rtol=1e-5, atol=1e-6, msg=f"layer {i}")
        assert layer.pairs_expert.numel() == layer.top_k * ref.n_valid
    moe_layers = [layer.index for layer in describe_tiny(path).layers]
    assert sorted(ref.layers) == moe_layers
    stats = calibrate(path, token_batch(), batch_size=2)
    assert sorted(stats.layers) == moe_layers and stats.n_experts == ref.n_experts
    for i, layer in ref.layers.items():
        got, want = stats.layer(i), layer.moments(ref.n_experts)  # (E, 3, 3) each
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


def describe_tiny(path: Path) -> MoeModel:
    ckpt = Checkpoint.open(path)
    return describe(ckpt.config, ckpt.tensors)


# --- MTP and FP8, where the new families ship them -------------------------------------------------

MTP_CASES = {
    # family: (trunk MoE block copied, MTP block written, config key naming the MTP layers)
    "deepseek_v32": ("model.layers.2.mlp.", "model.layers.3.mlp.", "num_nextn_predict_layers"),
    "glm_moe_dsa": ("model.layers.2.mlp.", "model.layers.3.mlp.", "num_nextn_predict_layers"),
    "glm4_moe_lite": ("model.layers.2.mlp.", "model.layers.3.mlp.", "num_nextn_predict_layers"),
    "deepseek_v4": ("layers.2.ffn.", "mtp.0.ffn.", "num_nextn_predict_layers"),  # hub: mtp.0.*, score-routed
}
"""DeepSeek-V3.2, GLM-5 and GLM-4.7-Flash store their next-n layer as ``model.layers.{num_hidden_layers}``."""


@pytest.mark.parametrize("family", sorted(MTP_CASES))
def test_mtp_layer_is_pruned_like_the_trunk(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_mtp.py's proof (own scores, same count, renumbered, trunk verifies) for the new families."""
    import test_mtp

    monkeypatch.setitem(test_mtp.CASES, family, MTP_CASES[family])
    test_mtp.test_mtp_layer_is_pruned_like_the_trunk_and_scored_from_its_own_weights(family, tiny, cli, tmp_path)


@pytest.mark.parametrize("family", ["deepseek_v32", "glm_moe_dsa"])
def test_fp8_experts_keep_their_scales_and_verify(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Hub DeepSeek-V3.2 and GLM-5-FP8 store block-scaled FP8 experts: AIMER is computed on the
    dequantized weights, each kept expert keeps its own scale bytes, and the pruned model verifies."""
    from test_quantized_checkpoints import BLOCK, _dequant_fp8, _fp8

    src = tmp_path / "src"
    shutil.copytree(tiny(family), src)
    tensors = load_file(src / "model.safetensors")
    quantized: dict[str, torch.Tensor] = {}
    dequantized: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if re.search(r"\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$", name):
            q, s = _fp8(t)
            quantized[name], quantized[name + "_scale_inv"] = q, s
            dequantized[name] = _dequant_fp8(q, s)
        else:
            quantized[name] = t
    save_file(quantized, src / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [BLOCK, BLOCK],
        "modules_to_not_convert": ["lm_head", "model.embed_tokens"]
        + [n[: -len(".weight")] for n in quantized if n.endswith(".weight") and "experts." not in n],
    }
    (src / "config.json").write_text(json.dumps(config))

    assert cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json")).code == 0
    scores = json.loads((tmp_path / "s.json").read_text())["layers"]
    for layer, got in scores.items():
        want = []
        for j in range(len(got)):
            w = np.concatenate(
                [
                    dequantized[f"model.layers.{layer}.mlp.experts.{j}.{p}.weight"].ravel()
                    for p in ("gate_proj", "up_proj", "down_proj")
                ]
            )
            want.append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"layer {layer}")

    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "aimer", "--ratio", "0.25", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    pruned = load_file(out / "model.safetensors")
    for layer, lp in plan.items():
        for k, j in enumerate(lp["kept"]):
            for p in ("gate_proj", "up_proj", "down_proj"):
                for suffix in ("weight", "weight_scale_inv"):
                    a = quantized[f"model.layers.{layer}.mlp.experts.{j}.{p}.{suffix}"]
                    b = pruned[f"model.layers.{layer}.mlp.experts.{k}.{p}.{suffix}"]
                    assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    r = cli("verify", str(src), str(out))  # transformers dequantizes FP8 on CPU
    assert r.code == 0, r


def test_hy_v4_mtp_layer_keeps_its_fused_experts_consistent(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Hy-V4 stores its next-n layers as ``model.mtp_layers.{k}`` (transformers skips them on load):
    their fused experts are scored from their own weights (as layer num_hidden_layers + k) and sliced
    with the trunk's count, so the pruned checkpoint's expert count holds everywhere."""
    src = tmp_path / "src"
    shutil.copytree(tiny("hy_v4"), src)
    tensors = load_file(src / "model.safetensors")
    scale = torch.arange(1, 9, dtype=torch.float32)  # expert j's weights x (j + 1): magnitude grows with j
    added = {}
    for name in [n for n in tensors if n.startswith("model.layers.2.mlp.")]:
        t = tensors[name].clone()
        if ".experts." in name:
            t = t * scale.view(-1, *[1] * (t.dim() - 1))
        added[name.replace("model.layers.2.", "model.mtp_layers.0.")] = t
    save_file(tensors | added, src / "model.safetensors", metadata={"format": "pt"})
    mtp = "model.mtp_layers.0.mlp."

    assert cli("score", str(src), "--criterion", "magnitude", "-o", str(tmp_path / "s.json")).code == 0
    got = json.loads((tmp_path / "s.json").read_text())["layers"]["3"]
    gate_up, down = added[mtp + "experts.gate_up_proj"], added[mtp + "experts.down_proj"]
    want = [
        np.abs(np.concatenate([gate_up[j].double().numpy().ravel(), down[j].double().numpy().ravel()])).mean()
        for j in range(8)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9)

    out = tmp_path / "out"
    assert cli("prune", str(src), "--criterion", "magnitude", "--prune", "2", "-o", str(out)).code == 0
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    assert plan["3"]["pruned"] == [0, 1]
    pruned = load_file(out / "model.safetensors")
    kept = plan["3"]["kept"]
    for name in ("experts.gate_up_proj", "experts.down_proj", "gate.weight", "gate.e_score_correction_bias"):
        assert torch.equal(pruned[mtp + name], added[mtp + name][kept]), name
    assert torch.equal(pruned[mtp + "shared_experts.up_proj.weight"], added[mtp + "shared_experts.up_proj.weight"])
    r = cli("verify", str(src), str(out))  # transformers ignores the MTP layer; the trunk must match
    assert r.code == 0, r


# --- hub configs without the lists transformers writes ----------------------------------------------


@pytest.mark.parametrize("family", ["deepseek_v32", "glm_moe_dsa", "glm4_moe_lite", "exaone_moe", "kimi_linear"])
def test_hub_config_without_mlp_layer_types_finds_the_same_moe_layers(
    family: str, tiny: Callable[..., Path], tmp_path: Path
) -> None:
    """transformers writes ``mlp_layer_types``; the hub's original configs do not, and then the
    family's older rule (``first_k_dense_replace``) must name the same layers. A list that disagrees
    with the weights is refused."""
    src = tiny(family)
    moe = [layer.index for layer in describe_tiny(src).layers]
    assert moe and moe != list(range(json.loads((src / "config.json").read_text())["num_hidden_layers"]))

    hub = tmp_path / "hub"
    shutil.copytree(src, hub)
    config = json.loads((hub / "config.json").read_text())
    del config["mlp_layer_types"]
    (hub / "config.json").write_text(json.dumps(config))
    assert [layer.index for layer in describe_tiny(hub).layers] == moe

    config["mlp_layer_types"] = ["sparse"] * config["num_hidden_layers"]  # layer 0 is dense in the weights
    (hub / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="router weight"):
        describe_tiny(hub)


def test_docs_describe_every_family() -> None:
    """docs/families.md has a row (or, for the first 18, a mention) for every registered family."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    supported = text.split("## Not supported yet")[0]
    missing = sorted(name for name in FAMILIES if f"`{name}`" not in supported)
    assert not missing, f"describe {missing} in docs/families.md"
