"""The commands around pruning runs: report, demo, make-tiny, families."""

from __future__ import annotations

from pathlib import Path

import click

from moeprune.cli.common import Progress, note


@click.command()
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
    note(ctx, f"wrote {made}, {made.with_suffix('.md')} and {made.parent / (made.stem + '_files')}/")


@click.command()
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
    bars = Progress(ctx.obj["quiet"])

    def say(text: str) -> None:
        bars.close()  # a finished stage's bars end before the next stage's line
        note(ctx, text)

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
    note(ctx, f"\nwrote {output}/ (results.md, results.json, report.html, runs/, stats/)")


@click.command("make-tiny")
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
    note(ctx, f"wrote a tiny random {family} checkpoint to {directory}")


@click.command()
def families() -> None:
    """List the supported model families."""
    from moeprune.arch.families import FAMILIES

    for name, fam in sorted(FAMILIES.items()):
        click.echo(f"{name:16} {fam.notes}")
