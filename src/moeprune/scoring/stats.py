"""Routing statistics: the per-expert moments one calibration pass collects, saved, checked and loaded.

For every MoE layer and routed expert j, over the calibration tokens routed to j (padding
excluded), ``A[α][β] = Σ g^α ‖f‖₂^β`` for α, β ∈ {0, 1, 2}, in float64: g is the gate weight the
model applies to the expert's output, f the expert's output before that weight, and
``A[0][0] = N_j`` the number of routed tokens. Every criterion of the unified formulation follows
from these moments (scoring/unified.py), and moments add, so data-parallel ranks merge by sum.

The same sums are kept per calibration shard (``shards``: S disjoint slices of the calibration
windows, in order; calib/hooks.py), so that selections can be recomputed on resamples of the data
without re-running the model (scoring/stability.py). Files written before shards existed load
without them.

A STATS folder holds ``moments.safetensors`` (``moments`` [layers, E, 3, 3] float64, ``layers``
[layers] int64 and, optionally, ``shards`` [layers, S, E, 3, 3] float64 — never pickle) and
``stats.json`` (model, family, data, token count, versions, date, and the layers finished so far,
for resuming). Loading validates both at the edge (one line naming the file and the field: wrong
types, shapes, non-finite or negative counts, shards that do not add up to the totals) and checks
that the folder belongs to the model: same family, expert count, MoE layers and router weights (a
fingerprint), and a statistics format this version reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from moeprune.arch.layout import MoeModel
from moeprune.errors import InputError, OutputError
from moeprune.io.jsonfile import validate
from moeprune.io.paths import set_file_mode
from moeprune.io.reader import Checkpoint
from moeprune.provenance import fingerprint
from moeprune.version import __version__

FORMAT = 1
"""Version of the STATS folder layout; bumped when its meaning changes (shards are an optional
addition: format 1 still)."""
MOMENTS = "moments.safetensors"
META = "stats.json"


def _version() -> str:
    return __version__


def _same_release(version: str) -> bool:
    """Statistics are read by the release (major.minor) that wrote them."""
    return version.split(".")[:2] == _version().split(".")[:2]


class StatsMeta(BaseModel):
    """The fields of ``stats.json`` moeprune reads (others are kept as they are)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: StrictInt
    moeprune_version: StrictStr
    model: StrictStr | None = None
    family: StrictStr | None = None
    model_fingerprint: StrictStr | None = None
    finished_layers: list[StrictInt] | None = None
    last_layer: StrictInt | None = Field(default=None, ge=0)
    n_tokens: StrictInt | None = Field(default=None, ge=0)
    data: dict[str, Any] | None = None
    dtype: StrictStr | None = None
    batch_size: StrictInt | None = Field(default=None, ge=1)
    world_size: StrictInt | None = Field(default=None, ge=1)
    seconds_per_layer: dict[str, float] | None = None


