"""Routers whose rows are not exactly the routed experts (`arch.spec.RouterRows`).

LongCat-Flash's router has ``n_routed_experts + zero_expert_num`` rows, the trailing ones being
zero-computation (identity) experts, and its selection bias has the same rows; Inkling's router has
``n_routed_experts + n_shared_experts`` rows, the trailing ones weighting the shared experts (sink
rows), beside a selection bias of E entries; ZAYA's MLP router has E + 1 outputs, the last a skip
expert (no computation), as have its balancing biases. These tests prove, on the tiny checkpoints in the hub's
key layout, what a user relies on beyond tests/test_families.py:

- the trailing rows are kept verbatim and in place, after the kept experts' rows, in the router and
  its bias; the config keeps the count of extra rows and changes only the routed count;
- a plan or a score file that names one of those rows is refused with one ``error:`` line;
- a checkpoint whose router rows disagree with the config's count of extra rows is refused;
- a router stored with its experts on another axis than the family's (Ergo: [H, E]) is refused;
- calibration counts only real experts' tokens: the experts module receives a token's identity slots
  as weight-0 pairs on a real expert, and the moments equal a float64 reference that takes the
  identity slots from the router's own selection; Ergo's (non-gated relu² experts, each with its own
  output RMSNorm) equal a float64 reference of their own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeprune.arch import FAMILIES
from moeprune.arch.spec import RouterRows
from test_calib_reference import ATOL, RTOL, expert_output, token_batch

ROUTER_ROWS: dict[str, tuple[str, tuple[str, ...], str | int]] = {
    # family: (block of layer {L}, tensors with extra rows (relative to the block), config key of their count,
    # or the count)
    "longcat_flash": (
        "model.layers.{L}.mlp.",
        ("router.classifier.weight", "router.e_score_correction_bias"),
        "zero_expert_num",
    ),
    "inkling_mm_model": ("model.llm.layers.{L}.mlp.", ("gate.weight",), "n_shared_experts"),  # sink rows
    "zaya": ("model.layers.{L}.mlp.", ("gate.router_mlp.out_proj.weight", "gate.balancing_biases"), 1),  # skip expert
}
"""The families with router rows that are not experts, as the architecture reference describes them."""


ROUTER_AXIS = {"ergo": ("layers.{L}.feed_forward.gate_kernel", 1)}
"""Families whose router weight is stored with the experts on another axis than 0: (key, axis)."""


def test_every_router_rows_family_is_covered() -> None:
    extra = sorted(name for name, f in FAMILIES.items() if f.router_rows.extra is not RouterRows().extra)
    assert extra == sorted(ROUTER_ROWS)
    assert all(FAMILIES[name].router_rows.axis == axis for name, (_, axis) in ROUTER_AXIS.items())


def _text(config: dict[str, Any]) -> dict[str, Any]:
    return config["text_config"] if isinstance(config.get("text_config"), dict) else config


def _n_experts(config: dict[str, Any]) -> int:
    return int(config.get("n_routed_experts") or config["num_experts"])


def _prune(cli: Callable[..., Any], src: Path, out: Path, *args: str) -> dict[str, Any]:
    r = cli("prune", str(src), "--ratio", "0.5", "-o", str(out), *args)
    assert r.code == 0, r
    return dict(json.loads((out / "moeprune_plan.json").read_text())["layers"])


def _one_error_line(r: Any) -> str:
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    return str(lines[0])


@pytest.mark.parametrize("family", sorted(ROUTER_ROWS))
def test_extra_rows_are_kept_verbatim_after_the_kept_experts(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    block, names, key = ROUTER_ROWS[family]
    src = tiny(family)
    config = _text(json.loads((src / "config.json").read_text()))
    n, extra = _n_experts(config), key if isinstance(key, int) else int(config[key])
    assert extra >= (1 if isinstance(key, int) else 2), "the tiny should have several extra rows"
    plan = _prune(cli, src, tmp_path / "out")
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    for layer, lp in plan.items():
        kept = lp["kept"]
        assert len(kept) == n // 2
        for rel in names:
            name = block.format(L=layer) + rel
            assert a[name].shape[0] == n + extra and b[name].shape[0] == len(kept) + extra, name
            assert torch.equal(b[name][: len(kept)], a[name][kept]), name  # the kept experts, renumbered
            assert torch.equal(b[name][len(kept) :], a[name][n:]), name  # the extra rows, verbatim, last
    out_config = _text(json.loads((tmp_path / "out" / "config.json").read_text()))
    assert _n_experts(out_config) == n // 2 and (isinstance(key, int) or out_config[key] == extra)
    assert cli("verify", str(src), str(tmp_path / "out")).code == 0


def test_longcat_router_bias_keeps_its_extra_rows(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """LongCat-Flash configs may set ``router_bias``: the classifier's bias [E + Z] is sliced like its weight."""
    src = tiny("longcat_flash", overrides={"router_bias": True})
    plan = _prune(cli, src, tmp_path / "out")
    a, b = load_file(src / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    for layer, lp in plan.items():
        name = f"model.layers.{layer}.mlp.router.classifier.bias"
        assert a[name].shape == (12,)
        assert torch.equal(b[name], torch.cat([a[name][lp["kept"]], a[name][8:]]))
    assert cli("verify", str(src), str(tmp_path / "out")).code == 0


@pytest.mark.parametrize("family", sorted(ROUTER_ROWS))
def test_a_plan_or_scores_naming_an_extra_row_is_refused(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny(family)
    n = _n_experts(_text(json.loads((src / "config.json").read_text())))
    out = tmp_path / "out"
    _prune(cli, src, out)
    plan_file = out / "moeprune_plan.json"
    good = json.loads(plan_file.read_text())

    # the first extra row (id n) named as pruned in place of a routed expert
    bad = json.loads(json.dumps(good))
    layer = bad["layers"][min(bad["layers"], key=int)]
    layer["pruned"] = sorted([*layer["pruned"][1:], n])
    plan_file.write_text(json.dumps(bad))
    assert "must split 0.." in _one_error_line(cli("verify", str(src), str(out)))

    # a plan counting the extra rows as experts
    bad = json.loads(json.dumps(good))
    bad["n_experts"] = n + 1
    for lp in bad["layers"].values():
        lp["kept"] = sorted([*lp["kept"], n])
    plan_file.write_text(json.dumps(bad))
    _one_error_line(cli("verify", str(src), str(out)))

    # scores for every router row (the extra rows included)
    assert cli("score", str(src), "-o", str(tmp_path / "s.json")).code == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    for layer_scores in scores["layers"].values():
        layer_scores.append(0.0)
    (tmp_path / "s.json").write_text(json.dumps(scores))
    _one_error_line(
        cli("prune", str(src), "--ratio", "0.5", "--scores", str(tmp_path / "s.json"), "-o", str(tmp_path / "o2"))
    )


@pytest.mark.parametrize("family", sorted(f for f, (_, _, key) in ROUTER_ROWS.items() if isinstance(key, str)))
def test_router_rows_that_disagree_with_the_config_are_refused(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    _, _, key = ROUTER_ROWS[family]
    src = tmp_path / "src"
    shutil.copytree(tiny(family), src)
    config = json.loads((src / "config.json").read_text())
    _text(config)[key] = int(_text(config)[key]) + 1
    (src / "config.json").write_text(json.dumps(config))
    line = _one_error_line(cli("score", str(src), "-o", str(tmp_path / "s.json")))
    assert "rows that are not routed experts" in line


# --- calibration: identity slots are not routed tokens -------------------------------------------------


def _longcat_routing(router: Any, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """LongCat-Flash's router returns (logits, weights, indices); indices >= E are identity experts."""
    return out[2], out[1]


def _zaya_routing(router: Any, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """ZAYA's router parks its skip slots itself: its selection is recomputed from its logits as
    modeling_zaya.py makes it (softmax, + balancing biases, top-k), index E being the skip expert."""
    probs = out[0].softmax(dim=-1)
    index = torch.topk(probs.float() + router.balancing_biases, router.top_k, dim=-1).indices
    return index, probs.gather(1, index)


SKIP_SLOTS: dict[str, tuple[str, Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]]] = {
    "longcat_flash": ("mlp.router", _longcat_routing),
    "zaya": ("mlp.gate", _zaya_routing),
}
"""Families whose experts module receives slots on extra router rows as weight-0 pairs parked on a
real expert: the router module (relative to a decoder layer) and its own (index [T, k], weight [T, k])."""


def skip_slot_reference(path: Path, family: str, tokens: Any) -> dict[int, torch.Tensor]:
    """Per MoE layer, the (E, 3, 3) float64 moments Σ g^α ‖f‖^β over the non-padding (token, slot)
    pairs that the router sent to a REAL expert (its own top-k indices < E), with f recomputed by hand
    from the experts' weights; the slots on extra rows (indices >= E) count nothing. Also checks that
    the experts module received those slots with weight 0, that the real pairs rebuild what it
    returned, and that extra rows were chosen at all (else the test proves nothing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    router_path, routing = SKIP_SLOTS[family]
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        store: dict[str, torch.Tensor] = {}
        seen[i] = store

        def on_router(m: Any, args: Any, out: Any, store: dict[str, torch.Tensor] = store) -> None:
            store["index"], store["weights"] = (t.detach().clone() for t in routing(m, out))

        def on_experts(m: Any, args: Any, out: Any, store: dict[str, torch.Tensor] = store) -> None:
            store["hidden"], store["got_index"], store["got_weights"] = (a.detach().clone() for a in args[:3])
            store["actual"] = out.detach().clone()

        handles += [
            layer.get_submodule(router_path).register_forward_hook(on_router),
            layer.mlp.experts.register_forward_hook(on_experts),
        ]
    with torch.no_grad():
        model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    for h in handles:
        h.remove()

    valid = tokens.attention_mask.reshape(-1).bool()
    moments = {}
    for i, s in seen.items():
        experts = model.model.layers[i].mlp.experts
        n = int(experts.num_experts)
        index, weights, hidden = s["index"], s["weights"], s["hidden"]
        real = index < n
        assert (~real).any() and real.any(), f"layer {i}: the tiny never chose an extra row"
        assert torch.equal(s["got_index"].reshape(index.shape)[real], index[real])
        assert torch.equal(s["got_weights"].reshape(index.shape)[~real], torch.zeros(int((~real).sum())))
        rebuilt = torch.zeros(hidden.shape, dtype=torch.float64)
        a = torch.zeros(n, 3, 3, dtype=torch.float64)
        for j in range(n):
            tok, slot = (index == j).nonzero(as_tuple=True)
            g = weights[tok, slot].double()
            f = expert_output(family, experts, j, hidden[tok])
            rebuilt.index_add_(0, tok, g[:, None] * f)
            keep = valid[tok]
            g, norm = g[keep], f[keep].norm(dim=-1)
            for al in range(3):
                for be in range(3):
                    a[j, al, be] = (g**al * norm**be).sum()
        scale = max(1.0, float(s["actual"].abs().max()))  # ZAYA's tiny routes well-spread, large outputs
        torch.testing.assert_close(rebuilt.float(), s["actual"], rtol=1e-5, atol=1e-6 * scale, msg=f"layer {i}")
        moments[i] = a
    return moments


def _with_skips(family: str, tiny: Callable[..., Path], tmp_path: Path) -> Path:
    """The family's tiny, where ZAYA's skip expert is made as likely as the others: transformers sets
    its balancing bias to -1 on every load (modeling_zaya.py's ``_init_weights``), so a random tiny
    never picks it; the real experts' biases are lowered by 1 instead (and the stored skip bias made
    the -1 transformers uses)."""
    if family != "zaya":
        return tiny(family)
    src = tmp_path / "skips"
    shutil.copytree(tiny(family), src)
    tensors = load_file(src / "model.safetensors")
    for name, t in tensors.items():
        if name.endswith("mlp.gate.balancing_biases"):
            t[:-1] -= 1.0
            t[-1] = -1.0
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    return src


@pytest.mark.parametrize("family", sorted(SKIP_SLOTS))
def test_calibration_counts_only_real_experts(family: str, tiny: Callable[..., Path], tmp_path: Path) -> None:
    from moeprune.calib.engine import calibrate

    path = _with_skips(family, tiny, tmp_path)
    tokens = token_batch()
    want = skip_slot_reference(path, family, tokens)
    stats = calibrate(path, tokens, batch_size=2)
    assert sorted(stats.layers) == sorted(want)
    top_k = next(
        int(v)
        for k, v in json.loads((path / "config.json").read_text()).items()
        if k in ("moe_topk", "num_experts_per_tok")
    )
    for i, ref in want.items():
        got = stats.layer(i)
        assert torch.equal(got[:, 0, 0], ref[:, 0, 0]), f"layer {i}: N_j"
        # fewer routed tokens than top_k per token: the slots on extra rows are not counted
        assert float(got[:, 0, 0].sum()) < top_k * int(tokens.attention_mask.sum())
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


def test_zero_weight_pairs_would_be_counted_without_the_entry(
    tiny: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: with ``zero_weight_slots`` off, LongCat-Flash's identity slots count
    as tokens of the real experts they are parked on."""
    import dataclasses

    from moeprune.arch import families
    from moeprune.calib.engine import calibrate

    path = tiny("longcat_flash")
    entry = families.FAMILIES["longcat_flash"]
    off = dataclasses.replace(entry, router_rows=dataclasses.replace(entry.router_rows, zero_weight_slots=False))
    monkeypatch.setitem(families.FAMILIES, "longcat_flash", off)
    tokens = token_batch()
    want = skip_slot_reference(path, "longcat_flash", tokens)
    stats = calibrate(path, tokens, batch_size=2)
    assert any(not torch.equal(stats.layer(i)[:, 0, 0], ref[:, 0, 0]) for i, ref in want.items())


@pytest.mark.parametrize("family", sorted(ROUTER_AXIS))
def test_a_router_stored_with_the_experts_on_the_wrong_axis_is_refused(
    family: str, tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """Ergo's hub checkpoints store the router [H, E]; one stored [E, H] (as every other family) is
    refused before any weight is read, with one line naming the tensor and the axis."""
    key, axis = ROUTER_AXIS[family]
    src = tmp_path / "src"
    shutil.copytree(tiny(family), src)
    tensors = load_file(src / "model.safetensors")
    name = key.format(L=1)
    assert tensors[name].shape[axis] == 8 != tensors[name].shape[1 - axis]
    tensors[name] = tensors[name].T.contiguous()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    line = _one_error_line(cli("score", str(src), "-o", str(tmp_path / "s.json")))
    assert name in line and f"along axis {axis}" in line


# --- Ergo: a transposed router, non-gated experts with their own output norm ------------------------------


def ergo_reference(path: Path, tokens: Any) -> dict[int, torch.Tensor]:
    """Per MoE layer, the (E, 3, 3) float64 moments over the non-padding routed pairs, with
    f_j(x) = RMSNorm(relu(x @ up[j])² @ down[j]) · norm[j] recomputed by hand (modeling_ergo.py: the
    per-expert output norm comes before the routing weight); also checks Σ g f against the module."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    seen: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        if not hasattr(layer.mlp, "experts"):
            continue
        store: dict[str, torch.Tensor] = {}
        seen[i] = store

        def pre(m: Any, args: Any, store: dict[str, torch.Tensor] = store) -> None:
            store["hidden"], store["index"], store["weights"] = (a.detach().clone() for a in args[:3])

        def post(m: Any, args: Any, out: Any, store: dict[str, torch.Tensor] = store) -> None:
            store["actual"] = out.detach().clone()

        handles += [layer.mlp.experts.register_forward_pre_hook(pre), layer.mlp.experts.register_forward_hook(post)]
    with torch.no_grad():
        model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    for h in handles:
        h.remove()

    valid = tokens.attention_mask.reshape(-1).bool()
    moments = {}
    for i, s in seen.items():
        experts = model.model.layers[i].mlp.experts
        up, down = experts.up_proj.detach().double(), experts.down_proj.detach().double()  # (E, H, I), (E, I, H)
        scale, eps = experts.post_expert_norm.weight.detach().double(), experts.post_expert_norm.eps
        index, weights, hidden = s["index"], s["weights"], s["hidden"].double()
        n = up.shape[0]
        rebuilt = torch.zeros(hidden.shape, dtype=torch.float64)
        a = torch.zeros(n, 3, 3, dtype=torch.float64)
        for j in range(n):
            tok, slot = (index == j).nonzero(as_tuple=True)
            y = torch.relu(hidden[tok] @ up[j]) ** 2 @ down[j]
            f = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * scale[j]
            g = weights[tok, slot].double()
            rebuilt.index_add_(0, tok, g[:, None] * f)
            keep = valid[tok]
            g, norm = g[keep], f[keep].norm(dim=-1)
            for al in range(3):
                for be in range(3):
                    a[j, al, be] = (g**al * norm**be).sum()
        torch.testing.assert_close(rebuilt.float(), s["actual"], rtol=1e-5, atol=1e-5, msg=f"layer {i}")
        moments[i] = a
    return moments


def test_ergo_calibration_equals_its_reference(tiny: Callable[..., Path]) -> None:
    from moeprune.calib.engine import calibrate

    path = tiny("ergo")
    tokens = token_batch()
    want = ergo_reference(path, tokens)
    assert sorted(want) == [1, 2]  # layer 0 is dense (num_dense_blocks)
    stats = calibrate(path, tokens, batch_size=2)
    assert sorted(stats.layers) == sorted(want)
    for i, ref in want.items():
        got = stats.layer(i)
        assert torch.equal(got[:, 0, 0], ref[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL, msg=f"layer {i}")
