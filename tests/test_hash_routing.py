"""Hash-routed layers (DeepSeek-V4): the expert-id table ``gate.tid2eid`` after pruning.

A hash layer takes a token's k experts from ``tid2eid[token id]`` and weights them by the router's
scores renormalised over the row. The pruned table must name kept experts only (transformers'
router gathers a score for every id: an id >= K fails), so slots naming removed experts are
re-routed (moeprune/io/idtable.py): kept slots stay; removed slots take the row's kept slots in turn;
a row with no kept expert takes the next kept id after each removed one, wrapping around.

Checked here against hand computations written out below and a plain-Python loop
(`expected_table`, also used by tests/test_families.py), then end to end on the tiny DeepSeek-V4:
the pruned checkpoint's table, verify, and that masking the router logits alone (dropping the
removed slots) is NOT what the pruned model computes, so the rewrite of the table is what verify
proves.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeprune.errors import InputError
from moeprune.io.idtable import reroute, reroute_original


def expected_table(table: torch.Tensor, kept: list[int], n_experts: int) -> torch.Tensor:
    """The rule, one row at a time in plain Python (independent of the vectorised code)."""
    new = {old: i for i, old in enumerate(kept)}
    rows = []
    for row in table.tolist():
        have = [new[e] for e in row if e in new]
        if not have:
            out = []
            for e in row:
                later = [j for j in kept if j > e]
                out.append(new[later[0]] if later else 0)  # wrap around to the first kept expert
        else:
            out, r = [], 0
            for e in row:
                if e in new:
                    out.append(new[e])
                else:
                    out.append(have[r % len(have)])
                    r += 1
        rows.append(out)
    return torch.tensor(rows, dtype=table.dtype).reshape(table.shape)


# --- the rule by hand --------------------------------------------------------------------------------

KEPT = [1, 2, 5, 6]  # of 8 experts: 0, 3, 4, 7 removed; new ids 1->0, 2->1, 5->2, 6->3
HAND = [
    # original row -> pruned row (new numbering), why
    ([1, 2, 5], [0, 1, 2]),  # every expert kept: renumbered only
    ([2, 0, 6], [1, 1, 3]),  # 0 removed: its slot takes the row's first kept slot (2 -> 1)
    ([0, 5, 3], [2, 2, 2]),  # 0 and 3 removed, one kept slot (5 -> 2): every slot takes it
    ([6, 4, 0, 1], [3, 3, 0, 0]),  # k = 4: removed slots take kept slots 6, 1 in turn
    ([4, 6, 7, 0], [3, 3, 3, 3]),  # only 6 kept
    ([7, 0, 3], [0, 0, 2]),  # none kept: next kept id after 7 wraps to 1 (-> 0), after 0 is 1, after 3 is 5
    ([4, 4, 2], [1, 1, 1]),  # a table row naming one expert twice is handled slot by slot
]


@pytest.mark.parametrize("row,want", HAND, ids=[str(r) for r, _ in HAND])
def test_reroute_by_hand(row: list[int], want: list[int]) -> None:
    table = torch.tensor([row], dtype=torch.int64)
    assert reroute(table, KEPT, 8).tolist() == [want]
    assert expected_table(table, KEPT, 8).tolist() == [want]
    assert reroute_original(table, KEPT, 8).tolist() == [[KEPT[j] for j in want]]


@pytest.mark.parametrize("k,n_kept", [(2, 1), (3, 2), (6, 3), (6, 5)])
def test_reroute_equals_the_loop_on_random_tables(k: int, n_kept: int) -> None:
    gen = torch.Generator().manual_seed(k * 10 + n_kept)
    table = torch.rand(500, 8, generator=gen).argsort(dim=1)[:, :k]  # k distinct ids per row, as the hub's
    kept = sorted(torch.randperm(8, generator=gen)[: max(n_kept, k)].tolist())
    for dtype in (torch.int64, torch.int32):
        got = reroute(table.to(dtype), kept, 8)
        assert got.dtype == dtype
        assert torch.equal(got, expected_table(table.to(dtype), kept, 8))
        assert int(got.min()) >= 0 and int(got.max()) < len(kept)


def _router_weights(scores: torch.Tensor, table: torch.Tensor, n_experts: int) -> torch.Tensor:
    """What transformers' DeepseekV4HashRouter gives each expert: gathered scores, renormalised."""
    w = scores.gather(1, table)
    w = w / w.sum(dim=-1, keepdim=True)
    return torch.zeros(scores.shape[0], n_experts, dtype=scores.dtype).scatter_add(1, table, w)


