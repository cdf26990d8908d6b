"""Families whose experts are not the standard gated, expert-first tensors (issue 15, helper S):
Nemotron-H (non-gated ReLU² experts in Mamba hybrid layers, optional latent projections, a layer
count that is the length of a layer-type list, MTP layers), DBRX (2-D fused experts stored as blocks
of rows [E·I, H], counts inside ``ffn_config``, ``n_layers``) and JetMoE (MLP experts and attention
experts, two sets with their own routers under one count).

test_families.py runs the registry-wide matrix on Nemotron-H and DBRX (prune 25/50 %, masked logits,
tensors, config, AIMER by hand); JetMoE gets the same guarantees here, per set (its matrix rows model
one set). This module adds what is special:

- calibration equals a full-model reference: the routing each experts module really receives is
  recorded, the expert outputs are recomputed here in float64 with the family's own formula, as its
  modeling file writes it (Nemotron-H: f = down · relu(up · x)²; DBRX: f = (silu(x W1ᵀ) ⊙ x V1ᵀ) W2
  with expert j's block of rows of each [E·I, H] tensor), and ``calibrate`` must return the same nine
  moments per expert;
- the hub's Nemotron-H configs (``hybrid_override_pattern`` and ``num_hidden_layers``, no
  ``layers_block_type``) name the same MoE layers, prune and verify; the latent variant
  (``moe_latent_size``, Nemotron-3 Super) prunes, verifies and calibrates;
- DBRX's pruned config changes ``ffn_config.moe_num_experts`` and nothing else; malformed inputs
  (rows not a multiple of E, a bad pattern, a bad nested count) fail with one ``error:`` line;
- Nemotron-3 Super's MTP layers (``mtp.layers.{k}``) are pruned with the trunk's count;
- JetMoE: the same number removed from each set, ranked within it by AIMER computed by hand; each
  set's router and fused tensors sliced with that set's kept experts; the pruned model equals the
  original with each set's router masked (a mask written here, not moeprune's).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from helpers import one_line_error
from moeprune.arch import FAMILIES
from moeprune.arch.layout import describe
from moeprune.io.reader import Checkpoint
from test_calib_reference import ATOL, RTOL, LayerRef, routed_layer, token_batch

LATENT = {"overrides": {"moe_latent_size": 32}}
"""Nemotron-3 Super's latent MoE: experts run in a smaller space between fc1/fc2_latent_proj."""

CALIBRATED: dict[str, tuple[str, dict[str, Any]]] = {
    "nemotron_h": ("nemotron_h", {}),
    "nemotron_h-latent": ("nemotron_h", LATENT),
    "dbrx": ("dbrx", {}),
}
"""Calibration cases checked against this module's reference (test id -> family, tiny kwargs);
test_family_specifics.py's CALIBRATED_ELSEWHERE points here."""


# --- the reference: recorded routing, expert outputs by hand ----------------------------------------


def expert_output(experts: Any, j: int, x: torch.Tensor) -> torch.Tensor:
    """f_j(x) in float64 from the experts module's parameters, as the modeling files compute it."""
    x = x.double()
    if hasattr(experts, "up_proj"):  # Nemotron-H: non-gated, relu2 = relu(.)^2; up (E, I, H'), down (E, H', I)
        up = experts.up_proj[j].detach().double()
        down = experts.down_proj[j].detach().double()
        return torch.relu(x @ up.T).square() @ down.T
    mlp = experts.mlp  # DBRX: [E·I, H] each; expert j = rows j·I .. (j+1)·I - 1; w2 used untransposed
    rows = slice(j * experts.ffn_hidden_size, (j + 1) * experts.ffn_hidden_size)
    w1, v1, w2 = (w.detach().double()[rows] for w in (mlp.w1, mlp.v1, mlp.w2))  # (I, H) each
    return (F.silu(x @ w1.T) * (x @ v1.T)) @ w2


