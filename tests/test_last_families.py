"""dots3 Note's config rules beyond the registry-wide matrix of test_families.py (issue 15, helper X).

- A hub config without the ``mlp_layer_types`` list transformers writes: the MoE layers come from
  ``first_k_dense_replace`` (default 1) and a ``moe_layer_freq`` list, as transformers derives them;
  checked against the layers transformers itself builds from that config (independent of the registry).
- The flat config layout transformers says the published checkpoints use (text keys at the top level, no
  ``text_config``) is refused with one ``error:`` line and exit 2, not pruned with a stale count.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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
