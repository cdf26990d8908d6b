"""The report's figures, drawn with matplotlib (Agg, no pyplot, no global state) into PNG bytes.

Colours follow the Okabe–Ito palette, which stays distinguishable under every common colour-vision
deficiency; kept experts are blue circles, pruned ones vermillion crosses, everywhere. Every figure
has a title, axis labels and a legend or colour bar, and stays legible at 48 layers x 128 experts
(no per-point labels; ticks thinned to at most a few dozen).
"""

from __future__ import annotations

import io
import math
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
MAX_LINES = 7
"""More pairs than this are drawn as a pairs x layers heatmap instead of one line each."""
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
    """One figure: ``name`` (file stem), ``title`` (also drawn on it) and the PNG bytes."""

    name: str
    title: str
    png: bytes


def require_matplotlib() -> None:
    """Fail with one clear line when the ``[report]`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("the report needs matplotlib: pip install 'moeprune[report]'") from None


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


def score_plot(
    name: str,
    run: str,
    criterion: str,
    direction: str,
    layers: list[int],
    scores: dict[int, list[float]],
    pruned: dict[int, set[int]],
) -> Plot:
    """Per MoE layer: a box of the scores and every expert as a point, the pruned ones marked."""
    title = f"Scores per layer: {_label(run, criterion)}"

    def draw() -> Figure:
        from matplotlib.patches import Patch

        n_layers = len(layers)
        fig = _figure(_clamp(3.0 + 0.3 * n_layers, 6.5, 18.0), 4.8)
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
        xs: dict[bool, list[float]] = {False: [], True: []}
        ys: dict[bool, list[float]] = {False: [], True: []}
        n_experts = 1
        for k, (layer, d) in enumerate(zip(layers, data, strict=True)):
            n_experts = max(n_experts, d.size)
            jitter = rng.uniform(-0.28, 0.28, d.size)
            gone = pruned.get(layer, set())
            for j, s in enumerate(d):
                if np.isfinite(s):
                    xs[j in gone].append(k + float(jitter[j]))
                    ys[j in gone].append(float(s))
        size = _clamp(600.0 / n_experts, 5.0, 30.0)
        n_kept, n_pruned = len(ys[False]), len(ys[True])
        ax.scatter(xs[False], ys[False], s=size, c=KEPT, marker="o", alpha=0.6, linewidths=0, zorder=2)
        ax.scatter(xs[True], ys[True], s=size * 1.3, c=PRUNED, marker="X", alpha=0.85, linewidths=0, zorder=3)
        if log:
            ax.set_yscale("log")
        _layer_axis(ax, layers)
        first = "higher" if direction == HIGHER_PRUNED else "lower"
        ax.set_xlabel("MoE layer")
        ax.set_ylabel(f"{criterion} score ({first} pruned first{', log scale' if log else ''})")
        ax.set_title(title)
        ax.grid(axis="y", color="#DDDDDD", linewidth=0.6, zorder=0)
        handles = [
            ax.scatter([], [], s=30, c=KEPT, marker="o", label=f"kept ({n_kept})"),
            ax.scatter([], [], s=40, c=PRUNED, marker="X", label=f"pruned ({n_pruned})"),
            Patch(facecolor="#EEEEEE", edgecolor="#888888", label="quartiles, median, 1.5 IQR"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return fig

    return Plot(name, title, _render(draw))


def map_plot(
    name: str, run: str, criterion: str, layers: list[int], n_experts: int, pruned: dict[int, set[int]]
) -> Plot:
    """Layer x expert grid, each cell kept (blue) or pruned (vermillion)."""
    title = f"Kept and pruned experts: {_label(run, criterion)}"

    def draw() -> Figure:
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        grid = np.zeros((len(layers), n_experts))  # (L, E): 1 = pruned
        for k, layer in enumerate(layers):
            for j in pruned.get(layer, set()):
                if 0 <= j < n_experts:
                    grid[k, j] = 1.0
        fig = _figure(_clamp(3.5 + 0.075 * n_experts, 6.5, 16.0), _clamp(1.6 + 0.2 * len(layers), 2.8, 12.0))
        ax = fig.add_subplot()
        ax.imshow(grid, cmap=ListedColormap([KEPT, PRUNED]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        if n_experts <= 64 and len(layers) <= 64:  # cell borders while cells are large enough to see them
            ax.set_xticks(np.arange(-0.5, n_experts, 1.0), minor=True)
            ax.set_yticks(np.arange(-0.5, len(layers), 1.0), minor=True)
            ax.grid(which="minor", color="#FFFFFF", linewidth=0.8)
            ax.tick_params(which="minor", length=0)
        pos = _ticks(n_experts, 32)
        ax.set_xticks(pos, [str(p) for p in pos])
        _layer_axis(ax, layers, "y")
        ax.set_xlabel("expert id (original numbering)")
        ax.set_ylabel("MoE layer")
        ax.set_title(title)
        n_pruned = int(grid.sum())
        handles = [
            Patch(facecolor=KEPT, label=f"kept ({grid.size - n_pruned})"),
            Patch(facecolor=PRUNED, label=f"pruned ({n_pruned})"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return fig

    return Plot(name, title, _render(draw))


def agreement_plot(
    name: str,
    kind: str,
    layers: list[int],
    series: dict[str, list[float]],
    baseline: float | None = None,
) -> Plot:
    """One value per (pair of runs, layer): a line per pair, or a pairs x layers heatmap when many.

    ``kind`` is ``"jaccard"`` (0..1) or ``"spearman"`` (-1..1); ``series[label][k]`` belongs to
    ``layers[k]`` (NaN where the pair has no value); ``baseline`` is drawn as the random expectation.
    """
    jac = kind == "jaccard"
    title = (
        "Agreement of pruned experts per layer (Jaccard index)"
        if jac
        else "Agreement of expert scores per layer (Spearman correlation)"
    )
    ylabel = "Jaccard index of pruned sets" if jac else "Spearman ρ of scores"
    lo, hi = (0.0, 1.0) if jac else (-1.0, 1.0)

    def draw() -> Figure:
        n_layers = len(layers)
        if len(series) > MAX_LINES:
            fig = _figure(_clamp(4.5 + 0.25 * n_layers, 7.0, 18.0), _clamp(1.8 + 0.28 * len(series), 3.0, 14.0))
            ax = fig.add_subplot()
            grid = np.ma.masked_invalid(np.array(list(series.values()), dtype=np.float64))  # (pairs, L)
            image = ax.imshow(
                grid, cmap="viridis" if jac else "PuOr", vmin=lo, vmax=hi, aspect="auto", interpolation="nearest"
            )
            _layer_axis(ax, layers)
            ax.set_yticks(range(len(series)), list(series))
            ax.set_ylabel("pair of runs")
            fig.colorbar(image, ax=ax, label=ylabel + ("" if baseline is None else f" (random: {baseline:.2f})"))
        else:
            fig = _figure(_clamp(4.5 + 0.25 * n_layers, 7.5, 18.0), 4.5)
            ax = fig.add_subplot()
            marker = n_layers <= 40
            for i, (label, values) in enumerate(series.items()):
                ax.plot(
                    layers,
                    values,
                    color=OKABE_ITO[i % len(OKABE_ITO)],
                    linestyle=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)] if marker else None,
                    markersize=5,
                    linewidth=1.6,
                    label=label,
                )
            if baseline is not None:
                ax.axhline(baseline, color="#777777", linestyle=(0, (2, 2)), linewidth=1.0, label="random selection")
            if not jac:
                ax.axhline(0.0, color="#BBBBBB", linewidth=0.8)
            pad = 0.05 * (hi - lo)
            ax.set_ylim(lo - pad, hi + pad)
            pos = _ticks(n_layers, 32)
            ax.set_xticks([layers[p] for p in pos])
            ax.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
            ax.set_ylabel(ylabel)
            ax.grid(color="#E5E5E5", linewidth=0.6)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_xlabel("MoE layer")
        ax.set_title(title)
        return fig

    return Plot(name, title, _render(draw))