@pytest.mark.parametrize(
    "row,kept,exact",
    [
        ([0, 5], KEPT, True),  # k = 2, 1 kept slot
        ([2, 0, 6], KEPT, False),  # k = 3, 2 kept slots
        ([0, 1, 3, 2, 7, 4], [1, 2, 6], True),  # k = 6, 2 kept slots
        ([0, 1, 3, 2, 5, 4], KEPT, True),  # k = 6, 3 kept slots
        ([0, 1, 3, 2, 5, 6], KEPT, False),  # k = 6, 4 kept slots
    ],
)
def test_rerouting_equals_dropping_the_slot_when_the_kept_slots_divide_k(
    row: list[int], kept: list[int], exact: bool
) -> None:
    """The semantics the docs state: the kept experts' weights are score x slots / sum; that equals
    dropping the removed slots and renormalising exactly when the kept slots divide k."""
    scores = torch.rand(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.1
    table = torch.tensor([row])
    drop = scores.clone()
    drop[0, [e for e in range(8) if e not in kept]] = 0.0  # removed experts' slots contribute nothing
    dropped = _router_weights(drop, table, 8)
    rerouted = _router_weights(scores, reroute_original(table, kept, 8), 8)
    assert torch.allclose(rerouted, dropped) is exact


def test_bad_tables_are_refused() -> None:
    with pytest.raises(InputError, match=r"outside 0\.\.7"):
        reroute(torch.tensor([[0, 8]]), KEPT, 8)
    with pytest.raises(InputError, match=r"outside 0\.\.7"):
        reroute(torch.tensor([[-1, 2]]), KEPT, 8)
    with pytest.raises(InputError, match="2-D integer"):
        reroute(torch.tensor([[0.0, 1.0]]), KEPT, 8)
    for kept in ([], [2, 1], [1, 1, 2], [1, 8]):
        with pytest.raises(InputError, match="distinct ascending"):
            reroute(torch.tensor([[0, 1]]), kept, 8)


# --- end to end on the tiny DeepSeek-V4 -----------------------------------------------------------------


def test_pruned_tables_verify_and_matter(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tiny("deepseek_v4")
    config = json.loads((src / "config.json").read_text())
    hash_layers = [i for i, t in enumerate(config["mlp_layer_types"]) if t == "hash_moe"]
    assert hash_layers == [0, 1]
    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "magnitude", "--ratio", "0.5", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    for i in hash_layers:
        name = f"layers.{i}.ffn.gate.tid2eid"
        assert f"layers.{i}.ffn.gate.bias" not in a
        kept = plan[str(i)]["kept"]
        assert torch.equal(b[name], expected_table(a[name], kept, 8))
        changed = (b[name] != a[name]).any(dim=1)  # renumbered or re-routed rows
        removed = torch.isin(a[name], torch.tensor(plan[str(i)]["pruned"])).any(dim=1)
        assert int(removed.sum()) > 0 and bool(changed[removed].all())
    assert cli("verify", str(src), str(out)).code == 0

    # the table rewrite is what makes the pruned model equal: with the original's table left as it is,
    # verify's logit mask alone drops the removed slots (score 0), which the pruned model does not do
    verify_module = importlib.import_module("moeprune.verify")  # the module (the package exports the function)
    monkeypatch.setattr(verify_module, "reroute_original", lambda table, kept, n: table.clone())
    res = verify_module.verify(src, out)
    assert not res.ok and res.max_abs_diff > 1e-3, res


def test_a_table_with_an_out_of_range_id_is_refused(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny("deepseek_v4"), src)
    tensors = load_file(src / "model.safetensors")
    tensors["layers.0.ffn.gate.tid2eid"][5, 1] = 8
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    r = cli("prune", str(src), "--criterion", "magnitude", "--ratio", "0.25", "-o", str(tmp_path / "out"))
    assert r.code == 2 and "outside 0..7" in r.err and "Traceback" not in r.err, r
    assert not (tmp_path / "out").exists()


def test_a_float_table_is_refused_before_any_work(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny("deepseek_v4"), src)
    tensors = load_file(src / "model.safetensors")
    tensors["layers.1.ffn.gate.tid2eid"] = tensors["layers.1.ffn.gate.tid2eid"].float()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    r = cli("inspect", str(src))
    assert r.code == 2 and "2-D integer tensor" in r.err, r


def _fp4_checkpoint(src: Path, dst: Path) -> dict[str, torch.Tensor]:
    """Copy ``src`` with its experts as hub DeepSeek-V4 stores them, FP4: ``w*.weight`` I8 [I, H/2]
    (two E2M1 codes per byte) with ``w*.scale`` F8_E8M0 [I, H/32] (one power of two per 32 values)."""
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in load_file(dst / "model.safetensors").items():
        if ".ffn.experts." in name and name.endswith(".weight"):
            rows, cols = t.shape
            tensors[name] = torch.randint(-128, 128, (rows, cols // 2), generator=gen, dtype=torch.int8)
            scale = torch.randint(120, 130, (rows, cols // 32), generator=gen, dtype=torch.uint8)
            tensors[name[: -len("weight")] + "scale"] = scale.view(torch.float8_e8m0fnu)
        else:
            tensors[name] = t
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    plain = {n[: -len(".weight")] for n in tensors if n.endswith(".weight") and ".experts." not in n}
    config = json.loads((dst / "config.json").read_text())
    config["expert_dtype"] = "fp4"  # top level, as the hub writes it (transformers moves it into quantization_config)
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "scale_fmt": "ue8m0",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
        # the hub's attention and shared experts are FP8; the tiny's are float32: not converted
        "modules_to_not_convert": ["head", "embed", *sorted(plain)],
    }
    (dst / "config.json").write_text(json.dumps(config))
    return tensors


def test_fp4_experts_are_pruned_with_their_scales_and_verify(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    tensors = _fp4_checkpoint(tiny("deepseek_v4"), tmp_path / "src")
    out = tmp_path / "out"
    r = cli("prune", str(tmp_path / "src"), "--criterion", "random", "--ratio", "0.25", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    pruned = load_file(out / "model.safetensors")
    for layer, lp in plan.items():
        for k, j in enumerate(lp["kept"]):
            for part in ("w1", "w2", "w3"):
                for suffix in ("weight", "scale"):
                    a = tensors[f"layers.{layer}.ffn.experts.{j}.{part}.{suffix}"]
                    b = pruned[f"layers.{layer}.ffn.experts.{k}.{part}.{suffix}"]
                    assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        assert f"layers.{layer}.ffn.experts.{len(lp['kept'])}.w1.scale" not in pruned
    r = cli("verify", str(tmp_path / "src"), str(out))  # transformers dequantizes the FP4 experts on CPU
    assert r.code == 0, r


def test_fp4_experts_score_as_their_dequantized_weights(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    import numpy as np

    tensors = _fp4_checkpoint(tiny("deepseek_v4"), tmp_path / "src")
    r = cli("score", str(tmp_path / "src"), "--criterion", "aimer", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    codes = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    codes = np.concatenate([codes, -codes])  # E2M1: bit 3 is the sign
    for layer, got in json.loads((tmp_path / "s.json").read_text())["layers"].items():
        want = []
        for j in range(len(got)):
            parts = []
            for part in ("w1", "w2", "w3"):
                q = tensors[f"layers.{layer}.ffn.experts.{j}.{part}.weight"].view(torch.uint8).numpy()
                e = tensors[f"layers.{layer}.ffn.experts.{j}.{part}.scale"].view(torch.uint8).numpy()
                w = np.stack([codes[q & 15], codes[q >> 4]], axis=-1).reshape(q.shape[0], e.shape[1], 32)
                parts.append((w * np.exp2(e.astype(np.float64) - 127)[..., None]).ravel())
            w = np.concatenate(parts)
            want.append(np.mean(np.abs(w)) / np.sqrt(np.mean(w * w)))
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"layer {layer}")


def test_hub_config_json(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """The hub's config.json says ``num_hash_layers`` and ``compress_ratios`` (one entry per layer,
    plus the MTP layer's) where transformers writes ``mlp_layer_types`` and ``layer_types``: the same
    MoE layers, tables re-routed in the hash layers, and the pruned model verifies."""
    src = tmp_path / "src"
    shutil.copytree(tiny("deepseek_v4"), src)
    config = json.loads((src / "config.json").read_text())
    for key in ("mlp_layer_types", "layer_types", "compress_rates", "rope_parameters", "partial_rotary_factor"):
        del config[key]
    config |= {"num_hash_layers": 2, "compress_ratios": [0, 4, 128, 0], "qk_rope_head_dim": 8}
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    r = cli("prune", str(src), "--criterion", "aimer", "--ratio", "0.25", "-o", str(out))
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    assert sorted(plan) == ["0", "1", "2"]
    a, b = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    for i in (0, 1):
        name = f"layers.{i}.ffn.gate.tid2eid"
        assert torch.equal(b[name], expected_table(a[name], plan[str(i)]["kept"], 8))
    assert "layers.2.ffn.gate.tid2eid" not in a and b["layers.2.ffn.gate.bias"].shape == (6,)
    written = json.loads((out / "config.json").read_text())
    assert written == config | {"n_routed_experts": 6}
    assert cli("verify", str(src), str(out)).code == 0
