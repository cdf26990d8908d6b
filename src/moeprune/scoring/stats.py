"""Routing statistics: the per-expert moments one calibration pass collects, saved and loaded.

For every MoE layer and routed expert j, over the calibration tokens routed to j (padding
excluded), ``A[α][β] = Σ g^α ‖f‖₂^β`` for α, β ∈ {0, 1, 2}, in float64: g is the gate weight the
model applies to the expert's output, f the expert's output before that weight, and
``A[0][0] = N_j`` the number of routed tokens. Every criterion of the unified formulation follows
from these moments (scoring/unified.py), and moments add, so data-parallel ranks merge by sum.

A STATS folder holds ``moments.safetensors`` (``moments`` [layers, E, 3, 3] float64 and
``layers`` [layers] int64 — never pickle) and ``stats.json`` (model, family, data, token count,
versions, date, and the layers finished so far, for resuming). Loading checks that the folder
belongs to the model: same family, expert count, MoE layers and router weights (a fingerprint),
and a statistics format this version reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moeprune.arch.layout import MoeModel
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint

FORMAT = 1
"""Version of the STATS folder layout; bumped when its meaning changes."""
MOMENTS = "moments.safetensors"
META = "stats.json"


def _version() -> str:
    from moeprune import __version__

    return __version__


def _same_release(version: str) -> bool:
    """Statistics are read by the release (major.minor) that wrote them."""
    return version.split(".")[:2] == _version().split(".")[:2]


def model_fingerprint(ckpt: Checkpoint, model: MoeModel) -> str:
    """sha256 of every MoE layer's router weight bytes: identifies the model's routing."""
    h = hashlib.sha256()
    for layer in model.layers:
        h.update(f"{layer.index}:".encode())
        h.update(ckpt.read(layer.router).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class RoutingStats:
    """Moments ``A[layer][expert][α][β]`` of a calibration run, with its metadata."""

    layers: list[int]
    moments: torch.Tensor
    """(len(layers), E, 3, 3) float64."""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def zeros(cls, layers: list[int], n_experts: int, meta: dict[str, Any] | None = None) -> RoutingStats:
        return cls(list(layers), torch.zeros(len(layers), n_experts, 3, 3, dtype=torch.float64), dict(meta or {}))

    @property
    def n_experts(self) -> int:
        return int(self.moments.shape[1])

    def layer(self, index: int) -> torch.Tensor:
        """(E, 3, 3) moments of MoE layer ``index``."""
        return self.moments[self.layers.index(index)]

    def counts(self, index: int) -> torch.Tensor:
        """N_j of layer ``index``: tokens routed to each expert."""
        return self.layer(index)[:, 0, 0]

    def merge(self, other: RoutingStats) -> RoutingStats:
        """Moments of both runs together (they add)."""
        if other.layers != self.layers or other.moments.shape != self.moments.shape:
            raise InputError("cannot merge statistics of different models or layers")
        return RoutingStats(self.layers, self.moments + other.moments, dict(self.meta))

    # -- files -----------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the STATS folder (each file replaced atomically)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "format": FORMAT, "moeprune_version": _version()}
        tmp = folder / f".{MOMENTS}.tmp"
        save_file(
            {"moments": self.moments.contiguous(), "layers": torch.tensor(self.layers, dtype=torch.int64)},
            str(tmp),
            metadata={"format": "pt", "moeprune_stats": str(FORMAT)},
        )
        os.replace(tmp, folder / MOMENTS)
        tmp = folder / f".{META}.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / META)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> RoutingStats:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / META).is_file() or not (folder / MOMENTS).is_file():
            raise InputError(f"{folder}: not a moeprune STATS folder (needs {META} and {MOMENTS})")
        try:
            meta = json.loads((folder / META).read_text())
            tensors = load_file(str(folder / MOMENTS))
        except (ValueError, OSError, SafetensorError) as e:
            raise InputError(f"{folder}: unreadable statistics ({e.__class__.__name__})") from None
        if meta.get("format") != FORMAT or not _same_release(str(meta.get("moeprune_version", ""))):
            raise InputError(
                f"{folder}: statistics written by moeprune {meta.get('moeprune_version', '?')} "
                f"(format {meta.get('format')}); this is moeprune {_version()} (format {FORMAT}): run calibrate again"
            )
        moments, layers = tensors.get("moments"), tensors.get("layers")
        if (
            moments is None
            or layers is None
            or moments.dtype != torch.float64
            or moments.ndim != 4
            or moments.shape[2:] != (3, 3)
            or moments.shape[0] != layers.numel()
        ):
            raise InputError(f"{folder}: {MOMENTS} does not hold [layers, E, 3, 3] float64 moments")
        return cls([int(i) for i in layers.tolist()], moments, meta)

    def check_model(self, ckpt: Checkpoint, model: MoeModel, folder: str | os.PathLike[str]) -> None:
        """Refuse statistics collected on another model."""
        want = {"family": model.family.model_type, "n_experts": model.n_experts}
        got = {"family": self.meta.get("family"), "n_experts": self.n_experts}
        trunk = [layer.index for layer in model.layers if layer.index < model.n_layers]
        if want != got or self.layers != trunk:
            raise InputError(
                f"{folder}: statistics of another model ({got['family']}, {got['n_experts']} experts, "
                f"{len(self.layers)} MoE layers; this one: {want['family']}, {want['n_experts']} experts, "
                f"{len(model.layers)} MoE layers)"
            )
        if self.meta.get("model_fingerprint") != model_fingerprint(ckpt, model):
            raise InputError(f"{folder}: statistics of another model (its router weights differ from {ckpt.path})")
        unfinished = sorted(set(self.layers) - set(self.meta.get("finished_layers", self.layers)))
        if unfinished:
            raise InputError(f"{folder}: calibration did not finish (layer {unfinished[0]} missing); resume it")
