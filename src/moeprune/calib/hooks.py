"""The routed-token observer: per-expert moments from the routing the model really applies.

For a standard MoE block, transformers calls ``experts(hidden [T, H], top_k_index [T, k],
top_k_weights [T, k])`` with the model's own selection (after selection biases and group limits)
and the weights it multiplies the expert outputs by (after renormalisation and scaling). The
observer replaces that call: it calls the experts module itself with every (token, slot) pair as
a row of its own, routed to that slot's expert j alone with weight 1 (one call per chunk of
``PAIRS_PER_CALL`` pairs), which gives f_j(x) on exactly the routed rows (before gating, with the
family's own activation, layout and biases); it accumulates Σ g^α ‖f‖^β over the non-padding rows
and returns Σ_j g_j f_j — the module's output — so the layer runs once and experts see only their
routed tokens.

For routers that scale the expert input (Llama 4), the experts module receives no routing: the
observer reads the router's scores and logits (the same top-k the router takes) and computes f_j on
the unscaled input from the experts' transposed fused weights, with g = the sigmoid score; the
model's own forward is left as it is.

For blocks that run their experts themselves on token rows sorted by expert (JetMoE,
`SortedGroups`), the observer hooks each expert set's router (the pairs' tokens, gates and group
sizes) and the module that computes the experts' outputs on those rows (f_j before gating), and
accumulates set s's expert j as id s·E + j; the model's forward is left as it is.
"""

from __future__ import annotations

from typing import Any

import torch

from moeprune.arch.spec import ScaledInput, SortedGroups

PAIRS_PER_CALL = 1 << 14
"""(token, expert) pairs per experts-module call: bounds the observer's extra memory (pairs x H)."""
SHARDS = 8
"""Calibration shards: disjoint slices of the calibration windows (in order), each with moments of its
own beside the totals, so that selections can be resampled without re-running the model."""


