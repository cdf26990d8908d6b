"""docs/families.md accounts for every routed-expert family the installed transformers ships.

Issue 15's promise: a user whose model has routed experts finds it in `moeprune families`, or finds in
docs/families.md why not. The families are found here independently of the registry, by walking
transformers' config classes: a config that declares an expert count or top-k (as a typed field, or as
a value of its default instance) is a routed-expert family. A sub-config (a multimodal model's
``text_config``, a thinker's text model) is accounted for by any config that contains it. A newer
transformers that adds a family turns this test red until the docs say what moeprune does with it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from moeprune.arch import FAMILIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "families.md"

EXPERT_KEYS = {
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "num_routed_experts",
    "n_experts",
    "num_experts_per_tok",
    "moe_topk",
    "moe_top_k",
    "top_k_experts",
    "enable_moe_block",
}
"""Config fields that only a routed-expert model has (a count of experts, or top-k)."""


def _declares_experts(cls: type, depth: int = 0) -> bool:
    fields: set[str] = set()
    for base in cls.__mro__:
        fields |= set(getattr(base, "__annotations__", {}))
    if fields & EXPERT_KEYS:
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values: dict[str, Any] = cls().to_dict()
    except Exception:  # a default that does not build: the annotations above are all there is
        return False
    return _has_experts(values)


def _has_experts(values: dict[str, Any]) -> bool:
    for key, value in values.items():
        if key in EXPERT_KEYS and isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return True
    return False


def _routed_expert_types() -> tuple[set[str], dict[str, set[str]]]:
    """(model types with routed experts, sub-config model type -> the model types containing it),
    sub-configs followed to any depth (Qwen3-Omni: omni -> thinker -> text)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    found: set[str] = set()
    parents: dict[str, set[str]] = {}
    todo: list[tuple[type, str]] = [(CONFIG_MAPPING[t], t) for t in list(CONFIG_MAPPING.keys())]
    seen: set[type] = set()
    while todo:
        cls, owner = todo.pop()  # owner: the model type that names cls (Qwen3-Omni's talker has none)
        if cls in seen:
            continue
        seen.add(cls)
        if _declares_experts(cls):
            found.add(owner)
        for sub in (getattr(cls, "sub_configs", None) or {}).values():
            if not isinstance(sub, type):
                continue
            child = getattr(sub, "model_type", "") or owner
            if child != owner:
                parents.setdefault(child, set()).add(owner)
            todo.append((sub, child))
    return found, parents


def _named(text: str) -> set[str]:
    return set(re.findall(r"`([A-Za-z0-9_.-]+)`", text))


def test_every_routed_expert_family_is_in_the_docs() -> None:
    found, parents = _routed_expert_types()
    named = _named(DOC.read_text())

    def covered(model_type: str, seen: frozenset[str] = frozenset()) -> bool:
        if model_type in named:
            return True
        return any(covered(p, seen | {model_type}) for p in parents.get(model_type, ()) if p not in seen)

    assert len(found) > 60, "the walk found too few families: the detection is broken"
    missing = sorted(t for t in found if not covered(t))
    assert not missing, f"docs/families.md does not say what moeprune does with {missing}"


def test_every_family_the_docs_name_exists() -> None:
    """A model type in the docs' tables that transformers does not know is a typo (or a family that
    left transformers): users search the page for the exact ``model_type`` of their config."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    text = DOC.read_text()
    tables = [line for line in text.splitlines() if line.startswith("| `")]
    first_cells = {m for line in tables for m in _named(line.split("|")[1])}
    unknown = sorted(m for m in first_cells | set(FAMILIES) if m not in CONFIG_MAPPING)
    assert not unknown, f"docs/families.md names model types transformers does not know: {unknown}"
