"""dots3 Note's config rules and Qwen4-Exp's next-n layer, beyond the registry-wide matrix of
test_families.py (issue 15, helper X).

- A hub config without the ``mlp_layer_types`` list transformers writes: the MoE layers come from
  ``first_k_dense_replace`` (default 1) and a ``moe_layer_freq`` list, as transformers derives them;
  checked against the layers transformers itself builds from that config (independent of the registry).
- The flat config layout transformers says the published checkpoints use (text keys at the top level, no
  ``text_config``) is refused with one ``error:`` line and exit 2, not pruned with a stale count.
- Qwen4-Exp's next-n layer (``mtp.layers.0``), as test_mtp.py proves it for the flat-config families.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig

from moeprune.arch.layout import describe
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint


def _moe_layers(path: Path) -> list[int]:
    with Checkpoint.open(path) as ckpt:
        return [layer.index for layer in describe(ckpt.config, ckpt.tensors).layers]


def _write(path: Path, config: dict[str, Any]) -> None:
    (path / "config.json").write_text(json.dumps(config))


def test_dots3_hub_config_without_mlp_layer_types(tiny: Callable[..., Path], tmp_path: Path) -> None:
    src = tiny("dots3_note")
    assert _moe_layers(src) == [1, 2]  # transformers' list: layer 0 dense
    hub = tmp_path / "hub"
    shutil.copytree(src, hub)
    config = json.loads((hub / "config.json").read_text())
    text = config["text_config"]
    del text["mlp_layer_types"]
    _write(hub, config)
    assert _moe_layers(hub) == [1, 2]  # first_k_dense_replace defaults to 1

    # transformers derives its list from moe_layer_freq and first_k_dense_replace; the rule must name the
    # same layers, and a config that disagrees with the weights is refused by the layout check
    text["moe_layer_freq"] = [1, 1, 0]
    _write(hub, config)
    assert AutoConfig.from_pretrained(hub).text_config.mlp_layer_types == ["dense", "sparse", "dense"]
    with pytest.raises(InputError, match=r"layer 2 holds a router but config\.json makes it a dense layer"):
        _moe_layers(hub)
    del text["moe_layer_freq"]
    text["first_k_dense_replace"] = 0
    _write(hub, config)
    assert AutoConfig.from_pretrained(hub).text_config.mlp_layer_types == ["sparse"] * 3
    with pytest.raises(InputError, match="router weight"):  # layer 0 is dense on disk
        _moe_layers(hub)


def test_dots3_flat_published_config_is_refused(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    shutil.copytree(tiny("dots3_note"), flat)
    config = json.loads((flat / "config.json").read_text())
    text = config.pop("text_config")
    text.pop("model_type")
    config.update(text)
    _write(flat, config)
    assert AutoConfig.from_pretrained(flat).text_config.n_routed_experts == 8  # transformers reads it
    result = cli("prune", str(flat), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "text_config" in lines[0], result.err
    assert not (tmp_path / "out").exists()


def test_qwen4_exp_mtp_layer_is_pruned_like_the_trunk(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Qwen4-Exp, as Qwen3.5-MoE: a next-n layer under ``mtp.layers.0.`` (transformers ignores ``mtp.*``
    on load) gets the trunk's count, scored from its own weights; the trunk still verifies."""
    from safetensors.torch import load_file

    import test_mtp

    src = tmp_path / "src"
    old, new = "model.language_model.layers.1.mlp.", "mtp.layers.0.mlp."
    added = test_mtp._add_mtp(tiny("qwen4_exp"), src, old, new, "mtp_num_hidden_layers")
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["mtp_num_hidden_layers"] = config.pop("mtp_num_hidden_layers")  # where Qwen3.5 keeps it
    _write(src, config)

    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "magnitude", "--prune", "2", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    assert sorted(plan) == ["0", "1", "2"]  # two decoder layers, then the next-n layer
    assert plan["2"]["pruned"] == [0, 1]  # test_mtp scales expert j by 1 + j: the lowest magnitudes go
    pruned = load_file(out / "model.safetensors")
    for k, j in enumerate(plan["2"]["kept"]):
        for name, t in added.items():
            if f"{new}experts.{j}." in name:
                assert torch.equal(pruned[name.replace(f"experts.{j}.", f"experts.{k}.")], t)
    assert torch.equal(pruned[new + "gate.weight"], added[new + "gate.weight"][plan["2"]["kept"]])
    assert not any(n.startswith(f"{new}experts.6.") for n in pruned)
    assert cli("verify", str(src), str(out)).code == 0
