"""What every ``moeprune`` command shares: progress bars, notes, option types and declarations."""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import click

RATIO_HELP = (
    "Fraction of routed experts removed from every MoE layer. Per layer, p = the integer nearest "
    "to ratio x experts, exact halves rounded down (e.g. 0.25 of 8 -> 2, 0.3 of 5 -> 1)."
)
GOALS = ("task-agnostic", "task-specific")
GOAL_HELP = (
    "Without --criterion, use what arXiv 2606.15716's selection principle recommends: task-agnostic -> man "
    "(aimer without --stats), task-specific -> gean (calibrate on the target domain first)."
)


class PositiveFloat(click.FloatRange):
    """A finite number > 0 (click's ranges let NaN through: it fails every comparison)."""

    name = "positive number"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = PositiveFloat()

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


class Progress:
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


def note(ctx: click.Context, text: str) -> None:
    if not ctx.obj.get("quiet"):
        click.echo(text, err=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def ranges(ids: list[int]) -> str:
    parts, start = [], None
    for k, i in enumerate(ids):
        if start is None:
            start = i
        if k + 1 == len(ids) or ids[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)
