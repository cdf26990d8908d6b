"""Expert-id tables (hash routing): what pruning does to a table whose values are expert ids.

DeepSeek-V4's hash layers choose a token's k experts from a frozen table, ``tid2eid[token id]``
[vocab, k]; the router's scores only weight them: w_s = s(e_s) / sum_t s(e_t) (x the scaling
factor). After pruning, a slot may name a removed expert. The pruned model cannot say "this slot is
empty": its router gathers the score of every id in the row (an id >= K fails), and every gathered
score is positive. So the removed slots are re-routed, and `verify` applies the same re-routing to
the original as its masking of those layers.

The rule (`reroute`), per row:

1. slots naming kept experts keep them (renumbered 0..K-1);
2. the row's slots naming removed experts take, in slot order, the row's kept slots in turn
   (round robin): the token still runs only experts it was routed to, and each keeps a weight
   proportional to its score x its number of slots. This equals dropping the removed slots and
   renormalising over the kept ones exactly when the number of kept slots divides k (k = 2 with
   one slot removed, for instance); otherwise it is the nearest the table can express;
3. a row whose every expert is removed takes, in each slot, the next kept expert after the removed
   one in id order (wrapping around).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moeprune.errors import InputError

if TYPE_CHECKING:
    import torch


def reroute(table: torch.Tensor, kept: list[int], n_experts: int, name: str = "table") -> torch.Tensor:
    """``table`` [V, k] of original expert ids, with the experts of ``kept`` (ascending original
    ids) kept: the table of the pruned model, in the new numbering 0..len(kept)-1, same dtype."""
    import torch

    if table.dim() != 2 or table.is_floating_point() or table.dtype == torch.bool:
        raise InputError(
            f"{name!r}: an expert-id table must be a 2-D integer tensor, not {table.dtype} {list(table.shape)}"
        )
    if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= n_experts:
        raise InputError(f"{name!r}: the kept experts must be distinct ascending ids in 0..{n_experts - 1}")
    ids = table.to(torch.int64)  # (V, k)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_experts):
        raise InputError(f"{name!r}: holds expert ids outside 0..{n_experts - 1}")
    kept_t = torch.tensor(kept, dtype=torch.int64)
    new_of = torch.full((n_experts,), -1, dtype=torch.int64)
    new_of[kept_t] = torch.arange(len(kept))
    mapped = new_of[ids]  # (V, k); -1 for removed experts
    ok = mapped >= 0
    n_ok = ok.sum(dim=1, keepdim=True)  # (V, 1)
    order = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)  # kept slots first, in slot order
    kept_vals = mapped.gather(1, order)  # (V, k): the first n_ok entries are the row's kept experts
    rank = torch.cumsum((~ok).to(torch.int64), dim=1) - 1  # rank of a removed slot among the row's removed
    fill = kept_vals.gather(1, torch.remainder(rank.clamp(min=0), n_ok.clamp(min=1)))  # round robin
    out = torch.where(ok, mapped, fill)
    # rows with no kept expert: the next kept id after each removed id, wrapping around
    nxt = torch.searchsorted(kept_t, torch.arange(n_experts), right=True) % len(kept)  # (E,), new numbering
    out = torch.where(n_ok == 0, nxt[ids], out)
    return out.to(table.dtype)


def reroute_original(table: torch.Tensor, kept: list[int], n_experts: int) -> torch.Tensor:
    """`reroute` in the original numbering: the table that makes the original model route exactly
    as the pruned one (verify's masking of a table-routed layer)."""
    import torch

    return torch.tensor(kept, dtype=torch.int64)[reroute(table, kept, n_experts).to(torch.int64)].to(table.dtype)
