"""The ``moeprune`` command line: inspect | score | calibrate | prune | verify | eval | report |
demo | make-tiny | families.

The CLI owns all printing: results on stdout, progress bars and notes on stderr, and one
``error: ...`` line with a non-zero exit code (2 for bad input or arguments, 1 when verification
fails, 130 when interrupted) instead of a traceback.
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import click

from moeprune.errors import MoePruneError
from moeprune.verify import TOLERANCE

RATIO_HELP = (
    "Fraction of routed experts removed from every MoE layer. Per layer, p = the integer nearest "
    "to ratio x experts, exact halves rounded down (e.g. 0.25 of 8 -> 2, 0.3 of 5 -> 1)."
)
GOALS = ("task-agnostic", "task-specific")
GOAL_HELP = (
    "Without --criterion, use what arXiv 2606.15716's selection principle recommends: task-agnostic -> man "
    "(aimer without --stats), task-specific -> gean (calibrate on the target domain first)."
)


class _Positive(click.FloatRange):
    """A finite number > 0 (click's ranges let NaN through: it fails every comparison)."""

    name = "positive number"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = _Positive()

DEVICE_OPTION = click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (the model runs there)."
)
DTYPE_OPTION = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Compute dtype; auto = float32 on CPU (bf16 matmuls are slow without CPU support), bfloat16 on CUDA.",
)
"""Options of every command that runs the network (calibrate, eval), declared once."""

BYTE_STAGES = {"score", "write"}
"""Progress stages counted in bytes; the others count tokens (calibration layers, evaluation) or,
for these, things."""
COUNT_STAGES = {"models": "model"}