def window_shards(mask: torch.Tensor, first: int, rank: int, world: int, n_windows: int) -> torch.Tensor:
    """(T,) shard of every token row of a batch: ``mask`` (b, L) holds this rank's windows
    ``first .. first + b - 1``; rank r of ``world`` has the global windows r, r + world, ...; window
    w of ``n_windows`` belongs to shard ``w * S // n_windows`` (S = min(SHARDS, n_windows))."""
    count, length = mask.shape
    window = rank + world * torch.arange(first, first + count, dtype=torch.int64)
    return (window * min(SHARDS, n_windows) // max(1, n_windows)).repeat_interleave(length)


class Moments:
    """Float64 accumulators ``A[j, α, β] = Σ g^α ‖f‖^β`` for one MoE layer."""

    def __init__(self, n_experts: int, device: torch.device | str = "cpu", n_shards: int = 0):
        self.a = torch.zeros(n_experts, 3, 3, dtype=torch.float64, device=device)
        self.shards = torch.zeros(n_shards, n_experts, 3, 3, dtype=torch.float64, device=device)
        """(S, E, 3, 3): the same sums per calibration shard (filled where ``add*`` get ``shard``)."""
        self.sharded = False

    def _add_shards(self, index: torch.Tensor, prod: torch.Tensor) -> None:
        if self.shards.device != prod.device:
            self.shards = self.shards.to(prod.device)
        self.shards.view(-1, 3, 3).index_add_(0, index.to(prod.device), prod)
        self.sharded = True

    def add(self, j: int, g: torch.Tensor, norm: torch.Tensor, shard: torch.Tensor | None = None) -> None:
        g, norm = g.to(torch.float64), norm.to(torch.float64)
        gp = torch.stack([torch.ones_like(g), g, g * g])  # (3, n)
        fp = torch.stack([torch.ones_like(norm), norm, norm * norm])  # (3, n)
        self.a[j] += gp @ fp.T
        if shard is not None and self.shards.shape[0]:
            self._add_shards(shard * self.a.shape[0] + j, gp.T.unsqueeze(2) * fp.T.unsqueeze(1))

    def add_pairs(
        self, j: torch.Tensor, g: torch.Tensor, norm: torch.Tensor, shard: torch.Tensor | None = None
    ) -> None:
        """Add (expert ``j[n]``, gate ``g[n]``, norm ``norm[n]``) for n pairs at once; with ``shard[n]``
        also into the pair's calibration shard."""
        g, norm = g.to(torch.float64), norm.to(torch.float64)
        gp = torch.stack([torch.ones_like(g), g, g * g], dim=1)  # (n, 3)
        fp = torch.stack([torch.ones_like(norm), norm, norm * norm], dim=1)  # (n, 3)
        prod = gp.unsqueeze(2) * fp.unsqueeze(1)  # (n, 3, 3)
        self.a.index_add_(0, j, prod)  # into (E, 3, 3)
        if shard is not None and self.shards.shape[0]:
            self._add_shards(shard.to(j.device) * self.a.shape[0] + j, prod)  # into (S·E, 3, 3)


class Observer:
    """Attach to one decoder layer's MoE block; ``valid`` is the (T,) non-padding token mask of
    the batch being run and ``shard`` the (T,) calibration shard of each token row (`window_shards`),
    both set by the engine before each call."""

    def __init__(
        self,
        layer: torch.nn.Module,
        experts_path: str,
        router_path: str,
        n_experts: int,
        scaled_input: ScaledInput | None,
        zero_weight_slots: bool = False,
        sorted_groups: SortedGroups | None = None,
    ):
        self.moments = Moments(n_experts, n_shards=SHARDS)
        self.zero_weight_slots = zero_weight_slots
        """Pairs of weight 0 are slots on rows that are not routed experts (`RouterRows`): not counted."""
        self.valid: torch.Tensor | None = None
        self.shard: torch.Tensor | None = None
        self.experts = layer.get_submodule(experts_path)
        self._handles: list[Any] = []
        if sorted_groups is not None:
            self._attach_sorted(layer, sorted_groups)
        elif scaled_input is not None:
            self._attach_scaled(layer.get_submodule(router_path), scaled_input)
        else:
            self._original = self.experts.forward
            self.experts.forward = self._observed  # instance attribute: hooks and callers unchanged

    def detach(self) -> None:
        if "forward" in self.experts.__dict__:
            del self.experts.forward
        for h in self._handles:
            h.remove()
        self._handles.clear()

    shards_of = staticmethod(window_shards)

    def shard_moments(self, world: int = 1) -> torch.Tensor | None:
        """(S, E, 3, 3) moments per calibration shard on the CPU, summed over data-parallel ranks;
        None when the engine gave no shards."""
        if not self.moments.sharded:
            return None
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(self.moments.shards)
        return self.moments.shards.cpu()

    def _mask(self, n: int, device: torch.device) -> torch.Tensor:
        if self.valid is None:
            return torch.ones(n, dtype=torch.bool, device=device)
        return self.valid.to(device)

    # -- standard routing: (hidden, top_k_index, top_k_weights) ---------------------------------

    def _observed(
        self, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        if self.moments.a.device != hidden.device:
            self.moments.a = self.moments.a.to(hidden.device)
        shape = hidden.shape  # DBRX passes (B, L, H) beside a (B·L, k) routing; rows are tokens either way
        hidden = hidden.reshape(-1, shape[-1])
        valid = self._mask(hidden.shape[0], hidden.device)
        n_tok, k = top_k_index.shape
        out = torch.empty_like(hidden)
        step = max(1, PAIRS_PER_CALL // k)
        # One call per chunk of tokens: every (token, slot) pair is a row routed to its expert alone
        # with weight 1, so the experts module runs each expert once, on its routed rows only.
        for lo in range(0, n_tok, step):
            hi = min(n_tok, lo + step)
            ids = top_k_index[lo:hi].reshape(-1, 1)  # (n·k, 1), row t·k + s
            g = top_k_weights[lo:hi].reshape(-1)  # (n·k,)
            unit = torch.ones(ids.shape, dtype=top_k_weights.dtype, device=hidden.device)
            x = hidden[lo:hi].repeat_interleave(k, dim=0)  # (n·k, H)
            f = self._original(x, ids, unit, *args, **kwargs).reshape(x.shape[0], -1)  # (n·k, H): f_j(x)
            out[lo:hi] = (f * g.unsqueeze(-1).to(f.dtype)).view(hi - lo, k, -1).sum(dim=1).to(out.dtype)
            keep = valid[lo:hi].repeat_interleave(k)  # (n·k,)
            if self.zero_weight_slots:  # LongCat-Flash: identity-expert slots arrive as weight-0 pairs
                keep = keep & (g != 0)
            if keep.any():
                shard = None if self.shard is None else self.shard[lo:hi].repeat_interleave(k)[keep.cpu()]
                norm = torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32)  # (n·k,), no float copy of f
                self.moments.add_pairs(ids[keep, 0], g[keep], norm[keep], shard)
        return out.view(shape)

    # -- scaled-input routing (Llama 4) -----------------------------------------------------------

    def _attach_scaled(self, router: torch.nn.Module, names: ScaledInput) -> None:
        def on_router(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            scores, logits = output
            x = args[0].reshape(-1, args[0].shape[-1])
            if self.moments.a.device != x.device:
                self.moments.a = self.moments.a.to(x.device)
            k = int(getattr(module, "top_k", 1))
            idx = torch.topk(logits, k, dim=1).indices  # the router's own selection
            valid = self._mask(x.shape[0], x.device)
            w_in: torch.Tensor = getattr(self.experts, names.gate_up)  # (E, H, 2I)
            w_out: torch.Tensor = getattr(self.experts, names.down)  # (E, I, H)
            act: Any = getattr(self.experts, names.act)
            for j in idx.unique().tolist():
                rows = (idx == j).any(dim=1).nonzero(as_tuple=True)[0]
                rows = rows[valid[rows]]
                if rows.numel() == 0:
                    continue
                gate, up = (x[rows] @ w_in[j]).chunk(2, dim=-1)
                f = (up * act(gate)) @ w_out[j]
                shard = None if self.shard is None else self.shard[rows.cpu()]
                self.moments.add(j, scores[rows, j], f.float().norm(dim=-1), shard)

        self._handles.append(router.register_forward_hook(on_router))

    # -- experts run by the block itself on rows sorted by expert (JetMoE) ------------------------

    def _attach_sorted(self, layer: torch.nn.Module, names: SortedGroups) -> None:
        for s, (router_path, output_path) in enumerate(zip(names.routers, names.outputs, strict=True)):
            routing: dict[str, Any] = {}

            def on_router(module: torch.nn.Module, args: tuple[Any, ...], output: Any, routing: Any = routing) -> None:
                routing["token"], routing["gate"] = output[names.token], output[names.gate]
                routing["sizes"] = output[names.sizes]

            def on_output(
                module: torch.nn.Module, args: tuple[Any, ...], output: Any, routing: Any = routing, s: int = s
            ) -> None:
                f = output.reshape(output.shape[0], -1)  # (P, H): f_j of every pair, grouped by expert
                if self.moments.a.device != f.device:
                    self.moments.a = self.moments.a.to(f.device)
                sizes = torch.as_tensor(routing.pop("sizes"), dtype=torch.int64)
                token, gate = routing.pop("token").to(f.device), routing.pop("gate")
                if f.shape[0] != token.shape[0] or int(sizes.sum()) != f.shape[0]:
                    raise RuntimeError(f"expert set {s}: the expert outputs do not match the router's pairs")
                j = s * len(sizes) + torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(f.device)
                keep = (
                    torch.ones_like(token, dtype=torch.bool) if self.valid is None else self.valid.to(f.device)[token]
                )
                if keep.any():
                    shard = None if self.shard is None else self.shard[token.cpu()][keep.cpu()]
                    norm = torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32)
                    self.moments.add_pairs(j[keep], gate[keep], norm[keep], shard)

            self._handles.append(layer.get_submodule(router_path).register_forward_hook(on_router))
            self._handles.append(layer.get_submodule(output_path).register_forward_hook(on_output))