def build_reference(path: Path, tokens: Any) -> tuple[int, int, dict[int, LayerRef]]:
    """(E, non-padding tokens, layer -> LayerRef) from one full forward pass of the whole model."""
    from transformers import AutoModelForCausalLM

    from moeprune.loading import decoder_layers

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    mods: dict[int, Any] = {}
    for i, layer in enumerate(decoder_layers(model)):
        found = [m for name, m in layer.named_modules() if name.rsplit(".", 1)[-1] == "experts"]
        if found:
            mods[i] = found[0]
    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i in mods}
    handles = []
    for i, mod in mods.items():

        def pre(m: Any, args: tuple[Any, ...], store: dict[str, torch.Tensor] = captured[i]) -> None:
            hidden, index, weights = args
            store["hidden"] = hidden.detach().reshape(-1, hidden.shape[-1]).clone()  # DBRX passes (B, L, H)
            store["index"], store["weights"] = index.detach().clone(), weights.detach().clone()

        def post(m: Any, args: Any, out: torch.Tensor, store: dict[str, torch.Tensor] = captured[i]) -> None:
            store["actual"] = out.detach().reshape(-1, out.shape[-1]).clone()

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    finally:
        for h in handles:
            h.remove()

    valid = tokens.attention_mask.reshape(-1).bool()  # (B·L,)
    layers = {}
    with torch.no_grad():
        for i, mod in mods.items():
            c = captured[i]
            hidden, index, weights = c["hidden"], c["index"], c["weights"]  # (T, H), (T, k), (T, k)
            assert hidden.shape[0] == valid.numel()
            layers[i] = routed_layer(hidden, index, weights, valid, c["actual"], partial(expert_output, mod))
    return int(next(iter(mods.values())).num_experts), int(valid.sum()), layers


@pytest.mark.parametrize("case", sorted(CALIBRATED))
def test_calibration_equals_the_full_model_reference(case: str, tiny: Callable[..., Path]) -> None:
    from moeprune.calib.engine import calibrate

    family, kwargs = CALIBRATED[case]
    assert not FAMILIES[family].calibration_blocker
    path = tiny(family, **kwargs)
    n_experts, n_valid, ref = build_reference(path, token_batch())
    for i, layer in ref.items():  # the hand formula rebuilds what the experts module returned
        torch.testing.assert_close(layer.rebuilt.float(), layer.actual, rtol=1e-5, atol=1e-6, msg=f"layer {i}")
        assert layer.pairs_expert.numel() == layer.top_k * n_valid
    ckpt = Checkpoint.open(path)
    moe_layers = [layer.index for layer in describe(ckpt.config, ckpt.tensors).layers]
    assert sorted(ref) == moe_layers
    stats = calibrate(path, token_batch(), batch_size=2)  # DBRX: the engine calls its model.transformer
    assert sorted(stats.layers) == moe_layers and stats.n_experts == n_experts
    for i, layer in ref.items():
        got, want = stats.layer(i), layer.moments(n_experts)  # (E, 3, 3) each
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


# --- Nemotron-H: the hub's pattern, the latent variant ----------------------------------------------

_PATTERN = {"linear_attention": "M", "moe": "E", "full_attention": "*", "mlp": "-"}


def _moe_layers(path: Path) -> list[int]:
    ckpt = Checkpoint.open(path)
    return [layer.index for layer in describe(ckpt.config, ckpt.tensors).layers]


