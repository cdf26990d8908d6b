"""eval.json: what `moeprune eval` (and the demo) measured for one model against its base; the
one builder, reader and writer of that file.

Version 1 files carry ``format`` and ``version``; files written before still load. Every number a
reader uses (perplexities, KL, agreement, task scores) is checked to be a finite number of the
right sign (a perplexity may be infinite), or null when it was not computed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from moeprune.io.jsonfile import read_json, validate
from moeprune.io.paths import write_file

if TYPE_CHECKING:
    from moeprune.calib.tokens import TokenBatch

EVAL = "eval.json"
FORMAT = "moeprune.eval"
VERSION = 1

Positive = Annotated[float, Field(ge=0, allow_inf_nan=True)]
"""A perplexity, ratio or KL: >= 0, infinite when it overflowed, never NaN."""


class _Perplexity(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    pruned: Positive | None = None
    base: Positive | None = None
    ratio: Positive | None = None


class _Task(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    metric: StrictStr | None = None
    score: Annotated[float, Field(allow_inf_nan=False)] | None = None
    base: Annotated[float, Field(allow_inf_nan=False)] | None = None
    recovery: Annotated[float, Field(allow_inf_nan=False)] | None = None


class _EvalFile(BaseModel):
    """The fields of eval.json that readers use (others are kept as they are)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: Literal["moeprune.eval"] | None = None
    version: Literal[1] | None = None
    model: StrictStr | None = None
    base: StrictStr | None = None
    data: dict[str, Any] | None = None
    perplexity: _Perplexity | None = None
    kl_mean: Positive | None = None
    top1_agreement: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    tasks: dict[StrictStr, _Task] = Field(default_factory=dict)


def eval_record(
    model: str | os.PathLike[str],
    base: str | os.PathLike[str] | None,
    settings: dict[str, Any],
    batch: TokenBatch | None = None,
    scores: dict[str, Any] | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The ``eval.json`` dictionary of ``model`` (against ``base``) from `score_tokens`' ``scores``
    on ``batch`` (both None: no perplexity); ``tasks`` empty, for the caller to fill."""
    record: dict[str, Any] = {
        "model": os.fspath(model),
        "base": None if base is None else os.fspath(base),
        "data": None,
        "perplexity": None,
        "kl_mean": None,
        "top1_agreement": None,
        "tasks": {},
        "settings": settings,
    }
    if batch is not None and scores is not None:
        record["data"] = {
            "source": batch.source,
            "seq_len": batch.seq_len,
            "n_sequences": batch.n_samples,
            "n_tokens": batch.n_tokens,
            "n_positions": scores["n_positions"],
            "sha256": batch.sha256(),
            "short": batch.short,
            "shuffle": shuffle,
            "seed": seed,
        }
        record["perplexity"] = scores["perplexity"]
        record["kl_mean"] = scores["kl_mean"]
        record["top1_agreement"] = scores["top1_agreement"]
    return record


def save_eval(path: Path, record: dict[str, Any], *, overwrite: bool = False) -> None:
    """Write ``record`` (see `eval_record`) as eval.json, atomically."""
    data = {"format": FORMAT, "version": VERSION, **record}
    write_file(Path(path), json.dumps(data, indent=2) + "\n", overwrite)


def load_eval(path: Path) -> dict[str, Any]:
    """A checked eval.json, as the dictionary it holds."""
    data = read_json(Path(path), EVAL, constants=True)
    validate(_EvalFile, data, f"{path}: not a moeprune {EVAL}")
    return dict(data)
