"""Evaluation of pruned checkpoints against their originals.

* `perplexity` (`evaluate_lm`, `score_tokens`, `load_lm`): perplexity of the pruned model (and of the
  original with ``base``) on packed token windows from any source `moeprune.calib.data.load_tokens`
  accepts, the mean KL divergence KL(P_original ‖ P_pruned) of the next-token distributions and the
  top-1 agreement, on the same counted positions; writes the ``eval.json`` dictionary.
* ``lmeval`` (optional extra ``moeprune[eval]``): the lm-evaluation-harness bridge, ``run_tasks``,
  called by `evaluate_lm` only when tasks are asked for.

Nothing here prints; the ``moeprune eval`` command does.
"""