def test_nemotron_hub_pattern_names_the_same_layers_and_verifies(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """The hub's config.json has ``hybrid_override_pattern`` ("E" = MoE) and ``num_hidden_layers``, not
    the ``layers_block_type`` transformers writes: the same MoE layers, pruned and verified."""
    src = tiny("nemotron_h")
    hub = tmp_path / "hub"
    shutil.copytree(src, hub)
    config = json.loads((hub / "config.json").read_text())
    types = config.pop("layers_block_type")
    assert "num_hidden_layers" not in config  # transformers writes the list, not the count
    config["hybrid_override_pattern"] = "".join(_PATTERN[t] for t in types)
    config["num_hidden_layers"] = len(types)
    (hub / "config.json").write_text(json.dumps(config))
    assert config["hybrid_override_pattern"] == "ME*E"
    assert _moe_layers(hub) == _moe_layers(src) == [1, 3]

    out = tmp_path / "out"
    assert cli("prune", str(hub), "--ratio", "0.25", "-o", str(out)).code == 0
    pruned = json.loads((out / "config.json").read_text())
    assert pruned == {**config, "n_routed_experts": 6}
    r = cli("verify", str(hub), str(out))
    assert r.code == 0 and r.out.startswith("OK:") and "2 MoE layers masked" in r.out, r


def test_nemotron_latent_prunes_and_verifies(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Nemotron-3 Super's latent MoE: experts are [E, I, latent] / [E, latent, I]; the latent projections
    (fc1/fc2_latent_proj) and the shared expert are not per expert and stay byte-identical."""
    src = tiny("nemotron_h", **LATENT)
    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", "0.5", "-o", str(out)).code == 0
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    latent = [k for k in a if "latent_proj" in k]
    assert latent and all(torch.equal(a[k], b[k]) for k in latent)
    assert a["backbone.layers.1.mixer.experts.0.up_proj.weight"].shape == (32, 32)  # (I, latent)
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    for layer, lp in plan.items():
        for k, j in enumerate(lp["kept"]):
            for p in ("up_proj", "down_proj"):
                new, old = (
                    f"backbone.layers.{layer}.mixer.experts.{k}.{p}.weight",
                    f"backbone.layers.{layer}.mixer.experts.{j}.{p}.weight",
                )
                assert torch.equal(b[new], a[old])
    r = cli("verify", str(src), str(out))
    assert r.code == 0 and r.out.startswith("OK:"), r


def test_nemotron_aimer_pools_up_and_down_only(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """A non-gated expert has two matrices: AIMER over exactly those, from the file, in float64."""
    src = tiny("nemotron_h")
    tensors = load_file(src / "model.safetensors")
    assert cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json")).code == 0
    got = json.loads((tmp_path / "s.json").read_text())["layers"]
    assert sorted(got) == ["1", "3"]
    for layer, scores in got.items():
        names = [k for k in tensors if k.startswith(f"backbone.layers.{layer}.mixer.experts.0.")]
        assert sorted(n.rsplit(".", 2)[-2] for n in names) == ["down_proj", "up_proj"]
        want = []
        for j in range(8):
            w = np.concatenate(
                [
                    tensors[f"backbone.layers.{layer}.mixer.experts.{j}.{p}.weight"].double().numpy().ravel()
                    for p in ("up_proj", "down_proj")
                ]
            )
            want.append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
        np.testing.assert_allclose(scores, want, rtol=1e-9, atol=0)


# --- DBRX: blocks of rows, nested counts ---------------------------------------------------------------


def test_dbrx_aimer_and_surgery_on_blocks_of_rows(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Expert j of DBRX is rows j·I .. (j+1)·I - 1 of w1, v1 and w2 [E·I, H]: scored over those blocks
    (by hand, from the file) and cut out whole; the output's block k is input block kept[k]."""
    src = tiny("dbrx")
    a = load_file(src / "model.safetensors")
    n, inter = 8, 32
    r = cli("inspect", str(src))
    assert r.code == 0 and "8 per MoE layer (config key ffn_config.moe_num_experts)" in r.out, r
    assert a["transformer.blocks.0.ffn.experts.mlp.w2"].shape == (n * inter, 64)
    assert cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json")).code == 0
    got = json.loads((tmp_path / "s.json").read_text())["layers"]
    for layer, scores in got.items():
        blocks = [
            a[f"transformer.blocks.{layer}.ffn.experts.mlp.{w}"].double().numpy().reshape(n, inter, -1)
            for w in ("w1", "v1", "w2")
        ]
        want = []
        for j in range(n):
            w = np.concatenate([b[j].ravel() for b in blocks])
            want.append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
        np.testing.assert_allclose(scores, want, rtol=1e-9, atol=0)

    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", "0.25", "-o", str(out)).code == 0
    b = load_file(out / "model.safetensors")
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    for layer, lp in plan.items():
        for w in ("w1", "v1", "w2"):
            name = f"transformer.blocks.{layer}.ffn.experts.mlp.{w}"
            assert b[name].shape == (6 * inter, 64)
            for k, j in enumerate(lp["kept"]):
                assert torch.equal(b[name][k * inter : (k + 1) * inter], a[name][j * inter : (j + 1) * inter])
    config, pruned = (json.loads((p / "config.json").read_text()) for p in (src, out))
    assert pruned["ffn_config"]["moe_num_experts"] == 6 and pruned["ffn_config"]["moe_top_k"] == 2
    assert pruned == {**config, "ffn_config": {**config["ffn_config"], "moe_num_experts": 6}}


def _edit(
    src: Path,
    dst: Path,
    config: Callable[[dict[str, Any]], None] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        c = json.loads((dst / "config.json").read_text())
        config(c)
        (dst / "config.json").write_text(json.dumps(c))
    if tensors is not None:
        t = load_file(dst / "model.safetensors")
        tensors(t)
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_malformed_inputs_fail_with_one_line(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    dbrx, nemo = tiny("dbrx"), tiny("nemotron_h")

    def cut_rows(t: dict[str, torch.Tensor]) -> None:
        t["transformer.blocks.1.ffn.experts.mlp.v1"] = t["transformer.blocks.1.ffn.experts.mlp.v1"][:-4].clone()

    def uneven(t: dict[str, torch.Tensor]) -> None:  # 8 blocks of 36 rows where the others have 32
        t["transformer.blocks.0.ffn.experts.mlp.w2"] = torch.zeros(8 * 36, 64)

    def drop(t: dict[str, torch.Tensor]) -> None:
        del t["transformer.blocks.0.ffn.experts.mlp.w1"]

    def nested(c: dict[str, Any]) -> None:
        c["ffn_config"]["moe_num_experts"] = "8"

    def pattern(c: dict[str, Any]) -> None:
        del c["layers_block_type"]
        c["hybrid_override_pattern"] = "ME*X"

    def no_types(c: dict[str, Any]) -> None:
        del c["layers_block_type"]

    def no_layers(c: dict[str, Any]) -> None:
        del c["n_layers"]

    def dense(c: dict[str, Any]) -> None:  # a dense Nemotron-H (Nemotron-H 8B): no "moe" layer
        c["layers_block_type"] = ["linear_attention", "mlp", "full_attention", "mlp"]

    cases = [
        (_edit(dbrx, tmp_path / "rows", tensors=cut_rows), "blocks of rows"),
        (_edit(dbrx, tmp_path / "uneven", tensors=uneven), "differ in height"),
        (_edit(dbrx, tmp_path / "drop", tensors=drop), "experts.mlp.w1"),
        (
            _edit(dbrx, tmp_path / "nested", config=nested),
            "(ffn_config): field moe_num_experts: must be a whole number",
        ),
        (_edit(nemo, tmp_path / "pattern", config=pattern), "hybrid_override_pattern"),
        (_edit(nemo, tmp_path / "types", config=no_types), "neither layers_block_type nor hybrid_override_pattern"),
        (_edit(dbrx, tmp_path / "layers", config=no_layers), "no n_layers"),
        (_edit(nemo, tmp_path / "dense", config=dense), "nothing to prune"),
    ]
    for path, needle in cases:
        one_line_error(cli("prune", str(path), "--ratio", "0.25", "-o", str(tmp_path / f"{path.name}-out")), needle)


def test_nemotron_mtp_moe_layer_is_pruned_like_the_trunk(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Nemotron-3 Super ships next-token-prediction layers ``mtp.layers.{k}`` (vLLM's nemotron_h_mtp:
    pattern ``mtp_hybrid_override_pattern`` "*E", an attention layer then a MoE layer) that transformers
    ignores: the MoE one is pruned with the trunk's count (numbered after the decoder layers) and scored
    from its own weights."""
    src = tmp_path / "src"
    shutil.copytree(tiny("nemotron_h"), src)
    tensors = load_file(src / "model.safetensors")
    trunk, mtp = "backbone.layers.3.mixer.", "mtp.layers.1.mixer."
    gen = torch.Generator().manual_seed(7)
    added = {}
    for name, t in tensors.items():
        if name.startswith(trunk):
            new = mtp + name[len(trunk) :]
            j = int(new.split("experts.")[1].split(".")[0]) if ".experts." in new else 0
            added[new] = (t * (1.0 + j) + 0.01 * torch.randn(t.shape, generator=gen)).contiguous()  # magnitude ~ j
    added["mtp.layers.0.eh_proj.weight"] = torch.randn(64, 128, generator=gen)
    save_file({**tensors, **added}, src / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (src / "config.json").write_text(json.dumps(config))
    assert _moe_layers(src) == [1, 3, 5]  # 4 decoder layers, then MTP layer 1

    assert cli("score", str(src), "--criterion", "magnitude", "-o", str(tmp_path / "s.json")).code == 0
    scores = json.loads((tmp_path / "s.json").read_text())["layers"]["5"]
    want = [
        np.mean(
            np.abs(
                np.concatenate(
                    [added[f"{mtp}experts.{j}.{p}.weight"].double().numpy().ravel() for p in ("up_proj", "down_proj")]
                )
            )
        )
        for j in range(8)
    ]
    np.testing.assert_allclose(scores, want, rtol=1e-9)
    out = tmp_path / "out"
    assert cli("prune", str(src), "--criterion", "magnitude", "--prune", "2", "-o", str(out)).code == 0
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    assert plan["5"]["pruned"] == [0, 1]
    b = load_file(out / "model.safetensors")
    for rel in ("gate.weight", "gate.e_score_correction_bias"):
        assert torch.equal(b[mtp + rel], added[mtp + rel][plan["5"]["kept"]])
    for k, j in enumerate(plan["5"]["kept"]):
        for p in ("up_proj", "down_proj"):
            assert torch.equal(b[f"{mtp}experts.{k}.{p}.weight"], added[f"{mtp}experts.{j}.{p}.weight"])
    assert not any(n.startswith(f"{mtp}experts.6.") for n in b)
    assert torch.equal(b["mtp.layers.0.eh_proj.weight"], added["mtp.layers.0.eh_proj.weight"])
    r = cli("verify", str(src), str(out))  # transformers ignores mtp.*; the trunk must match
    assert r.code == 0 and r.out.startswith("OK:"), r


# --- JetMoE: two expert sets (MLP experts, attention experts) under one count ----------------------

JET_SETS = {  # set -> (router, fused expert tensors), relative to model.layers.{L}. (modeling_jetmoe.py)
    0: ("mlp.router.layer.weight", ("mlp.input_linear.weight", "mlp.output_linear.weight")),
    1: (
        "self_attention.experts.router.layer.weight",
        ("self_attention.experts.input_linear.weight", "self_attention.experts.output_linear.weight"),
    ),
}
"""JetMoE's MoE layer has E MLP experts (JetMoeMoE) and E attention experts (JetMoeMoA: a query and an
output projection each, K/V shared), each set with its own top-k router, both built from
``num_local_experts``: moeprune numbers them 0..E-1 and E..2E-1 and removes the same number from each."""


def _jet_masked_logits(model: Any, pruned: dict[int, list[int]], n: int, ids: torch.Tensor) -> torch.Tensor:
    """Logits with each layer's removed experts (plan ids, set s = id // n) at -inf in their set's router."""
    from torch.overrides import TorchFunctionMode

    masks = {}
    for i, layer in enumerate(model.model.layers):
        for s, router in ((0, layer.mlp.router.layer), (1, layer.self_attention.experts.router.layer)):
            mask = torch.zeros(n)
            mask[[j - s * n for j in pruned[i] if j // n == s]] = float("-inf")
            masks[router.weight.data_ptr()] = mask

    class Mask(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            if func is F.linear and (mask := masks.get(args[1].data_ptr())) is not None:
                out = out + mask
            return out

    with torch.no_grad(), Mask():
        return model(ids).logits


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_jetmoe_prunes_both_sets_and_equals_the_masked_original(
    ratio: float, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    src = tiny("jetmoe")
    a = load_file(src / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    n, layers = config["num_local_experts"], config["num_hidden_layers"]
    per_set = int(ratio * n)  # --ratio is over the 2E experts of a layer: the same share of each set

    # AIMER of every expert from the file, by hand: each set pools its own two matrices
    aimer: dict[int, list[float]] = {}
    for i in range(layers):
        aimer[i] = []
        for _, fused in JET_SETS.values():
            for j in range(n):
                w = np.concatenate([a[f"model.layers.{i}.{rel}"][j].double().numpy().ravel() for rel in fused])
                aimer[i].append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
    assert cli("score", str(src), "--criterion", "aimer", "-o", str(tmp_path / "s.json")).code == 0
    got = json.loads((tmp_path / "s.json").read_text())["layers"]
    assert sorted(got, key=int) == [str(i) for i in range(layers)]
    for i in range(layers):
        np.testing.assert_allclose(got[str(i)], aimer[i], rtol=1e-9, atol=0, err_msg=f"layer {i}")

    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", str(ratio), "-o", str(out)).code == 0
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    b = load_file(out / "model.safetensors")
    expected: dict[str, torch.Tensor] = {}
    for i in range(layers):
        lp = plan[str(i)]
        assert sorted(lp["kept"] + lp["pruned"]) == list(range(2 * n))
        for s in JET_SETS:  # each set loses its per_set highest-AIMER experts (ties: lower id)
            ids = list(range(s * n, (s + 1) * n))
            want = sorted(sorted(ids, key=lambda j: (-aimer[i][j], j))[:per_set])
            assert [j for j in lp["pruned"] if j // n == s] == want, f"layer {i}, set {s}"
            kept = torch.tensor([j - s * n for j in lp["kept"] if j // n == s])
            router, fused = JET_SETS[s]
            for rel in (router, *fused):
                name = f"model.layers.{i}.{rel}"
                expected[name] = a[name].index_select(0, kept)
    for name, t in a.items():
        expected.setdefault(name, t)
    assert sorted(b) == sorted(expected)
    for name, t in expected.items():
        assert b[name].shape == t.shape and torch.equal(b[name], t), name
    assert json.loads((out / "config.json").read_text()) == {**config, "num_local_experts": n - per_set}

    original = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.model.layers[0].self_attention.experts.input_linear.weight.shape[0] == n - per_set
    ids = torch.randint(0, config["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmasked, got_logits = original(ids).logits, model(ids).logits
    reference = _jet_masked_logits(original, {i: plan[str(i)]["pruned"] for i in range(layers)}, n, ids)
    torch.testing.assert_close(got_logits, reference, atol=1e-5, rtol=0)
    assert float((got_logits - unmasked).abs().max()) > 1e-3, "pruning barely changed the logits"
    r = cli("verify", str(src), str(out))
    assert r.code == 0 and r.out.startswith("OK:"), r


def test_jetmoe_refuses_sets_that_disagree(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """An attention-expert tensor with fewer experts than the MLP set, or missing: one error line."""
    src = tiny("jetmoe")

    def fewer(t: dict[str, torch.Tensor]) -> None:
        name = "model.layers.1.self_attention.experts.output_linear.weight"
        t[name] = t[name][:7].clone()

    def missing(t: dict[str, torch.Tensor]) -> None:
        del t["model.layers.2.self_attention.experts.input_linear.weight"]

    for path, needle in (
        (_edit(src, tmp_path / "fewer", tensors=fewer), "expected 8 experts along axis 0"),
        (_edit(src, tmp_path / "missing", tensors=missing), "of expert set 1 not found"),
    ):
        one_line_error(cli("prune", str(path), "--ratio", "0.25", "-o", str(tmp_path / f"{path.name}-out")), needle)
