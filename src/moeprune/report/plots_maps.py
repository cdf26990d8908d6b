"""The report's kept/pruned maps: a layer x expert grid per run, or one figure of small grids for many
runs (matplotlib, Agg, into PNG bytes; kept experts blue, pruned vermillion, as everywhere)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moeprune.report.plots import KEPT, PRUNED, Plot, _clamp, _figure, _label, _layer_axis, _render, _ticks, title, wrap

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def map_plot(
    name: str, run: str, criterion: str, layers: list[int], n_experts: int, pruned: dict[int, set[int]]
) -> Plot:
    """Layer x expert grid, each cell kept (blue) or pruned (vermillion)."""
    heading = f"Kept and pruned experts: {_label(run, criterion)}"

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
        title(fig, heading)
        n_pruned = int(grid.sum())
        handles = [
            Patch(facecolor=KEPT, label=f"kept ({grid.size - n_pruned})"),
            Patch(facecolor=PRUNED, label=f"pruned ({n_pruned})"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        return fig

    return Plot(name, heading, _render(draw))


@dataclass
class MapPanel:
    """One run of :func:`map_grid_plot`: its label, MoE layers, experts per layer and pruned ids."""

    label: str
    layers: list[int]
    n_experts: int
    pruned: dict[int, set[int]]


def map_grid_plot(
    name: str, heading: str, rows: Sequence[Sequence[MapPanel | None]], columns: Sequence[str] | None = None
) -> Plot:
    """Many runs' kept/pruned maps in one figure: a small layer x expert panel per run, laid out as
    ``rows`` (None leaves a cell empty), ``columns`` headed by these labels if given, one legend."""
    panels = [p for row in rows for p in row if p is not None]
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    alt = f"{heading}; one panel per run: {', '.join(p.label for p in panels)}"

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
                sub.suptitle(wrap(column, fig.get_figwidth() / n_cols - 0.1, 9), fontsize=9, fontweight="bold")

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
                ax.set_title(wrap(p.label, width + 0.3, 8), fontsize=8, pad=3)
                if r + 1 == n_rows or c >= len(rows[r + 1]) or rows[r + 1][c] is None:  # bottom of its column
                    ax.set_xlabel("expert id", fontsize=8)
        fig.supylabel("MoE layer", fontsize=9)
        title(fig, heading, 11)
        handles = [Patch(facecolor=KEPT, label="kept"), Patch(facecolor=PRUNED, label="pruned")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=8)
        return fig

    return Plot(name, heading, _render(draw), alt)
