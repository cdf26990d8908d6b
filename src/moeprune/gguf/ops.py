"""The GGUF operations behind ``moeprune inspect|score|prune model.gguf``: the same flow as for
safetensors (open and check -> score -> select with `moeprune.plan` -> rewrite), the same
criteria (`moeprune.scoring.criteria`) and the same plan files, on GGUF files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeprune.errors import InputError
from moeprune.gguf.match import check_plan, check_source, source_of
from moeprune.gguf.model import GgufModel, open_gguf
from moeprune.gguf.moments import expert_bytes, gguf_moments
from moeprune.gguf.write import check_targets, output_paths, write_pruned
from moeprune.io.paths import check_new, check_output
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED, PrunePlan, check_feasible, make_plan, n_to_prune
from moeprune.progress import Progress
from moeprune.scoring.criteria import WEIGHT_CRITERIA, WeightMoments, score_layers

if TYPE_CHECKING:
    from moeprune.api import Scores


def inspect(model: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture, MoE blocks, experts, top-k, quantization types and sizes (reads no tensor data)."""
    m = open_gguf(model)
    expert = sum(m.tensors[n].nbytes for layer in m.layers for n in layer.experts)
    return {
        "path": str(m.path),
        "format": "gguf",
        "family": m.arch.arch,
        "layers": m.n_blocks,
        "moe_layers": [layer.index for layer in m.layers],
        "experts": m.n_experts,
        "expert_count_key": m.arch.count_key(),
        "top_k": m.top_k,
        "groups": None if m.groups is None else {"n_group": m.groups.n_group, "topk_group": m.groups.topk_group},
        "layout": "gguf",
        "dtypes": sorted({m.tensors[n].qtype.name for layer in m.layers for n in layer.experts}),
        "total_bytes": m.total_bytes,
        "routed_expert_bytes": expert,
        "bytes_per_expert": expert // (m.n_experts * len(m.layers)),
        "files": [p.name for p in m.paths],
    }


def _criteria(criterion: str, stats: Any) -> list[str]:
    if stats is not None:
        raise InputError("--stats is for Hugging Face checkpoints; score there and pass --scores or --plan to the GGUF")
    if criterion == "all":
        return list(WEIGHT_CRITERIA)
    if criterion not in WEIGHT_CRITERIA:
        raise InputError(
            f"criterion {criterion!r} cannot run on a GGUF file (weight criteria: {', '.join(WEIGHT_CRITERIA)}); "
            "for calibration criteria prune the Hugging Face checkpoint and apply its plan with --plan"
        )
    return [criterion]


def _score(m: GgufModel, names: list[str], seed: int, progress: Progress | None) -> dict[str, Scores]:
    from moeprune.api import Scores

    if any(WEIGHT_CRITERIA[n].needs_weights for n in names):
        total = expert_bytes(m)
        moments = gguf_moments(m, None if progress is None else lambda b: progress("score", b, total))
    else:
        moments = {layer.index: WeightMoments.zeros(m.n_experts) for layer in m.layers}
    return {n: Scores(n, WEIGHT_CRITERIA[n].direction, score_layers(moments, n, seed)) for n in names}


def score(
    model: str | os.PathLike[str],
    criterion: str = "aimer",
    *,
    seed: int = 0,
    stats: Any = None,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Scores]:
    """Scores of every routed expert of a GGUF model (weight criteria, on dequantized values);
    with ``output``, also written there as scores.json with the model they came from."""
    m = open_gguf(model)
    names = _criteria(criterion, stats)
    if output is not None:
        check_new(check_output(output, m.paths), overwrite, "file")
    result = _score(m, names, seed, progress)
    if output is not None:
        from moeprune.scores import save_scores

        save_scores(Path(output), result, source_of(m, str(model)), overwrite=overwrite)
    return result


def pruned_overlap(
    model: str | os.PathLike[str], results: dict[str, Scores], ratio: float
) -> dict[str, dict[str, float]]:
    """Mean Jaccard index, over MoE blocks, of the sets each pair of criteria prunes at ``ratio``."""
    m = open_gguf(model)
    p = n_to_prune(m.n_experts, ratio)
    plans = {n: make_plan(n, s.direction, s.layers, m.n_experts, m.top_k, p, m.groups) for n, s in results.items()}
    return {
        a: {
            b: sum(
                len(set(pa.layers[i].pruned) & set(pb.layers[i].pruned))
                / len(set(pa.layers[i].pruned) | set(pb.layers[i].pruned))
                for i in pa.layers
            )
            / len(pa.layers)
            for b, pb in plans.items()
        }
        for a, pa in plans.items()
    }


