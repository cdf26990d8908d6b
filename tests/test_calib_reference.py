"""An independent reference for the calibration engine: the nine moments, recomputed by hand.

For a set of families (and routing variants) the tiny random checkpoint is loaded whole with
transformers (float32) and run ONCE over a padded token batch. Hooks on every MoE layer's experts
module record what the model really routes: the hidden rows [T, H], the model's own selection
``top_k_index`` [T, k] and the weights it applies ``top_k_weights`` [T, k] (Llama 4: the block input
and the router's sigmoid scores, since its router scales the expert *input*). Expert outputs f_j are
then recomputed here, in float64, from the experts module's parameters with each family's formula
(standard fused SwiGLU; GPT-OSS's transposed, interleaved, clamped GLU with biases; Llama 4's
transposed SwiGLU). Padding rows (attention_mask 0, in the flattened [B·L] order the experts module
sees) are dropped, and ``A[α][β] = Σ g^α ‖f‖^β`` is accumulated per (layer, expert) in float64.

What the tests prove:

- the reference itself is right: Σ_j g_j f_j over the routed experts rebuilds the experts module's
  actual output for every token (Llama 4: Σ_j f_j(s_j x) rebuilds its experts' summed output);
- ``calibrate`` returns the same nine moments (rtol 1e-5, atol 1e-6), on exactly the MoE layers,
  never counts padding (Σ_j N_j = k × non-padding tokens in every layer), applies the attention
  mask (the batch is padded on the right AND on the left, so ignoring the mask would move the valid
  tokens' hidden states), and is unchanged by what the padded positions hold or by the batch size;
- the unified criteria (frequency, man, msan, reap) on the engine's statistics equal hand
  computations from the reference's per-token (g, ‖f‖) lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
import torch.nn.functional as F

from moeprune.arch import FAMILIES

if TYPE_CHECKING:
    from moeprune.calib.data import TokenBatch

# (test id, family, overrides for the tiny config)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("mixtral", "mixtral", {}),
    ("qwen3_moe-norm", "qwen3_moe", {}),  # the tiny default: norm_topk_prob=True
    ("qwen3_moe-nonorm", "qwen3_moe", {"norm_topk_prob": False}),
    ("olmoe", "olmoe", {}),
    ("deepseek_v3", "deepseek_v3", {}),  # n_group 2, topk_group 1, correction bias, × scaling factor
    ("gpt_oss", "gpt_oss", {}),
    ("ernie4_5_moe", "ernie4_5_moe", {}),
    ("llama4_text", "llama4_text", {}),
    ("qwen2_moe", "qwen2_moe", {}),
    ("deepseek_v2-grouped", "deepseek_v2", {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1}),
    ("granitemoe", "granitemoe", {}),
    ("minimax_m2", "minimax_m2", {}),
    ("lfm2_moe", "lfm2_moe", {}),
]
IDS = [c[0] for c in CASES]
BY_ID = {c[0]: c for c in CASES}

SCALED = {name for name, family in FAMILIES.items() if family.scaled_input is not None}
"""Families whose router score multiplies the expert input (Llama 4): the reference rebuilds those
from the router's output and the experts' input, not from routing arguments."""

N_SEQ, SEQ_LEN, N_RIGHT, N_LEFT = 3, 24, 7, 5
RTOL, ATOL = 1e-5, 1e-6


def token_batch(pad_fill: int | None = None) -> TokenBatch:
    """3 sequences of 24 tokens: the second ends with 7 padding positions, the third starts with 5.

    Left padding sits before valid tokens, so an engine that ignored the attention mask would
    change their hidden states (by O(1) in these models), not only count extra rows."""
    from moeprune.calib.data import TokenBatch

    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, 128, (N_SEQ, SEQ_LEN), generator=gen, dtype=torch.int64)  # (N, L)
    mask = torch.ones(N_SEQ, SEQ_LEN, dtype=torch.int64)  # (N, L)
    mask[1, -N_RIGHT:] = 0
    mask[2, :N_LEFT] = 0
    if pad_fill is not None:
        ids[mask == 0] = pad_fill
    return TokenBatch(ids, mask, source="test", seed=0, seq_len=SEQ_LEN)


# --- the reference -------------------------------------------------------------------------------


@dataclass
class LayerRef:
    """One MoE layer, as the model routed it, with the reference's expert outputs."""

    top_k: int
    pairs_expert: torch.Tensor  # (P,) int64, non-padding routed pairs only
    pairs_token: torch.Tensor  # (P,) int64, flat token index in [0, B·L)
    gate: torch.Tensor  # (P,) float64, the g the model applies
    norm: torch.Tensor  # (P,) float64, ‖f_j(x)‖₂ from the reference
    rebuilt: torch.Tensor  # (T, H) float64, Σ_j g_j f_j (Llama 4: Σ_j f_j(s_j x)), all tokens
    actual: torch.Tensor  # (T, H) float32, what the experts module returned (Llama 4: summed over E)

    def moments(self, n_experts: int) -> torch.Tensor:
        """(E, 3, 3) float64: A[α][β] = Σ g^α ‖f‖^β over the routed pairs."""
        out = torch.zeros(n_experts, 3, 3, dtype=torch.float64)
        for a in range(3):
            for b in range(3):
                out[:, a, b].index_add_(0, self.pairs_expert, self.gate**a * self.norm**b)
        return out


