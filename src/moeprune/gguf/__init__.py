"""GGUF models (llama.cpp): inspect, score and prune routed experts directly in ``.gguf`` files,
read and written with gguf-py. See docs/gguf.md."""

from moeprune.gguf.ops import inspect, is_gguf, make_gguf_plan, prune, pruned_overlap, score

__all__ = ["inspect", "is_gguf", "make_gguf_plan", "prune", "pruned_overlap", "score"]
