"""GGUF models (llama.cpp): inspect, score and prune routed experts directly in ``.gguf`` files,
read and written with gguf-py. See docs/gguf.md.

`is_gguf` is defined here and the operations are imported on first use, so that the commands on
safetensors checkpoints (which ask `is_gguf` first) never import gguf-py and numpy.
"""

import os
from typing import Any

__all__ = ["inspect", "is_gguf", "make_gguf_plan", "prune", "pruned_overlap", "score"]


def is_gguf(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` names a GGUF file (the CLI dispatches on this)."""
    return str(model).lower().endswith(".gguf")


def __getattr__(name: str) -> Any:
    if name in __all__:
        from moeprune.gguf import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
