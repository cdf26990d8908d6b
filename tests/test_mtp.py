"""Multi-token-prediction layers that hold experts are pruned with the trunk's expert count.

DeepSeek-V3 and GLM-4.5 store them as extra decoder layers (``model.layers.{num_hidden_layers}``),
Qwen3-Next and Qwen3.5 under ``mtp.layers.{k}``. transformers does not load them, so the tests
build them into tiny checkpoints by hand: a copy of a trunk MoE layer with its own (rescaled
per expert) weights, so that a layer scored from the wrong weights would show.
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

from moeprune.arch import FAMILIES


def _add_mtp(src: Path, dst: Path, old_prefix: str, new_prefix: str, config_key: str) -> dict[str, torch.Tensor]:
    """Copy ``src`` to ``dst`` adding a copy of the MoE block ``old_prefix`` under ``new_prefix``,
    each expert's weights scaled differently (changes magnitude, not AIMER) and with noise."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    gen = torch.Generator().manual_seed(7)
    added = {}
    for name, t in tensors.items():
        if name.startswith(old_prefix):
            new = new_prefix + name[len(old_prefix) :]
            m = re.search(r"experts\.(\d+)\.", new)
            scale = 1.0 + (int(m.group(1)) if m else 0)
            added[new] = (t * scale + 0.01 * torch.randn(t.shape, generator=gen)).contiguous()
    added[new_prefix.split(".mlp.")[0] + ".eh_proj.weight"] = torch.randn(8, 8, generator=gen)
    save_file({**tensors, **added}, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config[config_key] = 1
    (dst / "config.json").write_text(json.dumps(config))
    return added


CASES = {
    # family: (trunk MoE block copied, MTP block written, config key naming the MTP layers)
    "deepseek_v3": ("model.layers.2.mlp.", "model.layers.3.mlp.", "num_nextn_predict_layers"),
    "glm4_moe": ("model.layers.2.mlp.", "model.layers.3.mlp.", "num_nextn_predict_layers"),
    "qwen3_next": ("model.layers.1.mlp.", "mtp.layers.0.mlp.", "mtp_num_hidden_layers"),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_mtp_layer_is_pruned_like_the_trunk_and_scored_from_its_own_weights(family, tiny, cli, tmp_path) -> None:
    old, new, key = CASES[family]
    src = tmp_path / "src"
    added = _add_mtp(tiny(family), src, old, new, key)
    n_layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    mtp_index = n_layers  # numbered after the decoder layers

    r = cli("score", str(src), "--criterion", "magnitude", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    scores = json.loads((tmp_path / "s.json").read_text())["layers"]
    assert str(mtp_index) in scores
    n_experts = len(scores[str(mtp_index)])
    # own weights: magnitude grows with the per-expert scale written above
    expected = []
    for j in range(n_experts):
        ws = [t for n, t in added.items() if f"experts.{j}." in n and not n.endswith("bias")]
        flat = np.concatenate([w.double().numpy().ravel() for w in ws])
        expected.append(np.abs(flat).mean())
    np.testing.assert_allclose(scores[str(mtp_index)], expected, rtol=1e-9)

    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "magnitude", "--prune", "2", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    # magnitude grows with the expert id, so the lowest ids go: 0 and 1, or one per group
    grouped = FAMILIES[family].groups(json.loads((src / "config.json").read_text())) is not None
    assert plan[str(mtp_index)]["pruned"] == ([0, n_experts // 2] if grouped else [0, 1])
    pruned = load_file(out / "model.safetensors")
    kept = plan[str(mtp_index)]["kept"]
    router = new + "gate.weight"
    assert torch.equal(pruned[router], added[router][kept])
    ids = sorted({int(m.group(1)) for n in pruned if (m := re.match(re.escape(new) + r"experts\.(\d+)\.", n))})
    assert ids == list(range(n_experts - 2))
    for k, j in enumerate(kept):
        for name, t in added.items():
            if f"{new}experts.{j}." in name:
                assert torch.equal(pruned[name.replace(f"experts.{j}.", f"experts.{k}.")], t)
    other = new.split(".mlp.")[0] + ".eh_proj.weight"
    assert torch.equal(pruned[other], added[other])

    r = cli("verify", str(src), str(out))  # transformers ignores the MTP layer; the trunk must match
    assert r.code == 0, r
