"""The report of one pruning run, or several to compare: ``moeprune report DIR [DIR ...]``.

A run is a folder written by ``moeprune prune``: ``moeprune_plan.json`` (required), ``scores.csv``
and, when ``moeprune eval`` wrote one beside them, ``eval.json``. The report is one self-contained
HTML file (figures embedded as base64 PNG, no external URLs) plus a markdown summary whose figures
sit as PNG files in a ``<name>_files/`` folder beside it.

Figures: per-layer score distributions with the pruned experts marked (one per distinct set of
scores: a criterion at several ratios shares one), a layer x expert map of kept and pruned experts
(one grid of small maps for more than three runs), and, for runs of the same plan size (experts
pruned per layer), their agreement: per layer for a few pairs (Jaccard index of the pruned sets,
Spearman correlation of the scores), or a runs x runs matrix of the means for many; with more than
three evaluated runs, a dot plot of perplexity ratio, KL and top-1 agreement by criterion and plan
size. Tables: the runs, their agreement (pairs, or the matrix values), and the evaluation of every
run (perplexity, KL, top-1 agreement; task scores with recovery).

``build.py`` reads the runs, computes the agreement and writes the HTML and markdown;
``plots.py`` draws the figures with matplotlib (the ``[report]`` extra, imported lazily, Agg only).
"""

from moeprune.report.build import Run, build_report, jaccard, load_run, rankdata, spearman

__all__ = ["Run", "build_report", "jaccard", "load_run", "rankdata", "spearman"]