@dataclass
class Reference:
    path: Path
    family: str
    n_experts: int
    n_valid: int
    layers: dict[int, LayerRef]


def expert_output(family: str, mod: Any, j: int, x: torch.Tensor) -> torch.Tensor:
    """f_j(x) in float64 from the experts module's parameters. x: (n, H) -> (n, H)."""
    x = x.double()
    w_gu = mod.gate_up_proj[j].detach().double()
    w_down = mod.down_proj[j].detach().double()
    if family == "gpt_oss":
        # transposed (H, 2I) with interleaved columns: even = gate, odd = up (modeling_gpt_oss.py)
        gate_up = x @ w_gu + mod.gate_up_proj_bias[j].detach().double()  # (n, 2I)
        gate, up = gate_up[:, ::2], gate_up[:, 1::2]
        gate = gate.clamp(max=mod.limit)
        up = up.clamp(min=-mod.limit, max=mod.limit)
        glu = gate * torch.sigmoid(gate * mod.alpha)
        return ((up + 1) * glu) @ w_down + mod.down_proj_bias[j].detach().double()  # (I, H) down
    if family in SCALED:
        gate, up = (x @ w_gu).chunk(2, dim=-1)  # transposed (H, 2I)
        return (up * F.silu(gate)) @ w_down  # (I, H)
    if getattr(mod, "is_transposed", False):  # Aria: stored (H, 2I) / (I, H), as grouped_mm reads them
        gate, up = (x @ w_gu).chunk(2, dim=-1)
        return (mod.act_fn(gate) * up) @ w_down
    gate, up = (x @ w_gu.T).chunk(2, dim=-1)  # (2I, H): first I rows gate, next I up
    if hasattr(mod, "limit_after_act"):  # Step-3.7: act(gate) and up clamped to the layer's limit (0 or None: none)
        gate = mod.act_fn(gate)
        if mod.limit is not None:
            gate, up = gate.clamp(max=mod.limit), up.clamp(min=-mod.limit, max=mod.limit)
        return (gate * up) @ w_down.T
    if hasattr(mod, "swiglu_alpha"):  # MiniMax-M3: GPT-OSS's clamped gate (not interleaved), (up + 1) * glu
        gate, up = gate.clamp(max=mod.swiglu_limit), up.clamp(min=-mod.swiglu_limit, max=mod.swiglu_limit)
        return ((up + 1.0) * (gate * torch.sigmoid(gate * mod.swiglu_alpha))) @ w_down.T
    if hasattr(mod, "swiglu_limit") and not hasattr(mod, "act_fn"):  # GLM-5-Next: clamped SwiGLU (_apply_gate)
        gate, up = gate.clamp(max=mod.swiglu_limit), up.clamp(min=-mod.swiglu_limit, max=mod.swiglu_limit)
        return (F.silu(gate) * up) @ w_down.T
    if hasattr(mod.act_fn, "gate_softcap"):  # Inkling2: c_g tanh(gate / c_g) sigmoid(gate) c_u tanh(up / c_u)
        cg, cu = mod.act_fn.gate_softcap.softcap, mod.act_fn.up_softcap.softcap
        return (cg * torch.tanh(gate / cg) * torch.sigmoid(gate) * cu * torch.tanh(up / cu)) @ w_down.T
    f = (mod.act_fn(gate) * up) @ w_down.T  # (H, I)
    if getattr(mod, "has_post_expert_norm", False):  # Muse Spark: x (1 + w), then RMS-normalised, per expert
        f = f * (1.0 + mod.post_expert_norm.weight.detach().double())
        f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + mod.post_expert_norm.eps)
    return f


