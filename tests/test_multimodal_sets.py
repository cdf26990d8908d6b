"""ERNIE-4.5-VL: two routed-expert sets per MoE layer (text and vision) under one config count.

What the tests know, written from transformers' modeling file and conversion mapping for
``ernie4_5_vl_moe`` (not from the registry): on disk, MoE layer L holds per-expert keys
``model.layers.{L}.mlp.experts.{j}.{gate,up,down}_proj.weight``, j < E the text experts and
E <= j < 2E the vision experts (narrower: ``moe_intermediate_size[1]``); the text router
``mlp.gate.weight`` and the vision router ``mlp.gate.weight_1``, both stored [H, E]; the selection
biases ``mlp.moe_statics.e_score_correction_bias`` [2, E], row 0 text, row 1 vision. The config holds
one count, ``moe_num_experts`` = E, that builds both sets: a plan removes the same number from each
set, ranked within the set.

Proved for both ratios (test_families.py's guarantees, which do not model two sets):
- the output's tensors are exactly the kept experts renumbered 0..2K-1 (text first, then vision: the
  hub's numbering again) and byte-identical to their originals, each router keeps its own set's
  columns, the bias its rows' entries, everything else (vision tower, shared experts, dense layer)
  byte-identical; config.json changes only in ``moe_num_experts`` (K);
- the pruned model equals the original cut down by hand in memory (each set's kept router rows,
  biases and expert weights), on text tokens AND on tokens routed to the vision set
  (``moe_mm_token_type_ids``), and ``moeprune verify`` (which masks each set's router logits and runs
  its tokens spread over both sets too) passes, and catches a wrong router in either set;
- AIMER and magnitude equal a float64 hand computation from the parameters transformers loads
  (text experts ids 0..E-1, vision experts E..2E-1), and the plan removes each set's share by them;
- a count that cannot be split evenly, a missing vision router, a bias of the wrong shape, and
  calibration (text data never reaches the vision set) are refused with one error line.

Also here, for another multimodal family of this group: Inkling 2's MXFP8 experts (hub layout) are
refused by weight criteria in one line and pruned from calibration statistics with their scales.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint
from moeprune.plan import PrunePlan
from moeprune.verify import load_causal_lm, masked_forward
from test_families import ATOL, assert_same_bytes, expected_pruned, read_tensors

FAMILY = "ernie4_5_vl_moe"
SETS = ("text", "vision")
ROUTERS = ("gate.weight", "gate.weight_1")  # [H, E] each
BIAS = "moe_statics.e_score_correction_bias"  # [2, E]
MEM = ("text_moe", "vision_moe")


def _e(config: dict[str, Any]) -> int:
    return int(config["text_config"]["moe_num_experts"])


def _moe_layers(tensors: dict[str, torch.Tensor]) -> list[int]:
    return sorted(int(k.split(".")[2]) for k in tensors if k.endswith(".mlp.gate.weight"))


@dataclass
class Pruned:
    src: Path
    out: Path
    src_config: dict[str, Any]
    out_config: dict[str, Any]
    src_tensors: dict[str, torch.Tensor]
    out_tensors: dict[str, torch.Tensor]
    plan_json: dict[str, Any]
    plan: PrunePlan


_PRUNED: dict[float, Pruned] = {}


@pytest.fixture
def pruned(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[float], Pruned]:
    """``pruned(ratio)`` -> the tiny checkpoint and its pruned copy (pruned once per session)."""

    def get(ratio: float) -> Pruned:
        if ratio not in _PRUNED:
            src = tiny(FAMILY)
            out = tmp_path_factory.mktemp("sets") / f"pruned-{ratio}"
            assert cli("prune", str(src), "--ratio", str(ratio), "-o", str(out)).code == 0
            _PRUNED[ratio] = Pruned(
                src,
                out,
                json.loads((src / "config.json").read_text()),
                json.loads((out / "config.json").read_text()),
                read_tensors(src),
                read_tensors(out),
                json.loads((out / "moeprune_plan.json").read_text()),
                PrunePlan.load(out / "moeprune_plan.json"),
            )
        return _PRUNED[ratio]

    return get


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_tensors_and_config(ratio: float, pruned: Callable[[float], Pruned]) -> None:
    r = pruned(ratio)
    src, out = r.src_tensors, r.out_tensors
    e = _e(r.src_config)
    p = int(ratio * 2 * e)
    k = e - p // 2
    moe = _moe_layers(src)
    assert moe == [1, 2]  # mlp_layer_types: layer 0 dense
    assert r.plan_json["n_experts"] == 2 * e and sorted(r.plan_json["layers"], key=int) == [str(i) for i in moe]
    expected: dict[str, torch.Tensor] = {}
    routed: set[str] = set()
    for layer in moe:
        block = f"model.layers.{layer}.mlp."
        lp = r.plan_json["layers"][str(layer)]
        kept = lp["kept"]
        assert len(lp["pruned"]) == p and sorted(kept + lp["pruned"]) == list(range(2 * e))
        text, vision = [j for j in kept if j < e], [j - e for j in kept if j >= e]
        assert len(text) == len(vision) == k, f"layer {layer}: {p // 2} removed from each set"
        for j in range(2 * e):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                name = f"{block}experts.{j}.{proj}.weight"
                assert name in src
                routed.add(name)
                width = src[name].shape[1 if proj == "down_proj" else 0]
                assert width == (32 if j < e else 16), f"{name}: the tiny's text / vision intermediate sizes"
                if j in kept:
                    expected[f"{block}experts.{kept.index(j)}.{proj}.weight"] = src[name]
        for rel, ids in zip(ROUTERS, (text, vision), strict=True):
            assert src[block + rel].shape == (64, e)
            expected[block + rel] = src[block + rel][:, ids]
        expected[block + BIAS] = torch.stack([src[block + BIAS][0, text], src[block + BIAS][1, vision]])
        routed |= {block + rel for rel in (*ROUTERS, BIAS)}
    for name, t in src.items():
        if name not in routed:
            expected[name] = t
    assert any(name.startswith("model.vision_model.") for name in expected), "the tiny has a vision tower"
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    for name, want in expected.items():
        assert_same_bytes(out[name], want, name)

    config = json.loads(json.dumps(r.src_config))
    config["text_config"]["moe_num_experts"] = k
    assert r.out_config == config


def _cut_in_memory(model: Any, plan: dict[str, Any], e: int) -> None:
    """The pruned model built by hand from the loaded original: in every MoE layer and set, the kept
    experts' router rows, selection biases and fused expert weights, and K as the modules' count
    (independent of moeprune's surgery and of verify's logit mask)."""
    layers = model.model.language_model.layers
    with torch.no_grad():
        for layer, lp in plan["layers"].items():
            mlp = layers[int(layer)].mlp
            for s, mem in enumerate(MEM):
                kept = torch.tensor([j - s * e for j in lp["kept"] if s * e <= j < (s + 1) * e])
                block = getattr(mlp, mem)
                block.gate.weight = torch.nn.Parameter(block.gate.weight[kept])  # (K, H)
                statics = block.gate.moe_statics
                statics.e_score_correction_bias = torch.nn.Parameter(statics.e_score_correction_bias[:, kept])
                for name in ("gate_up_proj", "down_proj"):
                    setattr(block.experts, name, torch.nn.Parameter(getattr(block.experts, name)[kept]))
                block.num_experts = block.gate.num_experts = block.experts.num_experts = len(kept)
            mlp.num_experts = len(kept)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_logits_equal_masked_original_on_both_sets(
    ratio: float, pruned: Callable[[float], Pruned], cli: Callable[..., Any]
) -> None:
    r = pruned(ratio)
    e = _e(r.src_config)
    k = e - int(ratio * e)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    vision = (torch.rand(2, 24, generator=torch.Generator().manual_seed(1)) < 0.5).long()  # routed to vision_moe
    original, model = load_causal_lm(r.src), load_causal_lm(r.out)
    for layer in (1, 2):
        mlp = model.model.language_model.layers[layer].mlp
        assert mlp.text_moe.experts.gate_up_proj.shape == (k, 64, 64)  # (K, 2I, H), I = 32
        assert mlp.vision_moe.experts.gate_up_proj.shape == (k, 32, 64)  # I = 16
    with torch.no_grad():
        unmasked = [original(ids).logits, original(ids, moe_mm_token_type_ids=vision).logits]
        _cut_in_memory(original, r.plan_json, e)
        want = [original(ids).logits, original(ids, moe_mm_token_type_ids=vision).logits]
        got = [model(ids).logits, model(ids, moe_mm_token_type_ids=vision).logits]
    for g, w, u in zip(got, want, unmasked, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=ATOL)
        assert (u - w).abs().max() > 100 * ATOL, "masking changed nothing: the test would prove nothing"
    # the vision tokens really reach the vision set: text-only and mixed logits differ
    assert (want[0] - want[1]).abs().max() > 100 * ATOL
    assert cli("verify", str(r.src), str(r.out)).code == 0
    # verify's mask on the vision set too (its CLI feeds text only): the original with each set's
    # removed logits masked, run on the mixed tokens, equals the pruned model
    fresh = load_causal_lm(r.src)
    fresh.forward = partial(fresh.forward, moe_mm_token_type_ids=vision)
    torch.testing.assert_close(masked_forward(fresh, r.src_config, r.plan, ids), got[1], rtol=0, atol=ATOL)


def test_weight_scores_and_plan_equal_hand_computation(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny(FAMILY)
    e = _e(json.loads((src / "config.json").read_text()))
    model = load_causal_lm(src)
    aimer: dict[str, list[float]] = {}
    magnitude: dict[str, list[float]] = {}
    for i in (1, 2):
        mlp = model.model.language_model.layers[i].mlp
        aimer[str(i)], magnitude[str(i)] = [], []
        for mem in MEM:  # ids 0..E-1 text, E..2E-1 vision
            experts = getattr(mlp, mem).experts
            for j in range(e):
                w = np.concatenate([experts.gate_up_proj[j].detach().double().numpy().ravel(),
                                    experts.down_proj[j].detach().double().numpy().ravel()])  # fmt: skip
                aimer[str(i)].append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
                magnitude[str(i)].append(np.mean(np.abs(w)))
    for criterion, want in (("aimer", aimer), ("magnitude", magnitude)):
        out = tmp_path / f"{criterion}.json"
        assert cli("score", str(src), "--criterion", criterion, "-o", str(out)).code == 0
        got = json.loads(out.read_text())["layers"]
        assert sorted(got) == sorted(want)
        for layer, scores in want.items():
            np.testing.assert_allclose(got[layer], scores, rtol=1e-9, atol=0, err_msg=f"layer {layer}")

    folder = tmp_path / "pruned"
    assert cli("prune", str(src), "--criterion", "aimer", "--ratio", "0.25", "-o", str(folder)).code == 0
    plan = json.loads((folder / "moeprune_plan.json").read_text())["layers"]
    for layer, scores in aimer.items():  # AIMER: the highest are pruned, 2 of each set's 8
        assert plan[layer]["pruned"] == expected_pruned(scores, 4, 2, higher_pruned=True), f"layer {layer}"
    with open(folder / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(x["layer"]), int(x["expert"])) for x in rows) == [(i, j) for i in (1, 2) for j in range(2 * e)]


def test_counts_that_do_not_split_over_the_sets_are_refused(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny(FAMILY)
    odd = cli("prune", str(src), "--ratio", "0.0625", "-o", str(tmp_path / "a"))  # 1 of 16: not one per set
    assert odd.code == 2 and "multiple of 2" in odd.err, odd
    deep = cli("prune", str(src), "--ratio", "0.875", "-o", str(tmp_path / "b"))  # 7 of 8 per set < top-k 2
    assert deep.code == 2 and "top-k" in deep.err, deep
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _edited(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Checkpoint:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return Checkpoint.open(dst)


def test_layout_checks_each_set(tiny: Callable[..., Path], tmp_path: Path) -> None:
    from moeprune.arch.layout import describe

    src = tiny(FAMILY)
    ckpt = Checkpoint.open(src)
    moe = describe(ckpt.config, ckpt.tensors)
    assert moe.n_experts == 16 and moe.groups is not None and moe.groups.n_group == 2
    assert [(lay.index, lay.layout) for lay in moe.layers] == [(1, "per-expert"), (2, "per-expert")]

    def drop_vision_router(t: dict[str, torch.Tensor]) -> None:
        del t["model.layers.2.mlp.gate.weight_1"]

    no_vision = _edited(src, tmp_path / "a", drop_vision_router)
    with pytest.raises(InputError, match=r"gate\.weight_1.*expert set 1"):
        describe(no_vision.config, no_vision.tensors)

    def one_row(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.1.mlp." + BIAS] = t["model.layers.1.mlp." + BIAS][:1].clone()

    bad_bias = _edited(src, tmp_path / "b", one_row)
    with pytest.raises(InputError, match=r"one row of experts per expert set"):
        describe(bad_bias.config, bad_bias.tensors)

    def wide_vision(t: dict[str, torch.Tensor]) -> None:  # a vision expert shaped like a text expert
        t["model.layers.1.mlp.experts.9.up_proj.weight"] = t["model.layers.1.mlp.experts.1.up_proj.weight"].clone()

    odd = _edited(src, tmp_path / "c", wide_vision)
    with pytest.raises(InputError, match=r"experts\.9\.up_proj.*unlike the same tensor of expert 8"):
        describe(odd.config, odd.tensors)


def test_calibration_is_refused_with_the_reason(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(0, 128, (2, 16)).astype(np.int64))
    r = cli("calibrate", str(tiny(FAMILY)), "--data", str(tokens), "-o", str(tmp_path / "stats"))
    assert r.code == 2 and "vision set" in r.err and r.err.count("\n") == 1, r


def test_hub_config_without_mlp_layer_types(tiny: Callable[..., Path], tmp_path: Path) -> None:
    """The hub's original configs carry moe_layer_start_index / moe_layer_end_index (ERNIE-4.5's
    rule) instead of the list transformers writes: both name the same MoE layers."""
    from moeprune.arch.layout import describe

    hub = tmp_path / "hub"
    shutil.copytree(tiny(FAMILY), hub)
    config = json.loads((hub / "config.json").read_text())
    del config["text_config"]["mlp_layer_types"]
    config["text_config"] |= {"moe_layer_start_index": 1, "moe_layer_end_index": -1}
    (hub / "config.json").write_text(json.dumps(config))
    ckpt = Checkpoint.open(hub)
    assert [lay.index for lay in describe(ckpt.config, ckpt.tensors).layers] == [1, 2]
    assert read_tensors(hub)  # the folder is still a whole checkpoint


def test_inkling2_mxfp8_experts_pruned_from_statistics_with_their_scales(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Hub Inkling 2 checkpoints store MXFP8 experts: ``experts.w13_weight`` / ``w2_weight`` in float8 with
    ``*_scale`` (one power-of-two exponent per 32 values, expert first). Weight criteria refuse them in one
    line (they know DeepSeek's block-scaled FP8 only); a plan from calibration statistics prunes them, each
    scale tensor indexed with its experts, and the result verifies."""
    src = tmp_path / "src"

    def mxfp8(t: dict[str, torch.Tensor]) -> None:
        for name in [n for n in t if n.endswith(("experts.w13_weight", "experts.w2_weight"))]:
            w = t[name]
            t[name] = w.to(torch.float8_e4m3fn)
            exponents = torch.randint(126, 129, (*w.shape[:-1], w.shape[-1] // 32), generator=torch.Generator())
            t[name + "_scale"] = exponents.to(torch.uint8)

    _edited(tiny("inkling2"), src, mxfp8)
    scored = cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json"))
    assert scored.code == 2 and scored.err.count("\n") == 1 and "FP8" in scored.err, scored
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.random.default_rng(0).integers(0, 128, (4, 32)).astype(np.int64))
    assert cli("calibrate", str(src), "--data", str(tokens), "-o", str(tmp_path / "stats")).code == 0
    out = tmp_path / "out"
    args = ("--stats", str(tmp_path / "stats"), "--criterion", "frequency", "--ratio", "0.5", "-o", str(out))
    assert cli("prune", str(src), *args).code == 0
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    a, b = read_tensors(src), read_tensors(out)
    for layer, lp in plan.items():
        for name in ("w13_weight", "w13_weight_scale", "w2_weight", "w2_weight_scale"):
            key = f"model.llm.layers.{layer}.mlp.experts.{name}"
            assert_same_bytes(b[key], a[key][lp["kept"]], key)
    assert cli("verify", str(src), str(out)).code == 0


def test_verify_proves_the_vision_set_too(pruned: Callable[[float], Pruned], cli: Callable[..., Any]) -> None:
    """``moeprune verify`` runs its tokens a second time spread over the two sets
    (``moe_mm_token_type_ids``): a wrong vision router, which text tokens never reach, is caught."""
    r = pruned(0.25)
    ok = cli("verify", str(r.src), str(r.out))
    assert ok.code == 0 and "over 128 tokens" in ok.out + ok.err, ok  # 2 x 32 tokens, twice
    for rel in ROUTERS:
        bad = r.out.parent / f"bad-{rel}"
        shutil.copytree(r.out, bad)
        tensors = load_file(bad / "model.safetensors")
        name = f"model.layers.1.mlp.{rel}"
        tensors[name] = tensors[name][:, [1, 0, *range(2, tensors[name].shape[1])]].contiguous()  # two experts swapped
        save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
        caught = cli("verify", str(r.src), str(bad))
        assert caught.code != 0 and "MISMATCH" in caught.err, (rel, caught)
        shutil.rmtree(bad)


def test_inspect_says_the_layer_has_two_sets_counted_once(tiny: Callable[..., Path], cli: Callable[..., Any]) -> None:
    """The config counts E per set; the layer holds S·E experts: inspect must not read as if the config
    said S·E (or as if the sets were DeepSeek-style groups)."""
    src = tiny(FAMILY)
    e = _e(json.loads((src / "config.json").read_text()))
    r = cli("inspect", str(src))
    assert r.code == 0, r
    assert f"{2 * e} per MoE layer: 2 sets of {e}, each with its own router (config key moe_num_experts = {e})" in r.out
    assert "n_group" not in r.out and "the 2 expert sets" in r.out
    info = json.loads(cli("inspect", str(src), "--json").out)
    assert info["experts"] == 2 * e and info["expert_sets"] == 2
    plain = json.loads(cli("inspect", str(tiny("qwen3_moe")), "--json").out)
    assert plain["expert_sets"] is None


def test_mxfp8_calibration_sees_the_dequantized_weights(tiny: Callable[..., Path], tmp_path: Path) -> None:
    """Calibration's skeleton has no quantizer: it dequantizes MX exponents itself. Its statistics on
    the MXFP8 checkpoint equal those on a float32 copy holding the dequantized values (q * 2^(e-127),
    computed here independently), and differ from the raw codes' (the exponents matter)."""
    from moeprune.calib.engine import calibrate
    from test_calib_reference import token_batch

    gen = torch.Generator().manual_seed(0)
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def mxfp8(t: dict[str, torch.Tensor]) -> None:
        for name in [n for n in t if n.endswith(("experts.w13_weight", "experts.w2_weight"))]:
            q = (t[name] * 4).to(torch.float8_e4m3fn)
            e = torch.randint(124, 127, (*q.shape[:-1], q.shape[-1] // 32), generator=gen).to(torch.uint8)
            t[name], t[name + "_scale"] = q, e
            quantized[name] = (q, e)

    def dequantized(t: dict[str, torch.Tensor]) -> None:
        for name, (q, e) in quantized.items():
            scale = np.repeat(np.exp2(e.numpy().astype(np.float64) - 127), 32, axis=-1)
            t[name] = torch.from_numpy(q.to(torch.float64).numpy() * scale).float()

    def raw(t: dict[str, torch.Tensor]) -> None:
        for name, (q, _) in quantized.items():
            t[name] = q.float()

    mx = _edited(tiny("inkling2"), tmp_path / "mx", mxfp8).path
    plain = _edited(tiny("inkling2"), tmp_path / "plain", dequantized).path
    codes = _edited(tiny("inkling2"), tmp_path / "codes", raw).path
    got, want, wrong = (calibrate(p, token_batch(), batch_size=2) for p in (mx, plain, codes))
    for i in want.layers:
        torch.testing.assert_close(got.layer(i), want.layer(i), rtol=1e-5, atol=1e-6, msg=f"layer {i}")
    assert any(not torch.allclose(wrong.layer(i), want.layer(i), rtol=1e-3) for i in want.layers)
