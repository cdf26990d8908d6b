"""The report of one pruning run, or several to compare: ``moeprune report DIR [DIR ...] [--stats S]``.

A run is a folder written by ``moeprune prune``: ``moeprune_plan.json`` (required), ``scores.csv``
and, when ``moeprune eval`` wrote one beside them, ``eval.json``. The report is one self-contained
HTML file (figures embedded as base64 PNG, no external URLs) plus a markdown summary whose figures
sit as PNG files in a ``<name>_files/`` folder beside it.

It opens with the answer: per plan size, the criterion with the lowest KL and perplexity ratio,
the margins to the next and to random, how stable that choice is, and what the selection principle
(arXiv 2606.15716) recommends per goal beside what was measured. Then the selection stability of
every statistics criterion (with ``--stats``), the evaluation, the agreement between runs, the
scores per layer, the kept/pruned maps and the table of runs.

Modules, one job each: ``runs`` (reading the runs), ``agreement`` (Jaccard, Spearman, pairs and
matrices), ``blocks`` (paragraphs, tables, value formatting), ``tables`` (the tables),
``headline`` (the answer and the recommendation), ``stability`` (the stability section),
``figures`` (which figures and the blocks around them), ``plots``, ``plots_maps`` and
``plots_compare`` (drawing, matplotlib: the ``[report]`` extra, Agg only), ``render`` (HTML and markdown) and
``build`` (assembling and writing).
"""

from moeprune.report.agreement import jaccard, rankdata, spearman
from moeprune.report.build import build_report
from moeprune.report.runs import Run, load_run

__all__ = ["Run", "build_report", "jaccard", "load_run", "rankdata", "spearman"]
