"""moeprune: one-shot expert pruning for Mixture-of-Experts language models.

Public API: `inspect`, `score`, `calibrate`, `plan`, `prune`, `verify`, `evaluate`, `make_tiny`,
and `CRITERIA`. Heavy dependencies (transformers, lm-eval, matplotlib) are imported only by the
functions that need them.
"""

from moeprune.api import CRITERIA, Scores, inspect, plan, prune, score
from moeprune.calib.engine import calibrate
from moeprune.errors import MoePruneError
from moeprune.eval.perplexity import evaluate_lm as evaluate
from moeprune.tiny import make_tiny
from moeprune.verify import verify

__version__ = "0.1.0"

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
