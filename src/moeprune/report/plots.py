"""What every figure of the report shares (palette, sizes, title wrapping, rendering to PNG bytes with
matplotlib: Agg, no pyplot, no global state), and the score distribution per layer; kept/pruned maps
are drawn in plots_maps.py, figures that compare runs or criteria in plots_compare.py.

Colours follow the Okabe–Ito palette, which stays distinguishable under every common colour-vision
deficiency; kept experts are blue circles, pruned ones vermillion crosses, everywhere. Matrices use
cividis (0..1) and PuOr (-1..1). Every figure has a title, axis labels and a legend or colour bar,
and stays legible at 48 layers x 128 experts (no per-point labels; ticks thinned to at most a few
dozen) and with a couple of dozen runs (one matrix, one grid of small maps, one dot plot). Titles
are wrapped to the figure's width (:func:`wrap`), so a long run name never clips them.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from moeprune.errors import InputError
from moeprune.plan import HIGHER_PRUNED

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#000000", "#F0E442"]
KEPT = "#0072B2"  # blue
PRUNED = "#D55E00"  # vermillion
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "*"]
MAX_LINES = 5
"""The most pairs of runs drawn as one line each per layer; a group of runs with more pairs is
drawn as a runs x runs matrix (:func:`matrix_plot`) instead."""
DPI = 110
RC: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}


@dataclass
class Plot:
    """One figure: ``name`` (file stem), ``title`` (also drawn on it), the PNG bytes and ``alt``,
    the text alternative (what the figure shows, e.g. the runs a matrix compares; the title when
    empty)."""

    name: str
    title: str
    png: bytes
    alt: str = ""


def require_matplotlib() -> None:
    """Fail with one clear line when the ``[report]`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("the report needs matplotlib: pip install 'moeprune[report]'") from None


CHAR_WIDTH = 0.62
"""Width of an average title character in units of the font size (DejaVu Sans is about 0.55; a
margin keeps wide names inside the figure)."""


def wrap(title: str, width_in: float, size: float = 12.0) -> str:
    """``title`` broken into lines that fit ``width_in`` inches at ``size`` points."""
    chars = max(16, int(width_in * 72 / (size * CHAR_WIDTH)))
    return "\n".join(textwrap.fill(part, chars, break_on_hyphens=False) for part in title.split("\n"))


def short(text: str, chars: int = 36) -> str:
    """A legend or tick label broken into lines of at most ``chars`` characters (long run names)."""
    return textwrap.fill(text, chars, break_on_hyphens=False, break_long_words=True)


def title(fig: Figure, text: str, size: float = 12.0) -> None:
    """The figure's title over its whole width, wrapped to fit it."""
    fig.suptitle(wrap(text, fig.get_figwidth() - 0.3, size), fontsize=size)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _clamp(x: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, x))


def _ticks(n: int, most: int) -> list[int]:
    """Positions 0..n-1 thinned to at most ``most`` ticks."""
    return list(range(0, n, max(1, math.ceil(n / most))))


def _layer_axis(ax: Axes, layers: Sequence[int], axis: str = "x") -> None:
    pos = _ticks(len(layers), 32 if axis == "x" else 40)
    if axis == "x":
        ax.set_xticks(pos, [str(layers[p]) for p in pos])
        ax.set_xlim(-0.6, len(layers) - 0.4)
    else:
        ax.set_yticks(pos, [str(layers[p]) for p in pos])


def _label(run: str, criterion: str) -> str:
    return run if run == criterion else f"{run} ({criterion})"


def _render(draw: Any, *args: Any) -> bytes:
    import matplotlib

    with matplotlib.rc_context(cast(Any, RC)):  # keys typed as Literal in matplotlib >= 3.11
        fig = draw(*args)
        return _png(fig)


def _names(runs: Sequence[str], most: int = 4) -> str:
    """``a, b, c``, or the first few and the count when there are more than ``most``."""
    if len(runs) <= most:
        return ", ".join(runs)
    return ", ".join(runs[: most - 1]) + f", … ({len(runs)} runs)"


PARTIAL = [("#E69F00", "^"), ("#CC79A7", "s"), ("#009E73", "D"), ("#56B4E9", "v"), ("#000000", "P")]
"""Colour and marker of the experts pruned by some of the runs that share a score figure."""


def _category(who: tuple[int, ...], runs: Sequence[str]) -> str:
    """Legend label of the experts pruned by exactly the runs ``who`` (indices into ``runs``)."""
    n = len(runs)
    if n == 1:
        return "pruned" if who else "kept"
    every = "both" if n == 2 else "all"
    if not who:
        return f"kept by {every}"
    if len(who) == n:
        return f"pruned by {every}"
    if len(who) == 1:
        return f"pruned by {runs[who[0]]} only"
    if len(who) == 2:
        return f"pruned by {runs[who[0]]} and {runs[who[1]]}"
    return f"pruned by {len(who)} of {n} runs"


def score_plot(
    name: str,
    runs: Sequence[str],
    criterion: str,
    direction: str,
    layers: list[int],
    scores: dict[int, list[float]],
    pruned: Sequence[dict[int, set[int]]],
) -> Plot:
    """Per MoE layer: a box of the scores and every expert as a point, the pruned ones marked.

    ``runs`` share these scores (the same criterion on the same model, e.g. at several ratios);
    ``pruned[i]`` is what ``runs[i]`` pruned. Each expert is drawn by the set of runs that prune it:
    kept by all (blue circle), pruned by all (vermillion cross), pruned by some (another colour and
    marker per set, e.g. "pruned by aimer-50 only")."""
    if len(runs) == 1:
        name_title = f"Scores per layer: {_label(runs[0], criterion)}"
    else:
        name_title = f"Scores per layer: {criterion} ({_names(runs)})"

    def draw() -> Figure:
        from matplotlib.patches import Patch

        n_layers = len(layers)
        fig = _figure(_clamp(3.0 + 0.3 * n_layers, 6.5, 18.0), 3.9)
        ax = fig.add_subplot()
        data = [np.asarray(scores.get(layer, []), dtype=np.float64) for layer in layers]
        finite = [d[np.isfinite(d)] for d in data]
        every = np.concatenate(finite) if finite else np.zeros(0)
        log = every.size > 0 and bool((every > 0).all()) and float(every.max()) > 1e3 * float(every.min())
        ax.boxplot(
            [f if f.size else np.array([np.nan]) for f in finite],
            positions=list(range(n_layers)),
            widths=0.7,
            showfliers=False,
            manage_ticks=False,
            patch_artist=True,
            boxprops={"facecolor": "#EEEEEE", "edgecolor": "#888888"},
            medianprops={"color": "#000000", "linewidth": 1.2},
            whiskerprops={"color": "#888888"},
            capprops={"color": "#888888"},
            zorder=1,
        )
        rng = np.random.default_rng(0)
        points: dict[tuple[int, ...], tuple[list[float], list[float]]] = {}
        n_experts = 1
        for k, (layer, d) in enumerate(zip(layers, data, strict=True)):
            n_experts = max(n_experts, d.size)
            jitter = rng.uniform(-0.28, 0.28, d.size)
            gone = [p.get(layer, set()) for p in pruned]
            for j, s in enumerate(d):
                if np.isfinite(s):
                    xy = points.setdefault(tuple(i for i, g in enumerate(gone) if j in g), ([], []))
                    xy[0].append(k + float(jitter[j]))
                    xy[1].append(float(s))
        size = _clamp(600.0 / n_experts, 5.0, 30.0)
        everyone = tuple(range(len(runs)))
        partial = sorted((w for w in points if w and w != everyone), key=lambda w: (-len(w), w))
        handles: dict[tuple[int, ...], Any] = {}
        # kept first (underneath), then the partly pruned, then the pruned by every run on top
        for z, who in enumerate([(), *partial, everyone], start=2):
            xs, ys = points.get(who, ([], []))
            if who == ():
                colour, marker, s, alpha = KEPT, "o", size, 0.6
            elif who == everyone:
                colour, marker, s, alpha = PRUNED, "X", size * 1.3, 0.85
            else:
                colour, marker = PARTIAL[partial.index(who) % len(PARTIAL)]
                s, alpha = size * 1.2, 0.85
            ax.scatter(xs, ys, s=s, c=colour, marker=marker, alpha=alpha, linewidths=0, zorder=z)
            legend_size = 30 if who == () else 40
            label = short(f"{_category(who, runs)} ({len(ys)})")
            handles[who] = ax.scatter([], [], s=legend_size, c=colour, marker=marker, label=label)
        if log:
            ax.set_yscale("log")
        _layer_axis(ax, layers)
        first = "higher" if direction == HIGHER_PRUNED else "lower"
        ax.set_xlabel("MoE layer")
        ax.set_ylabel(f"{criterion} score ({first} pruned first{', log scale' if log else ''})")
        title(fig, name_title)  # over the whole figure: the legend beside the axes may be wide
        ax.grid(axis="y", color="#DDDDDD", linewidth=0.6, zorder=0)
        # one run: kept, pruned; several: from the experts every run prunes to those every run keeps
        order = [(), everyone] if len(runs) == 1 else [everyone, *partial, ()]
        legend = [handles[who] for who in order]
        legend.append(Patch(facecolor="#EEEEEE", edgecolor="#888888", label="quartiles, median, 1.5 IQR"))
        ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return fig

    return Plot(name, name_title, _render(draw))
