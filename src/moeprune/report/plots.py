"""The report's figures, drawn with matplotlib (Agg, no pyplot, no global state) into PNG bytes.

Colours follow the Okabe–Ito palette, which stays distinguishable under every common colour-vision
deficiency; kept experts are blue circles, pruned ones vermillion crosses, everywhere. Matrices use
cividis (0..1) and PuOr (-1..1). Every figure has a title, axis labels and a legend or colour bar,
and stays legible at 48 layers x 128 experts (no per-point labels; ticks thinned to at most a few
dozen) and with a couple of dozen runs (one matrix, one grid of small maps, one dot plot).
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
        title = f"Scores per layer: {_label(runs[0], criterion)}"
    else:
        title = f"Scores per layer: {criterion} ({_names(runs)})"

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
            label = f"{_category(who, runs)} ({len(ys)})"
            handles[who] = ax.scatter([], [], s=legend_size, c=colour, marker=marker, label=label)
        if log:
            ax.set_yscale("log")
        _layer_axis(ax, layers)
        first = "higher" if direction == HIGHER_PRUNED else "lower"
        ax.set_xlabel("MoE layer")
        ax.set_ylabel(f"{criterion} score ({first} pruned first{', log scale' if log else ''})")
        fig.suptitle(title)  # over the whole figure: the legend beside the axes may be wide
        ax.grid(axis="y", color="#DDDDDD", linewidth=0.6, zorder=0)
        # one run: kept, pruned; several: from the experts every run prunes to those every run keeps
        order = [(), everyone] if len(runs) == 1 else [everyone, *partial, ()]
        legend = [handles[who] for who in order]
        legend.append(Patch(facecolor="#EEEEEE", edgecolor="#888888", label="quartiles, median, 1.5 IQR"))
        ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
    group: str = "",
) -> Plot:
    """One value per (pair of runs, layer), a line per pair (at most :data:`MAX_LINES` pairs).

    ``kind`` is ``"jaccard"`` (0..1) or ``"spearman"`` (-1..1); ``series[label][k]`` belongs to
    ``layers[k]`` (NaN where the pair has no value); ``baseline`` is drawn as the random expectation;
    ``group`` names the runs compared (e.g. ``"4 of 16 experts pruned per layer"``) after the title.
    """
    jac = kind == "jaccard"
    title = (
        "Agreement of pruned experts per layer (Jaccard index)"
        if jac
        else "Agreement of expert scores per layer (Spearman correlation)"
    )
    drawn = f"{title}\n{group}" if group else title
    title = f"{title}: {group}" if group else title
    ylabel = "Jaccard index of pruned sets" if jac else "Spearman ρ of scores"
    lo, hi = (0.0, 1.0) if jac else (-1.0, 1.0)

    def draw() -> Figure:
        n_layers = len(layers)
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
        ax.set_title(drawn)
        return fig

    return Plot(name, title, _render(draw))


def _ink(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.18 else "#FFFFFF"


def matrix_plot(
    name: str,
    title: str,
    labels: Sequence[str],
    lower: np.ndarray,
    upper: np.ndarray,
    lower_label: str,
    upper_label: str,
    baseline: float | None = None,
) -> Plot:
    """A runs x runs matrix: ``lower[i, j]`` (0..1, cividis) below the diagonal and ``upper[i, j]``
    (-1..1, the diverging PuOr) above it, every cell annotated while the matrix has at most 24 runs.
    NaN cells are left white; the diagonal is grey. ``baseline`` (the random expectation of the
    lower values) is marked on its colour bar. Both colour maps stay readable under the common
    colour-vision deficiencies and in greyscale (cividis) or by hue direction (PuOr)."""
    n = len(labels)
    alt = f"{title}. Rows and columns: {', '.join(labels)}. Below the diagonal: {lower_label}; above: {upper_label}."

    def draw() -> Figure:
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap

        side = _clamp(2.8 + 0.5 * n, 6.0, 18.0)
        fig = _figure(side + 2.4, side)
        ax = fig.add_subplot()
        below = np.tril(np.ones((n, n), dtype=bool), -1)
        above = np.triu(np.ones((n, n), dtype=bool), 1)
        lo_grid = np.ma.masked_array(lower, mask=~below | ~np.isfinite(lower))
        up_grid = np.ma.masked_array(upper, mask=~above | ~np.isfinite(upper))
        diag = np.ma.masked_array(np.zeros((n, n)), mask=~np.eye(n, dtype=bool))
        ax.imshow(diag, cmap=ListedColormap(["#DDDDDD"]), vmin=0, vmax=1, interpolation="nearest")
        cmap_lo, cmap_up = colormaps["cividis"], colormaps["PuOr"]
        im_lo = ax.imshow(lo_grid, cmap=cmap_lo, vmin=0.0, vmax=1.0, interpolation="nearest")
        im_up = ax.imshow(up_grid, cmap=cmap_up, vmin=-1.0, vmax=1.0, interpolation="nearest")
        if n <= 24:
            size = _clamp(11.0 - 0.25 * n, 6.0, 10.0)
            for i in range(n):
                for j in range(n):
                    if i == j:
                        continue
                    v = lower[i, j] if i > j else upper[i, j]
                    if not math.isfinite(v):
                        continue
                    rgba = cmap_lo(v) if i > j else cmap_up((v + 1.0) / 2.0)
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=size, color=_ink(rgba))
        ax.set_xticks(range(n), list(labels), rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), list(labels))
        ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.grid(which="minor", color="#FFFFFF", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_title(title)
        bar = fig.colorbar(im_lo, ax=ax, shrink=0.8, pad=0.02)
        bar.set_label(f"below the diagonal: {lower_label}")
        if baseline is not None and math.isfinite(baseline):
            bar.ax.axhline(baseline, color="#D55E00", linewidth=2.0)
            bar.ax.text(1.1, baseline, "random", transform=bar.ax.get_yaxis_transform(), va="center", fontsize=8)
        if np.isfinite(upper[above]).any():
            fig.colorbar(im_up, ax=ax, shrink=0.8, pad=0.02).set_label(f"above the diagonal: {upper_label}")
        return fig

    return Plot(name, title, _render(draw), alt)


@dataclass
class MapPanel:
    """One run of :func:`map_grid_plot`: its label, MoE layers, experts per layer and pruned ids."""

    label: str
    layers: list[int]
    n_experts: int
    pruned: dict[int, set[int]]


def map_grid_plot(
    name: str, title: str, rows: Sequence[Sequence[MapPanel | None]], columns: Sequence[str] | None = None
) -> Plot:
    """Many runs' kept/pruned maps in one figure: a small layer x expert panel per run, laid out as
    ``rows`` (None leaves a cell empty), ``columns`` headed by these labels if given, one legend."""
    panels = [p for row in rows for p in row if p is not None]
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    alt = f"{title}; one panel per run: {', '.join(p.label for p in panels)}"

    def draw() -> Figure:
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        most_e = max(p.n_experts for p in panels)
        most_l = max(len(p.layers) for p in panels)
        cell = _clamp(min(4.0 / most_e, 2.0 / most_l), 0.02, 0.12)  # inches per expert / layer
        width, height = max(cell * most_e, 1.7), cell * most_l
        fig = _figure(n_cols * (width + 0.45) + 0.6, n_rows * (height + 0.45) + 1.3)
        if columns:
            subs = list(fig.subfigures(1, n_cols, wspace=0.02, squeeze=False)[0])
            specs = [sub.add_gridspec(n_rows, 1) for sub in subs]
            for sub, column in zip(subs, columns, strict=True):
                sub.suptitle(column, fontsize=9, fontweight="bold")

            def place(r: int, c: int) -> Axes:
                return subs[c].add_subplot(specs[c][r, 0])
        else:
            spec = fig.add_gridspec(n_rows, n_cols)

            def place(r: int, c: int) -> Axes:
                return fig.add_subplot(spec[r, c])

        cmap = ListedColormap([KEPT, PRUNED])
        for r, row in enumerate(rows):
            for c, p in enumerate(row):
                if p is None:
                    continue
                ax = place(r, c)
                grid = np.zeros((len(p.layers), p.n_experts))
                for k, layer in enumerate(p.layers):
                    for j in p.pruned.get(layer, set()):
                        if 0 <= j < p.n_experts:
                            grid[k, j] = 1.0
                ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
                if p.n_experts <= 64 and len(p.layers) <= 32:
                    ax.set_xticks(np.arange(-0.5, p.n_experts, 1.0), minor=True)
                    ax.set_yticks(np.arange(-0.5, len(p.layers), 1.0), minor=True)
                    ax.grid(which="minor", color="#FFFFFF", linewidth=0.5)
                    ax.tick_params(which="minor", length=0)
                xpos = _ticks(p.n_experts, 4)
                ax.set_xticks(xpos, [str(x) for x in xpos])
                ypos = _ticks(len(p.layers), 4)
                ax.set_yticks(ypos, [str(p.layers[y]) for y in ypos])
                ax.tick_params(labelsize=7, length=2)
                ax.set_title(p.label, fontsize=8, pad=3)
                if r + 1 == n_rows or c >= len(rows[r + 1]) or rows[r + 1][c] is None:  # bottom of its column
                    ax.set_xlabel("expert id", fontsize=8)
        fig.supylabel("MoE layer", fontsize=9)
        fig.suptitle(title, fontsize=11)
        handles = [Patch(facecolor=KEPT, label="kept"), Patch(facecolor=PRUNED, label="pruned")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=8)
        return fig

    return Plot(name, title, _render(draw), alt)


EVAL_METRICS = {
    "ppl_ratio": ("perplexity ratio (pruned / base)", 1.0),
    "kl": ("KL mean (nats per token)", 0.0),
    "top1": ("top-1 agreement with the base", 1.0),
}
"""Metric key: (axis label, the value of an unpruned model)."""


def eval_plot(
    name: str,
    title: str,
    rows: Sequence[str],
    series: dict[str, dict[str, list[float]]],
) -> Plot:
    """A dot plot per metric (side by side, sharing the rows): ``series[size][metric][k]`` is the
    value of row ``rows[k]`` for the runs of plan size ``size`` (NaN: none), one colour and marker
    per size, a dotted line at the unpruned model's value."""
    metrics = [m for m in EVAL_METRICS if any(math.isfinite(v) for s in series.values() for v in s.get(m, []))]

    def draw() -> Figure:
        n = len(rows)
        fig = _figure(_clamp(1.8 + 3.2 * len(metrics), 6.5, 16.0), _clamp(1.4 + 0.3 * n, 3.0, 16.0))
        axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
        offsets = np.linspace(-0.2, 0.2, len(series)) if len(series) > 1 else np.zeros(1)
        for ax, metric in zip(axes, metrics, strict=True):
            label, unpruned = EVAL_METRICS[metric]
            for s, (size, values) in enumerate(series.items()):
                v = np.asarray(values.get(metric, [math.nan] * n), dtype=np.float64)
                ax.scatter(
                    v,
                    np.arange(n) + offsets[s],
                    s=36,
                    c=OKABE_ITO[(s + 3) % len(OKABE_ITO)],
                    marker=MARKERS[s % len(MARKERS)],
                    label=size,
                    zorder=3,
                )
            ax.axvline(unpruned, color="#777777", linestyle=(0, (2, 2)), linewidth=1.0)
            every = np.asarray([v for sv in series.values() for v in sv.get(metric, [])], dtype=np.float64)
            every = every[np.isfinite(every)]
            if metric == "ppl_ratio" and every.size and every.min() > 0 and every.max() > 10 * every.min():
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.grid(color="#E5E5E5", linewidth=0.6, zorder=0)
        axes[0].set_yticks(range(n), list(rows))
        axes[0].set_ylim(n - 0.5, -0.5)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
        fig.suptitle(title)
        return fig

    return Plot(name, title, _render(draw), f"{title}: {', '.join(EVAL_METRICS[m][0] for m in metrics)}")
