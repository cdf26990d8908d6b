"""The commands that stream a checkpoint without running it: inspect, score, prune."""

from __future__ import annotations

import json
from pathlib import Path

import click

from moeprune.cli.common import GOAL_HELP, GOALS, RATIO_HELP, Progress, human, note, ranges
from moeprune.errors import MoePruneError


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Family, MoE layers, experts, top-k, layout and sizes (reads no weights)."""
    from moeprune.api import inspect as run
    from moeprune.gguf import is_gguf

    if is_gguf(model):  # GGUF files: moeprune.gguf's inspect (gguf-py imported only then)
        from moeprune.gguf.ops import inspect as run  # type: ignore[assignment]
    info = run(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    groups, sets = info["groups"], info.get("expert_sets")
    experts = f"{info['experts']} per MoE layer (config key {info['expert_count_key']})"
    grouping = "none" if groups is None else f"n_group {groups['n_group']}, topk_group {groups['topk_group']}"
    if sets:  # S sets counted once by the config: say so, not "n_group S"
        per_set = info["experts"] // sets
        experts = (
            f"{info['experts']} per MoE layer: {sets} sets of {per_set}, each with its own router "
            f"(config key {info['expert_count_key']} = {per_set})"
        )
        grouping = f"the {sets} expert sets (a plan removes as many from each)"
    rows = [
        ("family", info["family"]),
        ("layers", f"{info['layers']} ({len(info['moe_layers'])} MoE: {ranges(info['moe_layers'])})"),
        ("routed experts", experts),
        ("top-k", info["top_k"]),
        ("groups", grouping),
        ("layout", f"{info['layout']}, {', '.join(info['dtypes'])}"),
        (
            "size",
            f"{human(info['total_bytes'])}, routed experts {human(info['routed_expert_bytes'])} "
            f"({human(info['bytes_per_expert'])} each)",
        ),
        ("files", f"{len(info['files'])} {info.get('format', 'safetensors')} file(s)"),
    ]
    for k, v in rows:
        click.echo(f"{k:>15}: {v}")


@click.command()
@click.argument("model")
@click.option(
    "--criterion",
    "-c",
    help="aimer, magnitude, random; with --stats also frequency, seer, ean, reap, man, msan, gean, s022 or "
    "unified:b,α,β; or all (every criterion the inputs allow, and how much their pruned sets overlap). "
    "Default: the --goal's recommendation, else aimer.",
)
@click.option("--stats", type=click.Path(path_type=Path), help="STATS folder written by `moeprune calibrate`.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random criterion.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="scores.json to write."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("--goal", type=click.Choice(GOALS), help=GOAL_HELP)
@click.option(
    "--stability",
    is_flag=True,
    help="With --stats: also print how stable each statistics criterion's selection is when the calibration "
    "data is resampled (bootstrap and halves of its shards, at ratios 0.25 and 0.5).",
)
@click.pass_context
def score(
    ctx: click.Context,
    model: str,
    criterion: str | None,
    stats: Path | None,
    seed: int,
    output: Path,
    goal: str | None,
    stability: bool,
    overwrite: bool,
) -> None:
    """Score every routed expert (writes scores.json)."""
    from moeprune.api import pruned_overlap
    from moeprune.api import score as run
    from moeprune.errors import InputError
    from moeprune.gguf import is_gguf

    if is_gguf(model):  # GGUF files: moeprune.gguf, same signatures
        from moeprune.gguf.ops import pruned_overlap, score as run  # type: ignore[assignment]  # noqa: I001
    from moeprune.scoring.recommend import choose

    if stability and stats is None:
        raise InputError("--stability needs --stats: the STATS folder of a calibration")
    criterion, advice = choose(criterion, goal, stats is not None)
    if advice:
        note(ctx, advice)
    bars = Progress(ctx.obj["quiet"])
    try:
        result = run(model, criterion, seed=seed, stats=stats, output=output, overwrite=overwrite, progress=bars)
    finally:
        bars.close()
    note(ctx, f"wrote {output} ({', '.join(result)}; {len(next(iter(result.values())).layers)} MoE layers)")
    if criterion == "all":
        for ratio in (0.25, 0.5):
            try:
                table = pruned_overlap(model, result, ratio)
            except MoePruneError as e:
                click.echo(f"overlap at ratio {ratio}: not computed ({e})")
                continue
            names = list(table)
            click.echo(f"\noverlap of pruned sets at ratio {ratio} (mean Jaccard over MoE layers):")
            click.echo(" " * 11 + "".join(f"{n[:9]:>10}" for n in names))
            for a in names:
                click.echo(f"{a[:10]:>10} " + "".join(f"{table[a][b]:>10.2f}" for b in names))
    if stability and stats is not None:
        from moeprune.scoring.stability import model_stability

        click.echo("\n" + model_stability(model, stats, criterion))


@click.command()
@click.argument("model")
@click.option(
    "--criterion",
    "-c",
    help="aimer, magnitude, random; with --stats frequency, seer, ean, reap, man, msan, gean, s022, unified:b,α,β. "
    "Default: the --goal's recommendation, else aimer.",
)
@click.option("--goal", type=click.Choice(GOALS), help=GOAL_HELP)
@click.option("--stats", type=click.Path(path_type=Path), help="STATS folder written by `moeprune calibrate`.")
@click.option("--ratio", type=float, help=RATIO_HELP + " One of --ratio and --prune is required.")
@click.option(
    "--prune", "n_prune", type=click.IntRange(min=1), help="Experts removed per MoE layer (instead of --ratio)."
)
@click.option(
    "--scores",
    "scores_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use scores from this scores.json instead of scoring now.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random criterion.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the pruned checkpoint (must not exist unless --overwrite); for a GGUF model, the .gguf file.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="GGUF models: apply this moeprune_plan.json (e.g. chosen on the Hugging Face checkpoint).",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest output shard (5GB, 500MB, 2GiB).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT, once the new checkpoint is complete.")
@click.option(
    "--fsync",
    is_flag=True,
    help="Return only once the checkpoint is on disk (fsync every file and folder). Without it, as with cp, "
    "the complete folder is renamed into place and the OS writes it to disk in its own time.",
)
@click.pass_context
def prune(
    ctx: click.Context,
    model: str,
    criterion: str | None,
    goal: str | None,
    stats: Path | None,
    ratio: float | None,
    n_prune: int | None,
    scores_file: Path | None,
    plan_file: Path | None,
    seed: int,
    output: Path,
    max_shard_size: str,
    dry_run: bool,
    overwrite: bool,
    fsync: bool,
) -> None:
    """Remove the lowest-value routed experts from every MoE layer and write the checkpoint."""
    from moeprune.api import prune as run
    from moeprune.gguf import is_gguf
    from moeprune.scoring.recommend import choose

    if is_gguf(model):  # GGUF files: moeprune.gguf's prune, which also takes a plan
        from functools import partial

        from moeprune.gguf import prune as prune_gguf

        run = partial(prune_gguf, plan=plan_file)  # type: ignore[assignment]
    elif plan_file is not None:
        from moeprune.errors import InputError

        raise InputError("--plan applies a plan to a GGUF model; for a checkpoint folder use --scores")

    if scores_file is None:
        criterion, advice = choose(criterion, goal, stats is not None)
        if advice:
            note(ctx, advice)
    bars = Progress(ctx.obj["quiet"])
    try:
        made = run(
            model,
            output,
            criterion,
            ratio=ratio,
            n_prune=n_prune,
            seed=seed,
            scores=scores_file,
            stats=stats,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            dry_run=dry_run,
            fsync=fsync,
            progress=bars,
        )
    finally:
        bars.close()
    head = (
        f"{made.criterion} ({made.direction.replace('_', ' ')}): {made.n_pruned} of {made.n_experts} experts "
        f"removed in each of {len(made.layers)} MoE layers (effective ratio {made.n_pruned / made.n_experts:.4g})"
    )
    if dry_run or ctx.obj["verbose"]:
        click.echo(("dry run, nothing written. " if dry_run else "") + head)
        for i, lp in made.layers.items():
            click.echo(f"  layer {i}: prune {lp.pruned}")
    if not dry_run:
        note(ctx, f"{head}\nwrote {output}")
