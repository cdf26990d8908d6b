"""moeprune: one-shot expert pruning for Mixture-of-Experts language models.

Public API: `inspect`, `score`, `plan`, `prune`, `verify`, `make_tiny`, and `CRITERIA`.
"""

from moeprune.api import CRITERIA, Scores, inspect, plan, prune, score
from moeprune.errors import MoePruneError
from moeprune.tiny import make_tiny
from moeprune.verify import verify

__version__ = "0.1.0"

__all__ = [
    "CRITERIA",
    "MoePruneError",
    "Scores",
    "__version__",
    "inspect",
    "make_tiny",
    "plan",
    "prune",
    "score",
    "verify",
]
