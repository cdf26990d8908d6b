"""Calibration of blocks that run two expert sets themselves (JetMoE), against a reference of its own.

JetMoE's decoder layer has E MLP experts (``JetMoeMoE``) and E attention experts (``JetMoeMoA``: a
query and an output projection each), each set with its own top-k router, and both blocks call
their experts themselves on token rows sorted by expert: there is no experts module receiving
``(hidden, top_k_index, top_k_weights)`` for test_calib_reference.py's generic reference to hook.

The reference here runs the tiny checkpoint whole through transformers (float32) once over the
padded batch of test_calib_reference.py and records, per layer, only the inputs of each set: the
MLP block's input rows x, the attention block's router input rows, and the per-slot attention
outputs that ``reduce`` receives [T, k, d]. Routing and expert outputs are then recomputed here in
float64 from the checkpoint's weights: logits = x W_r^T, the top-k ids and softmax(top-k logits) as
gates; MLP f_j(x) = W_out[j] (silu(a) * b) with (a, b) = W_in[j] x; attention expert f_j = W_out[j] o
for the slot's attention output o. The reference itself is proven by rebuilding each block's actual
output (Σ_s g_s f_{j_s} + bias). ``calibrate`` (layer by layer) must give the same nine moments with
set s's expert j at id s·E + j, and a statistics criterion must prune the same number from each set,
ranked within the set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from test_calib_reference import ATOL, RTOL, token_batch


def _jetmoe_reference(path: Path) -> tuple[int, int, int, dict[int, torch.Tensor]]:
    """(E, top-k, non-padding tokens, {layer: (2E, 3, 3) float64 moments}) from the full model."""
    from transformers import AutoModelForCausalLM

    tokens = token_batch()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.config.activation_function == "silu"
    n, k = model.config.num_local_experts, model.config.num_experts_per_tok
    store: dict[int, dict[str, torch.Tensor]] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        rec: dict[str, torch.Tensor] = {}
        store[i] = rec

        def mlp_hook(m, args, out, rec=rec):  # type: ignore[no-untyped-def]
            rec["mlp_in"], rec["mlp_out"] = args[0].detach().clone(), out.detach().clone()

        def attn_router_hook(m, args, out, rec=rec):  # type: ignore[no-untyped-def]
            if "attn_x" not in rec:
                rec["attn_x"] = args[0].detach().clone()

        moa = layer.self_attention.experts
        original_reduce = moa.reduce

        def reduce(layer_input, topo_info, rec=rec, original_reduce=original_reduce):  # type: ignore[no-untyped-def]
            out = original_reduce(layer_input, topo_info)
            rec["attn_o"], rec["attn_out"] = layer_input.detach().clone(), out.detach().clone()
            return out

        moa.reduce = reduce
        handles += [layer.mlp.register_forward_hook(mlp_hook), moa.router.register_forward_hook(attn_router_hook)]
    with torch.no_grad():
        model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    for h in handles:
        h.remove()

    valid = tokens.attention_mask.reshape(-1).bool()
    moments: dict[int, torch.Tensor] = {}
    torch.set_grad_enabled(False)  # restored below
    for i, layer in enumerate(model.model.layers):
        rec, mom = store[i], torch.zeros(2 * n, 3, 3, dtype=torch.float64)
        for s in (0, 1):
            block = layer.mlp if s == 0 else layer.self_attention.experts
            x = (rec["mlp_in"] if s == 0 else rec["attn_x"]).reshape(-1, block.input_size).double()  # (T, H)
            logits = x @ block.router.layer.weight.double().T  # (T, E)
            top, ids = logits.topk(k, dim=1)
            gates = torch.softmax(top, dim=1)  # (T, k)
            w_in, w_out = block.input_linear.weight.double(), block.output_linear.weight.double()
            f = torch.zeros(x.shape[0], k, x.shape[1], dtype=torch.float64)  # (T, k, H)
            for t in range(x.shape[0]):
                for slot in range(k):
                    j = int(ids[t, slot])
                    if s == 0:
                        a, b = (w_in[j] @ x[t]).chunk(2)
                        f[t, slot] = w_out[j] @ (F.silu(a) * b)
                    else:
                        f[t, slot] = w_out[j] @ rec["attn_o"].reshape(x.shape[0], k, -1)[t, slot].double()
            rebuilt = (gates.unsqueeze(-1) * f).sum(dim=1) + block.bias.double()
            actual = rec["mlp_out"] if s == 0 else rec["attn_out"]
            torch.testing.assert_close(rebuilt.float(), actual.reshape(x.shape[0], -1), rtol=1e-5, atol=1e-6)
            norm = f.norm(dim=-1)  # (T, k)
            for a in range(3):
                for b in range(3):
                    mom[:, a, b].index_add_(0, s * n + ids[valid].reshape(-1), (gates**a * norm**b)[valid].reshape(-1))
        moments[i] = mom
    torch.set_grad_enabled(True)
    return n, k, int(valid.sum()), moments


def test_jetmoe_calibration_equals_the_full_model_reference(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from moeprune.scoring.stats import RoutingStats

    src = tiny("jetmoe")
    n, k, n_valid, ref = _jetmoe_reference(src)
    tokens, data = token_batch(), tmp_path / "tokens.safetensors"
    save_file({"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}, str(data))
    args = ("--samples", str(tokens.n_samples), "--seq-len", str(tokens.input_ids.shape[1]), "--batch-size", "2")
    r = cli("calibrate", str(src), "--data", str(data), *args, "--dtype", "float32", "-o", str(tmp_path / "stats"))
    assert r.code == 0, r
    stats = RoutingStats.load(tmp_path / "stats")
    assert sorted(stats.layers) == sorted(ref) and stats.n_experts == 2 * n
    for i, want in ref.items():
        got = stats.layer(i)  # (2E, 3, 3)
        for s in (0, 1):  # every valid token picks k experts in each set
            assert int(got[s * n : (s + 1) * n, 0, 0].sum()) == k * n_valid, f"layer {i}, set {s}"
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")

    # a statistics criterion removes the same number from each set, each ranked within its set
    out = tmp_path / "out"
    r = cli(
        "prune", str(src), "--stats", str(tmp_path / "stats"), "--criterion", "man", "--ratio", "0.25", "-o", str(out)
    )
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())["layers"]
    per_set = n // 4
    for i, want in ref.items():
        man = [float(want[j, 0, 1] / want[j, 0, 0]) if want[j, 0, 0] > 0 else 0.0 for j in range(2 * n)]
        pruned = []
        for s in (0, 1):
            ids = range(s * n, (s + 1) * n)
            pruned += sorted(sorted(ids, key=lambda j: (man[j], j))[:per_set])
        assert plan[str(i)]["pruned"] == pruned, f"layer {i}"
    assert json.loads((out / "config.json").read_text())["num_local_experts"] == n - per_set
    r = cli("verify", str(src), str(out))
    assert r.code == 0 and r.out.startswith("OK:"), r


# --- arguments the forward builds between layers (Inkling2's attention residuals) ------------------


def test_stacked_layer_inputs_are_replayed_and_equal_the_full_model_reference(
    tiny: Callable[..., Path], tmp_path: Path
) -> None:
    """Inkling2 stacks the inputs of its block-boundary layers into ``block_states`` between layers. With
    a boundary at every layer, layer 2 reads the inputs of layers 0 and 1: the capture recognises the
    stack (`Stacked`), the engine rebuilds it from the real inputs (kept in the activation cache, here
    on disk), and the moments equal test_calib_reference.py's full-model reference. Before, the
    stubs' values were replayed: layer 2's moments were off by up to 110."""
    from moeprune.arch import FAMILIES
    from moeprune.calib.engine import calibrate
    from test_calib_reference import build_reference

    text = {**FAMILIES["inkling2"].tiny["text_config"], "n_layers_per_attn_res_block": 1}  # boundary at every layer
    src = tiny("inkling2", overrides={"text_config": text})
    ref = build_reference(src, "inkling2", token_batch())
    stats = calibrate(src, token_batch(), batch_size=2, out=tmp_path / "stats")
    assert sorted(stats.layers) == sorted(ref.layers) == [0, 1, 2]
    for i, layer in ref.layers.items():
        got, want = stats.layer(i), layer.moments(ref.n_experts)
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


def test_only_a_stack_of_earlier_layer_inputs_is_replayed() -> None:
    import pytest

    from moeprune.calib.skeleton import Stacked, _fingerprint, _stacked
    from moeprune.errors import InputError

    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 5, 8, generator=gen) for _ in range(3)]  # layers 0, 1, 2's inputs (B, L, H)
    prints = [_fingerprint(h) for h in inputs]

    def stacked(value: Any) -> Stacked:
        return _stacked(value, prints, inputs.__getitem__, 3, "x")

    assert stacked(torch.stack([inputs[0], inputs[2]], dim=-2)) == Stacked((0, 2), 2)
    assert stacked(torch.stack([inputs[1]], dim=0)) == Stacked((1,), 0)
    late = inputs[1].clone()
    late[-1, -1, -1] += 1  # the same first values (fingerprint), not the same tensor
    for value in (inputs[1] * 2, torch.stack([inputs[0], late], dim=-2), inputs[1], [inputs[0]]):
        with pytest.raises(InputError, match="layer 3: the model computes its argument 'x' from earlier layers"):
            stacked(value)


def test_refused_families_say_to_prune_by_the_weights() -> None:
    from moeprune.arch import FAMILIES

    for name in ("ernie4_5_vl_moe", "inkling2_loop"):
        assert "--criterion aimer" in FAMILIES[name].calibration_blocker, name
