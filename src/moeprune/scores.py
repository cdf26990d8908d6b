"""scores.json: expert scores per MoE layer for one criterion, or several (``score --criterion
all``), with the model they came from. The one reader and writer of that file.

Version 1 files carry ``format``, ``version`` and ``source``; files written before (no version, no
source) still load, and are then checked against a model by their shape only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from moeprune.errors import InputError
from moeprune.io.jsonfile import read_json, validate
from moeprune.io.paths import write_file
from moeprune.provenance import Source, load_source

FORMAT = "moeprune.scores"
WHAT = "moeprune scores.json"
VERSION = 1

Direction = Literal["higher_pruned", "lower_pruned"]


@dataclass
class Scores:
    """One criterion's scores: ``layers[layer index][original expert id]``."""

    criterion: str
    direction: str
    layers: dict[int, list[float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "direction": self.direction,
            "layers": {str(i): s for i, s in self.layers.items()},
        }


@cache
def _schemas() -> tuple[Any, Any]:
    """The pydantic models of scores.json (one criterion; several), built on first use (no import
    cost at start-up)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

    class One(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        criterion: StrictStr
        direction: Direction
        layers: dict[StrictStr, list[Annotated[float, Field(allow_inf_nan=False)]]]

        @field_validator("layers")
        @classmethod
        def _layer_keys(cls, layers: dict[str, list[float]]) -> dict[str, list[float]]:
            bad = next((k for k in layers if not (k.isdigit() and len(k) < 8)), None)
            if bad is not None:
                raise ValueError(f"layer key {bad!r} is not a layer index")
            if not layers:
                raise ValueError("no layers")
            return layers

    class File(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        format: Literal["moeprune.scores"] | None = None
        version: Literal[1] | None = None
        source: dict[str, Any] | None = None

    class Several(File):
        criteria: dict[StrictStr, One] = Field(min_length=1)

    class Single(File, One):
        pass

    return Single, Several


def _scores(one: Any) -> Scores:
    return Scores(one.criterion, one.direction, {int(i): list(s) for i, s in one.layers.items()})


@dataclass
class ScoresFile:
    """What a scores.json holds: criterion name -> Scores, and the source model (None in files
    written before sources were recorded)."""

    scores: dict[str, Scores]
    source: Source | None


def save_scores(path: Path, scores: dict[str, Scores], source: Source, *, overwrite: bool = False) -> None:
    """Write scores.json atomically: one criterion at the top level, several under ``criteria``."""
    head: dict[str, Any] = {"format": FORMAT, "version": VERSION, "source": source.to_json()}
    if len(scores) == 1:
        data = head | next(iter(scores.values())).to_json()
    else:
        data = head | {"criteria": {name: s.to_json() for name, s in scores.items()}}
    for s in scores.values():  # json.dumps would write NaN, which no JSON reader accepts
        if not all(math.isfinite(v) for layer in s.layers.values() for v in layer):
            raise InputError(f"the {s.criterion} scores are not all finite numbers; nothing was written")
    write_file(Path(path), json.dumps(data, indent=1) + "\n", overwrite)


def load_scores(path: Path) -> ScoresFile:
    """Read and check a scores.json (either form)."""
    path = Path(path)
    data = read_json(path, WHAT, constants=True)
    where = f"{path}: not a {WHAT}"
    single, several = _schemas()
    if isinstance(data, dict) and "criteria" in data:
        found = validate(several, data, where)
        scores = {name: _scores(one) for name, one in found.criteria.items()}
    else:
        found = validate(single, data, where)
        scores = {found.criterion: _scores(found)}
    return ScoresFile(scores, load_source(found.source, str(path)))
