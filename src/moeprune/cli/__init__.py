"""The ``moeprune`` command line: inspect | score | calibrate | prune | verify | eval | report |
demo | make-tiny | families.

The CLI owns all printing: results on stdout, progress bars and notes on stderr, and one
``error: ...`` line with a non-zero exit code (2 for bad input or arguments, 1 when verification
fails, 130 when interrupted) instead of a traceback. Each command parses its options, calls the
library and prints; the commands live in `checkpoint` (inspect, score, prune), `network`
(calibrate, verify, eval) and `tools` (report, demo, make-tiny, families).
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

import click

from moeprune.cli.checkpoint import inspect, prune, score
from moeprune.cli.common import Progress
from moeprune.cli.network import calibrate, eval_, verify
from moeprune.cli.tools import demo, families, make_tiny, report
from moeprune.errors import MoePruneError


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


for _command in (inspect, score, calibrate, prune, verify, eval_, report, demo, make_tiny, families):
    cli.add_command(_command)

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


__all__ = ["Progress", "cli", "main"]