@dataclass
class RoutingStats:
    """Moments ``A[layer][expert][α][β]`` of a calibration run, with its metadata and, when the
    run recorded them, the same moments per calibration shard."""

    layers: list[int]
    moments: torch.Tensor
    """(len(layers), E, 3, 3) float64."""
    meta: dict[str, Any] = field(default_factory=dict)
    shards: torch.Tensor | None = None
    """(len(layers), S, E, 3, 3) float64: the moments of each of S disjoint calibration shards (they
    add up to ``moments``); None for statistics written without them."""

    @classmethod
    def zeros(cls, layers: list[int], n_experts: int, meta: dict[str, Any] | None = None) -> RoutingStats:
        return cls(list(layers), torch.zeros(len(layers), n_experts, 3, 3, dtype=torch.float64), dict(meta or {}))

    @property
    def n_experts(self) -> int:
        return int(self.moments.shape[1])

    @property
    def n_shards(self) -> int:
        """Calibration shards recorded (0: none)."""
        return 0 if self.shards is None else int(self.shards.shape[1])

    def layer(self, index: int) -> torch.Tensor:
        """(E, 3, 3) moments of MoE layer ``index``."""
        return self.moments[self.layers.index(index)]

    def counts(self, index: int) -> torch.Tensor:
        """N_j of layer ``index``: tokens routed to each expert."""
        return self.layer(index)[:, 0, 0]

    def set_shards(self, index: int, shards: torch.Tensor | None) -> None:
        """Record layer ``index``'s (S, E, 3, 3) per-shard moments. A run that did not record shards
        from its first layer on (resumed from statistics without them) keeps none."""
        if shards is None:
            self.shards = None
            return
        if self.shards is None:
            if self.meta.get("finished_layers"):
                return  # earlier layers have no shards: no complete set can be kept
            self.shards = torch.zeros(len(self.layers), *shards.shape, dtype=torch.float64)
        self.shards[self.layers.index(index)] = shards.to("cpu", torch.float64)

    def merge(self, other: RoutingStats) -> RoutingStats:
        """Moments of both runs together (they add; shards only when both have the same number)."""
        if other.layers != self.layers or other.moments.shape != self.moments.shape:
            raise InputError("cannot merge statistics of different models or layers")
        shards = None
        if self.shards is not None and other.shards is not None and self.shards.shape == other.shards.shape:
            shards = self.shards + other.shards
        return RoutingStats(self.layers, self.moments + other.moments, dict(self.meta), shards)

    # -- files -----------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the STATS folder (each file replaced atomically)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "format": FORMAT, "moeprune_version": _version()}
        tensors = {"moments": self.moments.contiguous(), "layers": torch.tensor(self.layers, dtype=torch.int64)}
        if self.shards is not None:
            tensors["shards"] = self.shards.contiguous()
        tmp = folder / f".{MOMENTS}.tmp"
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt", "moeprune_stats": str(FORMAT)})
            set_file_mode(tmp)  # safetensors creates its files private (0600); every moeprune output is alike
            os.replace(tmp, folder / MOMENTS)
            tmp = folder / f".{META}.tmp"
            tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, folder / META)
        except Exception as e:  # OSError, or safetensors' own error for a failed write (e.g. disk full)
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
                raise OutputError(
                    f"could not save the statistics in {folder}: {getattr(e, 'strerror', None) or e}"
                ) from None
            raise

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
        except (ValueError, OSError, SafetensorError, RecursionError) as e:
            raise InputError(f"{folder}: unreadable statistics ({e.__class__.__name__})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{folder / META}: expected a JSON object")
        if meta.get("format") != FORMAT or not _same_release(str(meta.get("moeprune_version", ""))):
            raise InputError(
                f"{folder}: statistics written by moeprune {meta.get('moeprune_version', '?')} "
                f"(format {meta.get('format')}); this is moeprune {_version()} (format {FORMAT}): run calibrate again"
            )
        _check_meta(folder / META, meta)
        layers, moments, shards = _check_tensors(folder / MOMENTS, tensors, meta)
        return cls(layers, moments, meta, shards)

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
        if self.meta.get("model_fingerprint") != fingerprint(ckpt, model):
            raise InputError(f"{folder}: statistics of another model (its router weights differ from {ckpt.path})")
        unfinished = sorted(set(self.layers) - set(self.meta.get("finished_layers") or []))
        if unfinished or "last_layer" in self.meta:  # a finished run drops last_layer
            unfinished = unfinished or self.layers[-1:]
            raise InputError(f"{folder}: calibration did not finish (layer {unfinished[0]} missing); resume it")


def _check_meta(path: Path, meta: dict[str, Any]) -> None:
    validate(StatsMeta, meta, str(path))


def _check_tensors(
    path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
    """Shapes, dtypes and values of ``moments.safetensors``: one line naming the tensor otherwise."""
    moments, layers, shards = tensors.get("moments"), tensors.get("layers"), tensors.get("shards")
    if layers is None or layers.dtype != torch.int64 or layers.ndim != 1:
        raise InputError(f"{path}: field layers: expected [layers] int64 MoE layer indices")
    ids = [int(i) for i in layers.tolist()]
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise InputError(f"{path}: field layers: layer indices must be distinct and non-negative")
    if (
        moments is None
        or moments.dtype != torch.float64
        or moments.ndim != 4
        or moments.shape[2:] != (3, 3)
        or moments.shape[0] != len(ids)
        or moments.shape[1] < 1
    ):
        raise InputError(f"{path}: field moments: expected [layers, E, 3, 3] float64 moments")
    _finite(path, "moments", moments, ids)
    counts = moments[:, :, 0, 0]
    if (counts < 0).any() or (counts != counts.round()).any():
        raise InputError(f"{path}: field moments: routed-token counts A[0][0] must be whole numbers >= 0")
    if (moments[:, :, [0, 2], :] < 0).any():  # sums of g^α‖f‖^β with even α: never negative
        raise InputError(f"{path}: field moments: a sum of norms or squared gates is negative")
    if meta.get("n_tokens") == 0 and (counts > 0).any():
        raise InputError(f"{path}: field n_tokens: 0, but experts have routed tokens")
    if shards is not None:
        if (
            shards.dtype != torch.float64
            or shards.ndim != 5
            or shards.shape[0] != moments.shape[0]
            or shards.shape[1] < 1
            or shards.shape[2:] != moments.shape[1:]
        ):
            raise InputError(f"{path}: field shards: expected [layers, S, E, 3, 3] float64 moments per shard")
        _finite(path, "shards", shards, ids)
        finished = [k for k, i in enumerate(ids) if i in set(meta.get("finished_layers") or ids)]
        if not torch.equal(shards[finished, :, :, 0, 0].sum(dim=1), counts[finished]):
            raise InputError(f"{path}: field shards: the shards' routed-token counts do not add up to the totals")
    return ids, moments, shards


def _finite(path: Path, name: str, t: torch.Tensor, layers: list[int]) -> None:
    bad = (~torch.isfinite(t)).nonzero()
    if bad.numel():
        raise InputError(
            f"{path}: field {name}: non-finite value (NaN or infinity) in MoE layer {layers[int(bad[0, 0])]}; "
            "run calibrate again"
        )
