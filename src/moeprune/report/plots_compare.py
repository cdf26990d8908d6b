"""The report's figures that compare runs or criteria: agreement per layer, the runs x runs matrix,
the evaluation dot plot and the selection-stability curve (matplotlib, Agg, into PNG bytes).

Same conventions as plots.py: Okabe–Ito colours, cividis and PuOr matrices, titles wrapped to the
figure's width, a reference line at the value of the unpruned model (ratio 1, KL 0, agreement 1)
or of random selections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moeprune.report.plots import LINESTYLES, MARKERS, OKABE_ITO, Plot, _clamp, _figure, _render, _ticks, short, title

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    heading = (
        "Agreement of pruned experts per layer (Jaccard index)"
        if jac
        else "Agreement of expert scores per layer (Spearman correlation)"
    )
    heading = f"{heading}: {group}" if group else heading
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
                label=short(label, 48),
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
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8 if len(series) > 2 else 9)
        ax.set_xlabel("MoE layer")
        title(fig, heading)
        return fig

    return Plot(name, heading, _render(draw))


def _ink(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.18 else "#FFFFFF"


def matrix_plot(
    name: str,
    heading: str,
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
    alt = f"{heading}. Rows and columns: {', '.join(labels)}. Below the diagonal: {lower_label}; above: {upper_label}."

    def draw() -> Figure:
        from matplotlib import colormaps
        from matplotlib.colors import ListedColormap

        side = _clamp(2.8 + 0.4 * n, 6.0, 16.0)
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
        ax.set_xticks(range(n), [short(x, 28) for x in labels], rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), [short(x, 28) for x in labels])
        ax.set_xticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, n, 1.0), minor=True)
        ax.grid(which="minor", color="#FFFFFF", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        title(fig, heading)
        bar = fig.colorbar(im_lo, ax=ax, shrink=0.8, pad=0.02)
        label = f"below the diagonal: {lower_label}"
        if baseline is not None and math.isfinite(baseline):
            # the random level as a line across the bar, named in the bar's own label (a text beside
            # the bar would run into the next bar's label)
            bar.ax.axhline(baseline, color="#D55E00", linewidth=2.0)
            label += f"\n(orange line: random selections, {baseline:.2f})"
        bar.set_label(label)
        if np.isfinite(upper[above]).any():
            fig.colorbar(im_up, ax=ax, shrink=0.8, pad=0.02).set_label(f"above the diagonal: {upper_label}")
        return fig

    return Plot(name, heading, _render(draw), alt)


EVAL_METRICS = {
    "ppl_ratio": ("perplexity ratio (pruned / base)", 1.0),
    "kl": ("KL mean (nats per token)", 0.0),
    "top1": ("top-1 agreement with the base", 1.0),
}
"""Metric key: (axis label, the value of an unpruned model)."""


def eval_plot(
    name: str,
    heading: str,
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
            lo, hi = ax.get_xlim()  # the unpruned model's value always in view (ratio 1, KL 0, top-1 1)
            if ax.get_xscale() == "log":
                ax.set_xlim(min(lo, unpruned / 1.08), max(hi, unpruned * 1.08))
            else:
                pad = 0.04 * (max(hi, unpruned) - min(lo, unpruned))
                ax.set_xlim(min(lo, unpruned - pad), max(hi, unpruned + pad))
            ax.set_xlabel(label)
            ax.grid(color="#E5E5E5", linewidth=0.6, zorder=0)
        axes[0].set_yticks(range(n), [short(r, 30) for r in rows])
        axes[0].set_ylim(n - 0.5, -0.5)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
        title(fig, heading)
        return fig

    return Plot(name, heading, _render(draw), f"{heading}: {', '.join(EVAL_METRICS[m][0] for m in metrics)}")


def stability_plot(
    name: str, heading: str, panels: dict[str, dict[str, list[float]]], baselines: dict[str, float]
) -> Plot:
    """Selection stability against the share of the calibration data: a panel per plan size
    (``panels[size][criterion][k - 1]`` = mean Jaccard on k of S shards), a line per criterion, a
    dotted line at random selections (``baselines[size]``)."""

    def draw() -> Figure:
        n = len(panels)
        fig = _figure(_clamp(2.5 + 4.2 * n, 7.5, 16.0), 4.6)
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        for ax, (size, series) in zip(axes, panels.items(), strict=True):
            for i, (criterion, values) in enumerate(series.items()):
                s = len(values)
                ax.plot(
                    [(k + 1) / s for k in range(s)],
                    values,
                    color=OKABE_ITO[i % len(OKABE_ITO)],
                    linestyle=LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)],
                    markersize=4,
                    linewidth=1.4,
                    label=criterion,
                )
            if size in baselines:
                ax.axhline(
                    baselines[size], color="#777777", linestyle=(0, (2, 2)), linewidth=1.0, label="random selection"
                )
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlim(0, 1.04)
            ax.set_xlabel("share of the calibration data (shards used / all)")
            ax.set_title(size, fontsize=10)
            ax.grid(color="#E5E5E5", linewidth=0.6)
        axes[0].set_ylabel("mean Jaccard vs all the data")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", frameon=False)
        title(fig, heading)
        return fig

    alt = f"{heading}: one line per criterion, " + "; ".join(panels)
    return Plot(name, heading, _render(draw), alt)