def routed_layer(
    hidden: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor,
    actual: torch.Tensor,
    output: Callable[[int, torch.Tensor], torch.Tensor],
    scaled: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> LayerRef:
    """The `LayerRef` of one MoE layer from the routing it applied: ``hidden`` (T, H), ``index`` and
    ``weights`` (T, k), the non-padding tokens ``valid`` (T,), what the experts module returned
    ``actual``, and f_j by hand (``output(j, x)``, float64). The layer's output is rebuilt as
    Σ g_j f_j(x), or Σ ``scaled(j, x, g)`` where the score scales the expert input (Llama 4)."""
    rebuilt = torch.zeros(hidden.shape[0], hidden.shape[1], dtype=torch.float64)
    experts_l, tokens_l, gates_l, norms_l = [], [], [], []
    for j in index.unique().tolist():
        tok, slot = (index == j).nonzero(as_tuple=True)
        g = weights[tok, slot].double()  # (n_j,)
        f = output(j, hidden[tok])  # (n_j, H)
        rebuilt.index_add_(0, tok, g[:, None] * f if scaled is None else scaled(j, hidden[tok], weights[tok, slot]))
        keep = valid[tok]
        experts_l.append(torch.full((int(keep.sum()),), j, dtype=torch.int64))
        tokens_l.append(tok[keep])
        gates_l.append(g[keep])
        norms_l.append(f[keep].norm(dim=-1))
    return LayerRef(
        top_k=index.shape[1],
        pairs_expert=torch.cat(experts_l),
        pairs_token=torch.cat(tokens_l),
        gate=torch.cat(gates_l),
        norm=torch.cat(norms_l),
        rebuilt=rebuilt,
        actual=actual,
    )


def _split_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, index, weights) whatever the argument names (GPT-OSS: router_indices, routing_weights)."""
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    hidden = args[0] if args else kwargs["hidden_states"]
    rest = [t for t in tensors if t is not hidden]
    index = next(t for t in rest if not t.is_floating_point())
    weights = next(t for t in rest if t.is_floating_point())
    return hidden, index, weights


def _moe_modules(model: Any, family: str) -> dict[int, Any]:
    """Decoder layer index -> its experts module (Llama 4: its MoE block)."""
    found = {}
    from moeprune.loading import decoder_layers

    for i, layer in enumerate(decoder_layers(model)):  # Gemma 4: model.language_model.layers
        for _, sub in layer.named_modules():
            if family in SCALED:
                if hasattr(sub, "router") and hasattr(sub, "experts") and hasattr(sub, "shared_expert"):
                    found[i] = sub
            elif isinstance(getattr(sub, "gate_up_proj", None), torch.nn.Parameter) and hasattr(sub, "down_proj"):
                found[i] = sub  # fused experts (MiniMax-M3's dense and shared MLPs have a gate_up_proj Linear)
    return found


def build_reference(path: Path, family: str, tokens: Any) -> Reference:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    # multimodal models without a causal-LM class (Qwen3-VL-MoE): their ...ForConditionalGeneration
    causal = AutoConfig.from_pretrained(path).model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    auto = AutoModelForCausalLM if causal else AutoModelForImageTextToText
    if FAMILIES[family].language_model:  # Qwen3-Omni: a thinker-talker class; its thinker is the language model
        from transformers import AutoModelForMultimodalLM

        auto = AutoModelForMultimodalLM
    model = auto.from_pretrained(path, dtype=torch.float32).eval()
    if FAMILIES[family].language_model:
        model = model.get_submodule(FAMILIES[family].language_model)
    mods = _moe_modules(model, family)
    assert mods, f"{family}: no MoE layer found"
    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i in mods}
    handles = []
    for i, mod in mods.items():
        store = captured[i]
        if family in SCALED:

            def block_pre(m, args, kwargs, store=store):  # type: ignore[no-untyped-def]
                h = args[0] if args else kwargs["hidden_states"]
                store["hidden"] = h.detach().reshape(-1, h.shape[-1]).clone()

            def router_post(m, args, out, store=store):  # type: ignore[no-untyped-def]
                store["scores"], store["logits"] = out[0].detach().clone(), out[1].detach().clone()

            def experts_post(m, args, out, store=store):  # type: ignore[no-untyped-def]
                store["routed_in"] = args[0].detach().clone()
                store["actual"] = out.detach().clone()

            handles += [
                mod.register_forward_pre_hook(block_pre, with_kwargs=True),
                mod.router.register_forward_hook(router_post),
                mod.experts.register_forward_hook(experts_post),
            ]
        else:

            def pre(m, args, kwargs, store=store):  # type: ignore[no-untyped-def]
                hidden, index, weights = _split_args(args, kwargs)
                store["hidden"], store["index"], store["weights"] = (
                    hidden.detach().clone(),
                    index.detach().clone(),
                    weights.detach().clone(),
                )

            def post(m, args, out, store=store):  # type: ignore[no-untyped-def]
                store["actual"] = (out[0] if isinstance(out, tuple) else out).detach().clone()

            handles += [mod.register_forward_pre_hook(pre, with_kwargs=True), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
    finally:
        for h in handles:
            h.remove()

    valid = tokens.attention_mask.reshape(-1).bool()  # (B·L,), the experts' flattened token order
    layers = {}
    with torch.no_grad():
        for i, mod in mods.items():
            c = captured[i]
            assert "actual" in c, f"{family}: layer {i} MoE module never ran"
            experts = mod.experts if family in SCALED else mod
            hidden = c["hidden"]  # (T, H)
            n_tok = hidden.shape[0]
            assert n_tok == valid.numel()
            if family in SCALED:
                scores, logits = c["scores"], c["logits"]  # (T, E) each
                k = model.config.get_text_config().num_experts_per_tok
                index = torch.topk(logits, k, dim=1).indices  # the router's own selection
                weights = scores.gather(1, index)  # (T, k) sigmoid score of the selected experts
                n_exp = scores.shape[1]
                routed_in = c["routed_in"].reshape(n_exp, n_tok, -1)  # (E, T, H) = x · s_j
                torch.testing.assert_close(routed_in, hidden.unsqueeze(0) * scores.T.unsqueeze(-1))
                actual = c["actual"].reshape(n_exp, n_tok, -1).sum(0)  # (T, H)
            else:
                index, weights, actual = c["index"], c["weights"], c["actual"]
            output = partial(expert_output, family, experts)
            scaled = (lambda j, x, g, f=output: f(j, x * g[:, None])) if family in SCALED else None  # f_j(s_j x)
            layers[i] = routed_layer(hidden, index, weights, valid, actual, output, scaled)
    some = next(iter(mods.values()))
    n_experts = (some.experts if family in SCALED else some).num_experts
    return Reference(path, family, int(n_experts), int(valid.sum()), layers)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tiny: Callable[..., Path]) -> Callable[[str], Reference]:
    cache: dict[str, Reference] = {}

    def get(case: str) -> Reference:
        if case not in cache:
            _, family, overrides = BY_ID[case]
            path = tiny(family, overrides=overrides) if overrides else tiny(family)  # no overrides: shared build
            cache[case] = build_reference(path, family, token_batch())
        return cache[case]

    return get


@pytest.fixture(scope="module")
def engine_stats(reference: Callable[[str], Reference]) -> Callable[[str], Any]:
    from moeprune.calib.engine import calibrate

    cache: dict[str, Any] = {}

    def get(case: str) -> Any:
        if case not in cache:
            ref = reference(case)
            cache[case] = calibrate(ref.path, token_batch(), batch_size=2)  # batches of 2 + 1 windows
        return cache[case]

    return get


# --- the reference checks itself -----------------------------------------------------------------


@pytest.mark.parametrize("case", IDS)
def test_reference_rebuilds_the_experts_output(case: str, reference: Callable[[str], Reference]) -> None:
    """Σ_j g_j f_j over the routed experts (reference f, model's g) is what the experts module returned."""
    ref = reference(case)
    for i, layer in ref.layers.items():
        torch.testing.assert_close(layer.rebuilt.float(), layer.actual, rtol=1e-5, atol=1e-6, msg=f"layer {i}")
        assert layer.rebuilt.abs().max() > 1e-3  # not trivially zero
        # non-padding routed pairs: k per valid token, each token once per slot
        assert layer.pairs_expert.numel() == layer.top_k * ref.n_valid
        assert int(layer.moments(ref.n_experts)[:, 0, 0].sum()) == layer.top_k * ref.n_valid
        assert (layer.gate > 0).all() and (layer.norm > 0).all()


# --- the engine against the reference ------------------------------------------------------------


@pytest.mark.parametrize("case", IDS)
def test_engine_moments_equal_the_reference(
    case: str, reference: Callable[[str], Reference], engine_stats: Callable[[str], Any]
) -> None:
    ref, stats = reference(case), engine_stats(case)
    assert sorted(stats.layers) == sorted(ref.layers)
    assert stats.n_experts == ref.n_experts
    for i, layer in ref.layers.items():
        got = stats.layer(i)  # (E, 3, 3)
        assert got.dtype == torch.float64
        want = layer.moments(ref.n_experts)
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j {got[:, 0, 0]} != {want[:, 0, 0]}"
        assert int(got[:, 0, 0].sum()) == layer.top_k * ref.n_valid  # padding never counted
        for a in range(3):
            for b in range(3):
                torch.testing.assert_close(
                    got[:, a, b], want[:, a, b], rtol=RTOL, atol=ATOL, msg=f"layer {i} A[{a}][{b}]"
                )


def test_engine_ignores_what_padding_holds(tiny: Callable[..., Path]) -> None:
    """Other token ids under attention_mask 0 change nothing (and batch size does not matter)."""
    from moeprune.calib.engine import calibrate

    path = tiny("mixtral")
    a = calibrate(path, token_batch(pad_fill=0), batch_size=3)
    b = calibrate(path, token_batch(pad_fill=77), batch_size=1)
    assert a.layers == b.layers
    torch.testing.assert_close(a.moments, b.moments, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", IDS)
@pytest.mark.parametrize("criterion", ["frequency", "man", "msan", "reap"])
def test_criteria_equal_hand_computation(
    case: str, criterion: str, reference: Callable[[str], Reference], engine_stats: Callable[[str], Any]
) -> None:
    from moeprune.scoring.unified import NAMED

    ref, stats = reference(case), engine_stats(case)
    scores = NAMED[criterion].scores(stats)
    for i, layer in ref.layers.items():
        want = []
        for j in range(ref.n_experts):
            sel = layer.pairs_expert == j
            g, n = layer.gate[sel].tolist(), layer.norm[sel].tolist()
            if criterion == "frequency":
                want.append(float(len(n)))
            elif not n:
                want.append(0.0)  # mean over no token: 0, pruned first
            elif criterion == "man":
                want.append(sum(n) / len(n))
            elif criterion == "msan":
                want.append(sum(v * v for v in n) / len(n))
            else:
                want.append(sum(gi * ni for gi, ni in zip(g, n, strict=True)) / len(n))
        torch.testing.assert_close(
            torch.tensor(scores[i], dtype=torch.float64),
            torch.tensor(want, dtype=torch.float64),
            rtol=RTOL,
            atol=ATOL,
            msg=f"{criterion}, layer {i}",
        )
