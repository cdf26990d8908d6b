"""Which criterion to use for a deployment goal: the selection principle of arXiv 2606.15716.

- **task-agnostic** (the downstream distribution is unknown; the calibration text is generic, e.g.
  C4): routed-token-averaged, gate-free activation criteria, ``man`` (or ``msan``), which ask how
  strongly an expert acts when it is used rather than how often this calibration set used it;
  with no calibration data, ``aimer`` (calibration-free, the same regime).
- **task-specific** (the calibration text comes from the target domain): keep routing frequency
  and gate weights, ``gean`` = S(0,1,1) (or ``s022`` = S(0,2,2)); this needs statistics from a
  calibration on that domain, so without them the advice is to calibrate first (``aimer`` until
  then).

With no goal and no criterion, moeprune uses ``aimer`` as it always has, and says what each goal
would choose.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeprune.errors import InputError

GOALS = ("task-agnostic", "task-specific")
PAPER = "arXiv 2606.15716"


@dataclass(frozen=True)
class Advice:
    """The criterion the principle recommends for a goal, its runner-up, and why, in words."""

    goal: str
    criterion: str
    alternative: str | None
    reason: str
    recommended: tuple[str, ...]
    """The criteria the principle names for the goal (with statistics)."""


def recommend(goal: str, has_stats: bool) -> Advice:
    """The recommendation for ``goal`` ("task-agnostic" or "task-specific") given whether
    calibration statistics are available."""
    if goal == "task-agnostic":
        if has_stats:
            why = "the mean activation norm over routed tokens, free of this calibration set's routing preferences"
            return Advice(goal, "man", "msan", f"{why} ({PAPER})", ("man", "msan"))
        why = "no calibration data: the calibration-free criterion, same regime"
        return Advice(goal, "aimer", None, f"{why} ({PAPER}; AIMER, arXiv 2603.18492)", ("man", "msan"))
    if goal == "task-specific":
        if has_stats:
            why = "gate-weighted activation sums over routed tokens keep the target domain's routing"
            return Advice(
                goal,
                "gean",
                "s022",
                f"{why} ({PAPER}); the calibration text must come from the target domain",
                ("gean", "s022"),
            )
        why = (
            "calibrate on text from the target domain (moeprune calibrate MODEL --data YOUR_TEXT -o STATS) "
            "and pass --stats to use gean; until then the calibration-free criterion"
        )
        return Advice(goal, "aimer", None, f"{why} ({PAPER})", ("gean", "s022"))
    raise InputError(f"unknown goal {goal!r}; choose {' or '.join(GOALS)}")


def choose(criterion: str | None, goal: str | None, has_stats: bool) -> tuple[str, str]:
    """(the criterion to use, a line to print): the given criterion, or the goal's recommendation,
    or ``aimer`` with what each goal would choose."""
    if criterion is not None:
        if goal is None:
            return criterion, ""
        advice = recommend(goal, has_stats)
        if criterion in (advice.criterion, *advice.recommended) or criterion == "all":
            return criterion, ""
        return criterion, (
            f"note: for a {goal} goal the selection principle recommends {_names(advice)}; using {criterion} as asked"
        )
    if goal is None:
        agnostic, specific = recommend("task-agnostic", has_stats), recommend("task-specific", has_stats)
        return "aimer", (
            f"criterion: aimer (the default). For a goal, pass --goal: task-agnostic -> {agnostic.criterion}, "
            f"task-specific -> {specific.criterion}{'' if has_stats else ' (after calibrating on the target domain)'}"
        )
    advice = recommend(goal, has_stats)
    return advice.criterion, f"criterion: {advice.criterion} for a {goal} goal: {advice.reason}"


def _names(advice: Advice) -> str:
    return " or ".join(advice.recommended) + (
        "" if advice.criterion in advice.recommended else f" ({advice.criterion} without statistics)"
    )
