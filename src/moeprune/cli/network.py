"""The commands that run the network: calibrate, verify, eval."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from moeprune.cli.common import DEVICE_OPTION, DTYPE_OPTION, POSITIVE, Progress, note
from moeprune.verify import TOLERANCE


@click.command()
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
            note(
                ctx,
                f"{tokens.n_samples} sequences x {tokens.seq_len} tokens ({tokens.n_tokens} counted) "
                f"from {tokens.source}; sha256 {tokens.sha256()[:12]}",
            )

    if rank == 0:
        note(ctx, f"reading {source} (and the tokenizer) ...")
    bars = Progress(ctx.obj["quiet"] or rank != 0)
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
        note(ctx, f"wrote {output} ({len(stats.layers)} MoE layers, {stats.n_experts} experts each)")


@click.command()
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

    note(ctx, "loading both checkpoints in float32 on CPU ...")
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


@click.command("eval")
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
    from moeprune.eval.record import EVAL, save_eval
    from moeprune.io.paths import check_new, check_output

    task_list = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if source is None and not task_list:
        raise InputError("nothing to evaluate: give --ppl SOURCE and/or --tasks a,b")
    inputs = [p for p in (model, base, source, include_path) if p is not None and Path(p).exists()]
    beside = Path(model).exists() and output.resolve() == (Path(model) / EVAL).resolve()
    if beside:  # the one file eval may add to a model folder: where `moeprune report` reads it
        inputs.remove(model)
    check_new(check_output(output, inputs), overwrite, "file")
    if ctx.obj["quiet"]:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    bars = Progress(ctx.obj["quiet"])
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
    save_eval(output, result, overwrite=overwrite)
    data = result["data"]
    if data is not None:
        note(
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
    note(ctx, f"wrote {output}")