def make_gguf_plan(
    m: GgufModel,
    criterion: str = "aimer",
    *,
    ratio: float | None = None,
    n_prune: int | None = None,
    seed: int = 0,
    scores: Any = None,
    plan: str | os.PathLike[str] | PrunePlan | None = None,
    progress: Progress | None = None,
) -> PrunePlan:
    """The plan for ``m``: given (checked to fit), from given scores (a `Scores`, a loaded
    scores.json or its path; its recorded source checked), or scored now."""
    if plan is not None:
        if scores is not None or ratio is not None or n_prune is not None:
            raise InputError("--plan fixes the experts to remove; give no --scores, --ratio or --prune with it")
        if isinstance(plan, PrunePlan):
            return check_plan(m, plan, "the plan")
        path = Path(plan)
        return check_plan(m, PrunePlan.load(path), path, path)
    p = n_to_prune(m.n_experts, ratio, n_prune)
    check_feasible(m.n_experts, m.top_k, p, m.groups)
    scores = _given_scores(m, scores, criterion)
    if scores is None:
        if criterion == "all":
            raise InputError(f"pruning needs one criterion ({', '.join(WEIGHT_CRITERIA)}); 'all' is for scoring only")
        scores = _score(m, _criteria(criterion, None), seed, progress)[criterion]
    want = [layer.index for layer in m.layers]
    if sorted(scores.layers) != want or any(len(s) != m.n_experts for s in scores.layers.values()):
        raise InputError(f"the scores do not match this GGUF ({len(want)} MoE blocks x {m.n_experts} experts)")
    if scores.direction not in (HIGHER_PRUNED, LOWER_PRUNED):
        raise InputError(f"unknown score direction {scores.direction!r}")
    made = make_plan(scores.criterion, scores.direction, scores.layers, m.n_experts, m.top_k, p, m.groups)
    made.ratio = ratio if ratio is not None else made.ratio
    return made


def _given_scores(m: GgufModel, given: Any, criterion: str | None) -> Scores | None:
    from moeprune.api import Scores

    if given is None or isinstance(given, Scores):
        return given
    from moeprune.scores import ScoresFile, load_scores

    found = given if isinstance(given, ScoresFile) else load_scores(Path(given))
    check_source(m, found.source, "these scores")
    if criterion in found.scores:
        return found.scores[criterion]
    if len(found.scores) > 1:
        raise InputError(f"the scores hold several criteria ({', '.join(found.scores)}); choose one with --criterion")
    return next(iter(found.scores.values()))


def prune(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    criterion: str = "aimer",
    *,
    ratio: float | None = None,
    n_prune: int | None = None,
    seed: int = 0,
    scores: Any = None,
    plan: str | os.PathLike[str] | PrunePlan | None = None,
    stats: Any = None,
    overwrite: bool = False,
    max_shard_size: Any = None,
    dry_run: bool = False,
    fsync: bool = False,
    progress: Progress | None = None,
) -> PrunePlan:
    """Prune a GGUF model into ``out`` (a .gguf file; a split model keeps its shards, named after
    ``out``). Returns the plan; with ``dry_run`` nothing is written. ``max_shard_size`` is
    accepted for the CLI's sake and unused: the output keeps the input's tensor-to-shard split."""
    if stats is not None:
        _criteria(criterion, stats)
    m = open_gguf(model)
    targets = output_paths(m, Path(out))
    if not dry_run:
        check_targets(m, targets, overwrite)  # before scoring: fail fast
    made = make_gguf_plan(
        m, criterion, ratio=ratio, n_prune=n_prune, seed=seed, scores=scores, plan=plan, progress=progress
    )
    made.source = source_of(m, str(model))
    if dry_run:
        return made
    kept = {i: lp.kept for i, lp in made.layers.items()}
    n_kept = len(next(iter(kept.values())))
    total = sum((t.nbytes // m.n_experts * n_kept if t.name in m.roles else t.nbytes) for t in m.tensors.values())
    note = made.to_json()
    write_pruned(
        m,
        targets,
        kept,
        note,
        overwrite=overwrite,
        fsync=fsync,
        progress=None if progress is None else lambda b: progress("write", b, total),
    )
    return made
