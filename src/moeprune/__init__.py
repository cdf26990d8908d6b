"""moeprune: one-shot expert pruning for Mixture-of-Experts language models.

Public API: `inspect`, `score`, `calibrate`, `plan`, `prune`, `verify`, `evaluate`, `make_tiny`,
and `CRITERIA`. Heavy dependencies (transformers, lm-eval, matplotlib) are imported only by the
functions that need them.
"""

from typing import Any

from moeprune.api import CRITERIA, inspect, plan, prune, score
from moeprune.errors import MoePruneError
from moeprune.scores import Scores
from moeprune.tiny import make_tiny
from moeprune.verify import verify
from moeprune.version import __version__


def __getattr__(name: str) -> Any:
    """`calibrate` and `evaluate` load torch and transformers: imported on first use only."""
    if name == "calibrate":
        from moeprune.calib.run import calibrate

        return calibrate
    if name == "evaluate":
        from moeprune.eval.perplexity import evaluate_lm

        return evaluate_lm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CRITERIA",
    "MoePruneError",
    "Scores",
    "__version__",
    "calibrate",
    "evaluate",
    "inspect",
    "make_tiny",
    "plan",
    "prune",
    "score",
    "verify",
]