class _Progress:
    """tqdm bars keyed by stage, fed by the library's progress callback (from any thread: prune
    scores on one while it writes on another)."""

    def __init__(self, quiet: bool, live: bool | None = None):
        # no bars with -q, nor when stderr is not a terminal (no escape codes in logs)
        self.quiet = quiet or not (sys.stderr.isatty() if live is None else live)
        self.bars: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if self.quiet:
            return
        with self.lock:
            self._update(stage, advance, total)

    def _update(self, stage: str, advance: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(
                total=total,
                desc=stage,
                unit="B" if stage in BYTE_STAGES else COUNT_STAGES.get(stage, "tok"),
                unit_scale=stage not in COUNT_STAGES,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        bar.update(advance)
        if bar.total and bar.n >= bar.total:  # done: stop its clock (a later pass of the stage gets a new bar)
            bar.close()
            del self.bars[stage]

    def close(self) -> None:
        with self.lock:
            for bar in self.bars.values():
                bar.close()
            self.bars.clear()


def _note(ctx: click.Context, text: str) -> None:
    if not ctx.obj.get("quiet"):
        click.echo(text, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes.")
@click.option("-v", "--verbose", is_flag=True, help="More detail (per-layer plans).")
@click.version_option(package_name="moeprune")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """One-shot expert pruning for Mixture-of-Experts language models.

    MODEL is a local checkpoint folder or a Hugging Face hub id.
    """
    ctx.obj = {"quiet": quiet, "verbose": verbose}


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(model: str, as_json: bool) -> None:
    """Family, MoE layers, experts, top-k, layout and sizes (reads no weights)."""
    from moeprune.api import inspect as run
    from moeprune.gguf import inspect as run_gguf
    from moeprune.gguf import is_gguf

    info = run_gguf(model) if is_gguf(model) else run(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    groups = info["groups"]
    rows = [
        ("family", info["family"]),
        ("layers", f"{info['layers']} ({len(info['moe_layers'])} MoE: {_ranges(info['moe_layers'])})"),
        ("routed experts", f"{info['experts']} per MoE layer (config key {info['expert_count_key']})"),
        ("top-k", info["top_k"]),
        ("groups", "none" if groups is None else f"n_group {groups['n_group']}, topk_group {groups['topk_group']}"),
        ("layout", f"{info['layout']}, {', '.join(info['dtypes'])}"),
        (
            "size",
            f"{_human(info['total_bytes'])}, routed experts {_human(info['routed_expert_bytes'])} "
            f"({_human(info['bytes_per_expert'])} each)",
        ),
        ("files", f"{len(info['files'])} {info.get('format', 'safetensors')} file(s)"),
    ]
    for k, v in rows:
        click.echo(f"{k:>15}: {v}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def _ranges(ids: list[int]) -> str:
    parts, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


@cli.command()
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
        from moeprune.gguf import pruned_overlap, score as run  # type: ignore[assignment]  # noqa: I001
    from moeprune.scoring.recommend import choose

    if stability and stats is None:
        raise InputError("--stability needs --stats: the STATS folder of a calibration")
    criterion, advice = choose(criterion, goal, stats is not None)
    if advice:
        _note(ctx, advice)
    bars = _Progress(ctx.obj["quiet"])
    try:
        result = run(model, criterion, seed=seed, stats=stats, output=output, overwrite=overwrite, progress=bars)
    finally:
        bars.close()
    _note(ctx, f"wrote {output} ({', '.join(result)}; {len(next(iter(result.values())).layers)} MoE layers)")
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


@cli.command()
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
            _note(ctx, advice)
    bars = _Progress(ctx.obj["quiet"])
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
        _note(ctx, f"{head}\nwrote {output}")


@cli.command()
@click.argument("model")
@click.option(
    "--data",
    "source",
    required=True,
    help="Text file or folder, .jsonl/.json/.parquet, a Hugging Face dataset id, or token ids (.npy, "
    ".safetensors with input_ids [N, L]) used exactly as given.",
)
@click.option("--samples", default=1024, show_default=True, type=click.IntRange(min=1), help="Sequences to pack.")
@click.option(
    "--seq-len", default=2048, show_default=True, type=click.IntRange(min=1), help="Tokens per packed sequence."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the document shuffle.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in records.")
@click.option("--data-config", default=None, help="Hugging Face dataset configuration (e.g. en for allenai/c4).")
@click.option("--split", default="train", show_default=True, help="Hugging Face dataset split.")
@DEVICE_OPTION
@DTYPE_OPTION
@click.option(
    "--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Sequences per forward call."
)
@click.option(
    "--offload-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the activation cache here (on disk) instead of in the STATS folder.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTPUT from its last finished layer.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option(
    "-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="STATS folder to write."
)
@click.pass_context
def calibrate(
    ctx: click.Context,
    model: str,
    source: str,
    samples: int,
    seq_len: int,
    seed: int,
    text_field: str,
    data_config: str | None,
    split: str,
    device: str,
    dtype: str,
    batch_size: int,
    offload_dir: Path | None,
    resume: bool,
    overwrite: bool,
    output: Path,
) -> None:
    """Collect routing statistics layer by layer (one pass serves every statistics criterion)."""
    from moeprune.calib.data import TokenBatch
    from moeprune.calib.engine import distributed_rank
    from moeprune.calib.run import calibrate as run
    from moeprune.errors import Interrupted

    rank = distributed_rank()

    def told(tokens: TokenBatch) -> None:
        if rank == 0:
            _note(
                ctx,
                f"{tokens.n_samples} sequences x {tokens.seq_len} tokens ({tokens.n_tokens} counted) "
                f"from {tokens.source}; sha256 {tokens.sha256()[:12]}",
            )

    if rank == 0:
        _note(ctx, f"reading {source} (and the tokenizer) ...")
    bars = _Progress(ctx.obj["quiet"] or rank != 0)
    try:
        stats = run(
            model,
            source,
            output=output,
            samples=samples,
            seq_len=seq_len,
            seed=seed,
            text_field=text_field,
            data_config=data_config,
            split=split,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            offload_dir=offload_dir,
            resume=resume,
            overwrite=overwrite,
            progress=bars,
            on_tokens=told,
        )
    except Interrupted as e:
        if "--resume" in str(e):  # say the exact command
            argv = [a for a in sys.argv[1:] if a != "--overwrite"]
            again = shlex.join(argv + ([] if "--resume" in argv else ["--resume"]))
            raise Interrupted(f"{e}: moeprune {again}") from None
        raise
    finally:
        bars.close()
    if rank == 0:
        _note(ctx, f"wrote {output} ({len(stats.layers)} MoE layers, {stats.n_experts} experts each)")


@cli.command()
@click.argument("model")
@click.argument("pruned")
@click.option(
    "--seq-len",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tokens per sequence of the test batch.",
)
@click.option(
    "--batch-size",
    "--batch",
    "batch",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sequences in the test batch.",
)
@click.option(
    "--tolerance",
    default=TOLERANCE,
    show_default=True,
    type=POSITIVE,
    help="Largest |logit difference| accepted.",
)
@click.pass_context
def verify(ctx: click.Context, model: str, pruned: str, seq_len: int, batch: int, tolerance: float) -> None:
    """Check PRUNED equals MODEL with the removed experts masked (float32, CPU)."""
    from moeprune.errors import VerificationError
    from moeprune.verify import verify as run

    _note(ctx, "loading both checkpoints in float32 on CPU ...")
    if ctx.obj["quiet"]:  # -q: no progress bars, transformers' "Loading weights" included
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    r = run(model, pruned, batch=batch, seq_len=seq_len, tolerance=tolerance)
    line = (
        f"max |Δlogit| = {r.max_abs_diff:.3g} over {r.tokens} tokens (logits up to {r.max_abs_logit:.3g}; "
        f"{r.layers_masked} MoE layers masked; tolerance {r.tolerance:g})"
    )
    if not r.ok:
        raise VerificationError(f"MISMATCH: {line}")
    click.echo(f"OK: {line}")


@cli.command("eval")
@click.argument("model")
@click.option("--base", help="The original checkpoint (folder or hub id): adds its perplexity, KL and agreement.")
@click.option(
    "--ppl",
    "source",
    help="Perplexity data: any --data that calibrate accepts (text, .jsonl/.json/.parquet, a Hugging Face "
    "dataset id, token ids .npy/.safetensors used exactly as given). Text is packed in source order.",
)
@click.option(
    "--tokens",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tokens to evaluate (text sources).",
)
@click.option(
    "--seq-len",
    type=click.IntRange(min=2),
    help="Tokens per window [default: 2048, or max_position_embeddings if smaller].",
)
@click.option(
    "--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Windows per forward call."
)
@DEVICE_OPTION
@DTYPE_OPTION
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in records.")
@click.option("--data-config", default=None, help="Hugging Face dataset configuration (e.g. wikitext-2-raw-v1).")
@click.option("--split", default="test", show_default=True, help="Hugging Face dataset split.")
@click.option("--shuffle", is_flag=True, help="Take documents in seeded random order instead of source order.")
@click.option("--seed", default=0, show_default=True, help="Seed of --shuffle.")
@click.option("--tasks", help="Comma-separated lm-evaluation-harness tasks (needs moeprune[eval]).")
@click.option("--limit", type=POSITIVE, help="lm-eval: examples per task (a fraction if < 1).")
@click.option(
    "--include-path", type=click.Path(exists=True, file_okay=False, path_type=Path), help="lm-eval: extra task folder."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="eval.json to write."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.pass_context
def eval_(
    ctx: click.Context,
    model: str,
    base: str | None,
    source: str | None,
    tokens: int,
    seq_len: int | None,
    batch_size: int,
    device: str,
    dtype: str,
    text_field: str,
    data_config: str | None,
    split: str,
    shuffle: bool,
    seed: int,
    tasks: str | None,
    limit: float | None,
    include_path: Path | None,
    output: Path,
    overwrite: bool,
) -> None:
    """Perplexity of MODEL (and --base), KL(base ‖ MODEL), top-1 agreement, lm-eval tasks -> eval.json."""
    from moeprune.errors import InputError
    from moeprune.eval.perplexity import evaluate_lm
    from moeprune.io.paths import check_new, check_output, write_file

    task_list = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if source is None and not task_list:
        raise InputError("nothing to evaluate: give --ppl SOURCE and/or --tasks a,b")
    inputs = [p for p in (model, base, source, include_path) if p is not None and Path(p).exists()]
    check_new(check_output(output, inputs), overwrite, "file")
    if ctx.obj["quiet"]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    bars = _Progress(ctx.obj["quiet"])
    try:
        result = evaluate_lm(
            model,
            base=base,
            source=source,
            tokens=tokens,
            seq_len=seq_len,
            seed=seed,
            shuffle=shuffle,
            text_field=text_field,
            dataset_config=data_config,
            split=split,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            tasks=task_list,
            limit=limit,
            include_path=include_path,
            progress=bars,
        )
    finally:
        bars.close()
    write_file(output, json.dumps(result, indent=1) + "\n", overwrite)
    data = result["data"]
    if data is not None:
        _note(
            ctx,
            f"{data['n_sequences']} sequences x {data['seq_len']} tokens ({data['n_positions']} positions scored) "
            f"from {data['source']}; sha256 {data['sha256'][:12]}",
        )

    def num(x: Any, spec: str = ".4f") -> str:
        return "-" if x is None else format(x, spec)

    ppl = result["perplexity"]
    if ppl is not None:
        click.echo(f"{'':>16} {'pruned':>12} {'base':>12} {'ratio':>8}")
        click.echo(f"{'perplexity':>16} {num(ppl['pruned']):>12} {num(ppl['base']):>12} {num(ppl['ratio']):>8}")
        if result["kl_mean"] is not None:
            click.echo(f"{'KL(base‖pruned)':>16} {num(result['kl_mean'], '.4g'):>12} nats/token")
            click.echo(f"{'top-1 agreement':>16} {num(result['top1_agreement']):>12}")
    if result["tasks"]:
        click.echo(f"{'task':>16} {'metric':<10} {'pruned':>8} {'base':>8} {'recovery':>8}")
    for task, r in result["tasks"].items():
        click.echo(
            f"{task:>16} {r['metric'] or '-':<10} {num(r['score']):>8} {num(r['base']):>8} {num(r['recovery']):>8}"
        )
    _note(ctx, f"wrote {output}")


@cli.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="HTML file to write; the markdown summary (.md) and its PNG figures (<name>_files/) go beside it.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing report (HTML, .md and figures).")
@click.option(
    "--stats",
    type=click.Path(path_type=Path),
    help="STATS folder the runs were scored from: adds the selection stability of their statistics criteria.",
)
@click.pass_context
def report(ctx: click.Context, dirs: tuple[Path, ...], output: Path, overwrite: bool, stats: Path | None) -> None:
    """Draw a report of one pruning run, or several to compare.

    Each DIR is a folder written by `moeprune prune` (moeprune_plan.json, scores.csv, and eval.json
    when evaluated). Needs matplotlib: pip install 'moeprune[report]'.
    """
    from moeprune.io.paths import check_new, check_output
    from moeprune.report import build_report

    for path, kind in (
        (output, "file"),
        (output.with_suffix(".md"), "file"),
        (output.parent / f"{output.stem}_files", "folder"),
    ):
        if check_output(path, dirs).exists() or path.is_symlink():  # a missing folder is created
            check_new(path, overwrite, kind)
    made = build_report(list(dirs), output, stats=stats)
    _note(ctx, f"wrote {made}, {made.with_suffix('.md')} and {made.parent / (made.stem + '_files')}/")


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("moeprune-demo"),
    show_default=True,
    help="Folder to write (stats, scores, pruned models, results, report).",
)
@click.option("--ratios", default="0.25,0.5", show_default=True, help="Comma-separated pruning ratios.")
@click.option("--calib-tokens", default=32_768, show_default=True, help="Calibration tokens.")
@click.option("--eval-tokens", default=32_768, show_default=True, help="Held-out tokens for perplexity and KL.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT, once the new one is complete.")
@click.pass_context
def demo(ctx: click.Context, output: Path, ratios: str, calib_tokens: int, eval_tokens: int, overwrite: bool) -> None:
    """Inspect, calibrate, score with every criterion, prune, verify and evaluate the bundled model.

    The bundled model is a small Qwen3-MoE (16 experts, top-2) trained on the Python standard
    library; calibration and held-out text are stdlib files it never saw. Prints the criterion x
    ratio table (held-out perplexity, KL to the original, top-1 agreement) and writes the report.
    """
    from moeprune.demo import results_table, run_demo
    from moeprune.errors import InputError

    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise InputError("the demo needs transformers: pip install 'moeprune[calib,report]'") from None

    try:
        fractions = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise InputError(f"--ratios {ratios!r}: expected comma-separated numbers like 0.25,0.5") from None
    if not fractions or not all(0 < r < 1 for r in fractions):
        raise InputError(f"--ratios {ratios!r}: every ratio must be between 0 and 1")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    bars = _Progress(ctx.obj["quiet"])

    def say(text: str) -> None:
        bars.close()  # a finished stage's bars end before the next stage's line
        _note(ctx, text)

    try:
        result = run_demo(
            output,
            ratios=fractions,
            calib_tokens=calib_tokens,
            eval_tokens=eval_tokens,
            overwrite=overwrite,
            say=say,
            progress=bars,
        )
    finally:
        bars.close()
    worst = max(r["max_abs_logit_diff"] for r in result["runs"])
    click.echo(
        f"\nheld-out perplexity, KL(original ‖ pruned) and top-1 agreement on {result['heldout']['positions']:,} "
        f"positions; every pruned model verified (max |Δlogit| {worst:.2g}); {result['seconds']:.0f} s in all\n"
    )
    click.echo(results_table(result))
    _note(ctx, f"\nwrote {output}/ (results.md, results.json, report.html, runs/, stats/)")


@cli.command("make-tiny")
@click.argument("family")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="Dtype of the saved weights.",
)
@click.option("--max-shard-size", default="5GB", show_default=True, help="Largest shard (5GB, 500MB, 2GiB).")
@click.pass_context
def make_tiny(ctx: click.Context, family: str, directory: Path, seed: int, dtype: str, max_shard_size: str) -> None:
    """Write a tiny random checkpoint of FAMILY (needs transformers) to DIRECTORY, in the family's
    real on-disk key layout, with the config keys serving engines read. FAMILY is one of
    `moeprune families`."""
    from moeprune.tiny import make_tiny as run

    run(family, directory, seed=seed, dtype=dtype, max_shard_size=max_shard_size)
    _note(ctx, f"wrote a tiny random {family} checkpoint to {directory}")


@cli.command()
def families() -> None:
    """List the supported model families."""
    from moeprune.arch.families import FAMILIES

    for name, fam in sorted(FAMILIES.items()):
        click.echo(f"{name:16} {fam.notes}")


SHORT_HELP = {
    "inspect": "Family, layers, experts, top-k, layout, sizes.",
    "score": "Score every routed expert -> scores.json.",
    "calibrate": "Routing statistics, layer by layer -> STATS.",
    "prune": "Remove the lowest-value experts -> checkpoint.",
    "verify": "Prove a pruned checkpoint equals the masked original.",
    "eval": "Perplexity, KL, top-1 agreement, lm-eval -> eval.json.",
    "report": "HTML + markdown report of pruning runs.",
    "demo": "The whole path on the bundled model.",
    "make-tiny": "A tiny random checkpoint of a family.",
    "families": "List the supported model families.",
}
"""One line per command for `moeprune --help` (the docstrings' first sentences are longer)."""
for _name, _text in SHORT_HELP.items():
    if _name in cli.commands:
        cli.commands[_name].short_help = _text


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    from moeprune.errors import Interrupted
    from moeprune.io.paths import STOP_SIGNALS

    for s in STOP_SIGNALS:
        if s != signal.SIGINT:
            signal.signal(s, _interrupt)
    try:
        cli.main(args=argv, prog_name="moeprune", standalone_mode=False)
    except Interrupted as e:
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    except MoePruneError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing was written", err=True)
        sys.exit(130)
    except OSError as e:
        click.echo(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
        sys.exit(2)
