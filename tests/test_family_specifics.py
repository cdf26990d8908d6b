"""Checks for the families added in issue 15 beyond the registry-wide matrix of test_families.py.

- Calibration against the full-model reference of test_calib_reference.py: every new family's tiny
  checkpoint is run whole through transformers, the routing its experts module receives is recorded,
  expert outputs are recomputed by hand in float64, and ``calibrate`` (layer by layer) must return the
  same nine moments per expert, on exactly the MoE layers.
- Family-specific rules (MTP layers, selection biases, ...) with their own small checks below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from moeprune.arch import FAMILIES
from moeprune.arch.layout import MoeModel, describe
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
    # of the first 18, those test_calib_reference.py does not check
    "glm4_moe",
    "hunyuan_v1_moe",
    "jamba",
    "phimoe",
    "qwen3_5_moe",
    "qwen3_next",
]
"""Families whose calibration is checked against the reference here (issue 15's, and the rest)."""

NOT_CALIBRATED = {
    "glm_moe_dsa": "decoder layers pass the indexer's top-k to the next layer; the engine does not carry it",
    "gemma4": "decoder layers take a positional argument the layer-wise engine does not replay",
}
"""Registered families whose calibration is not proven yet, and why (docs/families.md says the same)."""


def test_every_family_is_calibrated_or_says_why() -> None:
    from test_calib_reference import CASES

    checked = {family for _, family, _ in CASES} | set(CALIBRATED)
    missing = sorted(set(FAMILIES) - checked - set(NOT_CALIBRATED))
    assert not missing, f"check the calibration of {missing} against the reference (CALIBRATED)"
    assert not checked & set(NOT_CALIBRATED)


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
