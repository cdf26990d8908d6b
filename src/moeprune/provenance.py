"""Which model an artefact came from, recorded where it is written and checked wherever two things
are paired (a plan and the model it is applied to, a pruned folder and its base, scores and a model).

A `Source` is the family, expert count, MoE layer list, where the model was read from, and a
fingerprint of its routing: the sha256 of every MoE layer's router weight bytes (the same digest
STATS files carry), which tells two fine-tunes of one architecture apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from moeprune.arch.layout import MoeModel
from moeprune.errors import InputError
from moeprune.io.jsonfile import validate
from moeprune.io.reader import Checkpoint

_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")


@dataclass(frozen=True)
class Source:
    """The model an artefact was made from."""

    model: str
    """The folder or hub id as given."""
    family: str
    n_experts: int
    moe_layers: list[int]
    fingerprint: str
    revision: str | None = None
    """The hub commit, when the model came from the hub cache."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@cache
def _schema() -> Any:
    """The pydantic model of a recorded source, built on first use (no import cost at start-up)."""
    from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

    class SourceFile(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        model: StrictStr
        revision: StrictStr | None = None
        family: StrictStr
        n_experts: StrictInt
        moe_layers: list[StrictInt]
        fingerprint: StrictStr

    return SourceFile


def load_source(data: Any, where: str) -> Source | None:
    """The source recorded in an artefact (``data``: its ``source`` field), checked; None when the
    artefact was written before sources were recorded."""
    if data is None:
        return None
    found = validate(_schema(), data, f"{where}: field source")
    return Source(found.model, found.family, found.n_experts, list(found.moe_layers), found.fingerprint, found.revision)


def fingerprint(ckpt: Checkpoint, moe: MoeModel) -> str:
    """sha256 over the MoE layers of ``"{layer}:"`` and the router weight's bytes."""
    h = hashlib.sha256()
    for layer in moe.layers:
        info = ckpt.info(layer.router)
        h.update(f"{layer.index}:".encode())
        h.update(ckpt.read_raw(info.file, info.start, bytearray(info.nbytes)))
    return h.hexdigest()


def source_of(model: str, ckpt: Checkpoint, moe: MoeModel) -> Source:
    found = _SNAPSHOT.search(str(ckpt.path.resolve()))
    return Source(
        model=model,
        revision=found.group(1) if found else None,
        family=moe.family.model_type,
        n_experts=moe.n_experts,
        moe_layers=[layer.index for layer in moe.layers],
        fingerprint=fingerprint(ckpt, moe),
    )


def check_source(source: Source | None, ckpt: Checkpoint, moe: MoeModel, what: str) -> None:
    """Refuse pairing ``what`` (made from ``source``) with the model ``ckpt``: one line saying which
    model it came from. Artefacts written before sources were recorded (None) are checked by
    shape only, by their readers."""
    if source is None:
        return
    here = (moe.family.model_type, moe.n_experts, [layer.index for layer in moe.layers])
    if (source.family, source.n_experts, source.moe_layers) != here:
        raise InputError(
            f"{what} came from {source.model} ({source.family}, {source.n_experts} experts, "
            f"{len(source.moe_layers)} MoE layers), not from {ckpt.path} ({here[0]}, {here[1]} experts, "
            f"{len(here[2])} MoE layers)"
        )
    if source.fingerprint != fingerprint(ckpt, moe):
        raise InputError(
            f"{what} came from {source.model}, whose router weights differ from those of {ckpt.path} "
            "(another fine-tune or revision of the same architecture)"
        )
