"""Which model an artefact came from, recorded where it is written and checked wherever two things
are paired (a plan and the model it is applied to, a pruned folder and its base, scores and a model).

A `Source` is the family, expert count, MoE layer list, where the model was read from, and a
fingerprint of its routing: the sha256 of every MoE layer's router weight bytes (the same digest
STATS files carry), which tells two fine-tunes of one architecture apart.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from moeprune.arch.layout import MoeModel
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint

_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")


class Source(BaseModel):
    """The model an artefact was made from."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: StrictStr
    """The folder or hub id as given."""
    revision: StrictStr | None = None
    """The hub commit, when the model came from the hub cache."""
    family: StrictStr
    n_experts: StrictInt
    moe_layers: list[StrictInt]
    fingerprint: StrictStr


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
