"""``moeprune report``: the report builds from saved runs and contains every figure; the agreement
helpers (Jaccard, Spearman with average-tie ranks) equal hand computations."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from moeprune.cli import main
from moeprune.errors import InputError
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED, LayerPlan, PrunePlan
from moeprune.report import Run, build_report, jaccard, rankdata, spearman
from moeprune.report.build import agreement, expected_jaccard

Tiny = Callable[..., Path]
Cli = Callable[..., Any]

IMG = '<img src="data:image/png;base64,'


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpl = pytest.mark.skipif(not _has_matplotlib(), reason="needs matplotlib (pip install 'moeprune[report]')")

EVAL = {
    "model": "runs/aimer",
    "base": "tiny-base",
    "data": {"source": "random tokens", "tokens": 512},
    "perplexity": {"pruned": 123.4, "base": 100.0, "ratio": 1.234},
    "kl_mean": 0.0567,
    "top1_agreement": 0.875,
    "tasks": {
        "arc_easy": {"metric": "acc_norm", "score": 0.5, "base": 0.625, "recovery": 0.8},
        "boolq": {"metric": "acc", "score": 0.75},  # base and recovery missing
    },
}


@pytest.fixture(scope="module")
def runs(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny qwen3_moe pruned by half with aimer and with magnitude, through the CLI."""
    model = tiny("qwen3_moe")
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for criterion in ("aimer", "magnitude"):
        out[criterion] = root / criterion
        main(["-q", "prune", str(model), "-c", criterion, "--ratio", "0.5", "-o", str(out[criterion])])
    (out["aimer"] / "eval.json").write_text(json.dumps(EVAL))
    return out


def _titles(html: str) -> list[str]:
    return re.findall(r"<figcaption>(.*?)</figcaption>", html)


@needs_mpl
def test_report_of_two_runs(runs: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    r = cli("report", str(runs["aimer"]), str(runs["magnitude"]), "-o", str(out))
    assert r.code == 0, r
    html = out.read_text()
    # 2 score distributions + 2 kept/pruned maps + Jaccard + Spearman
    assert html.count(IMG) == 6
    assert _titles(html) == [
        "Agreement of pruned experts per layer (Jaccard index)",
        "Agreement of expert scores per layer (Spearman correlation)",
        "Scores per layer: aimer",
        "Scores per layer: magnitude",
        "Kept and pruned experts: aimer",
        "Kept and pruned experts: magnitude",
    ]
    # the evaluation tables, with dashes for what eval.json leaves out
    for cell in ("perplexity (pruned)", "123.4", "1.234", "0.0567", "0.875", "arc_easy", "acc_norm", "0.625", "0.8"):
        assert f">{cell}<" in html, cell
    assert re.search(r"<td>boolq</td><td>acc</td><td>0.75</td><td>—</td><td>—</td>", html)
    assert "<td>random tokens</td>" not in html and "source=random tokens, tokens=512" in html
    # self-contained: no URL, no file reference outside the data: images
    assert not re.search(r"https?://", html)
    assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    assert "href=" not in html
    # markdown summary links every figure, written beside it
    md = (tmp_path / "out" / "report.md").read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", md)
    assert len(links) == 6
    for link in links:
        png = tmp_path / "out" / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| aimer | magnitude |" in md and "arc_easy" in md


@needs_mpl
def test_report_of_one_run(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "only"
    shutil.copytree(runs["magnitude"], run, ignore=shutil.ignore_patterns("*.safetensors"))
    (run / "eval.json").write_text(json.dumps({"perplexity": {"pruned": 7.5}, "tasks": {"rte": {}}}))
    out = build_report([run], tmp_path / "one.html")
    html = out.read_text()
    assert html.count(IMG) == 2
    assert _titles(html) == ["Scores per layer: only (magnitude)", "Kept and pruned experts: only (magnitude)"]
    assert "Agreement" not in html
    assert ">7.5<" in html and "<td>rte</td>" in html
    md = (tmp_path / "one.md").read_text()
    assert "one_files/scores-1-only.png" in md and (tmp_path / "one_files" / "map-1-only.png").is_file()

    (run / "scores.csv").unlink()  # without scores: the map only, and a note saying so
    html = build_report([run], tmp_path / "one.html").read_text()
    assert html.count(IMG) == 1 and "has no scores.csv" in html
    assert not (tmp_path / "one_files" / "scores-1-only.png").exists()


@pytest.mark.parametrize("make", ["empty", "missing", "bad_plan"])
def test_not_a_run(make: str, runs: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    if make != "missing":
        bad.mkdir()
    if make == "bad_plan":
        (bad / "moeprune_plan.json").write_text("{not json")
    out = tmp_path / "report.html"
    r = cli("report", str(runs["aimer"]), str(bad), "-o", str(out))
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], r
    assert "moeprune_plan.json" in lines[0] or "moeprune plan" in lines[0] or "no such folder" in lines[0]
    assert not out.exists()


def test_no_argument(cli: Cli) -> None:
    r = cli("report")
    assert r.code == 2 and r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1, r


def test_without_matplotlib(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(InputError, match=r"pip install 'moeprune\[report\]'"):
        build_report([runs["aimer"]], tmp_path / "r.html")


# --- agreement helpers -----------------------------------------------------------------------------


def test_jaccard() -> None:
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 2 / 4
    assert jaccard([0, 1], [2, 3]) == 0.0
    assert jaccard([5, 6], [6, 5]) == 1.0
    assert jaccard([], []) == 1.0
    # two random 2-subsets of 4: |A∩B| = 0, 1, 2 with probability 1/6, 4/6, 1/6 -> 0, 1/3, 1
    assert expected_jaccard(4, 2) == pytest.approx(4 / 6 * 1 / 3 + 1 / 6)
    assert expected_jaccard(8, 8) == 1.0


def test_rankdata_averages_ties() -> None:
    assert rankdata([10.0, 20.0, 20.0, 5.0]) == [2.0, 3.5, 3.5, 1.0]
    assert rankdata([1.0, 1.0, 1.0]) == [2.0, 2.0, 2.0]
    assert rankdata([]) == []


def test_spearman() -> None:
    # no ties: 1 - 6 Σd² / (n (n² - 1)) with d = (-1, 1, -1, 1, 0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # ties: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4), Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([0.1, 5.0, 2.0], [1, 1000, 3]) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant: undefined
    assert math.isnan(spearman([1], [1]))
    assert math.isnan(spearman([1, float("nan")], [1, 2]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def _run(name: str, direction: str, scores: list[float], pruned: list[int], layer: int = 3) -> Run:
    kept = [j for j in range(len(scores)) if j not in pruned]
    plan = PrunePlan(name, direction, 0.5, len(scores), {layer: LayerPlan(kept, pruned)}, {})
    return Run(Path(name), name, plan, {layer: scores})


def test_agreement_orients_scores_by_direction() -> None:
    low = _run("low", LOWER_PRUNED, [1.0, 2.0, 3.0, 4.0], [0, 1])
    high = _run("high", HIGHER_PRUNED, [-1.0, -2.0, -3.0, -4.0], [0, 1])  # the same choice, scores negated
    other = _run("other", LOWER_PRUNED, [4.0, 3.0, 2.0, 1.0], [2, 3])
    elsewhere = _run("elsewhere", LOWER_PRUNED, [1.0, 2.0, 3.0, 4.0], [0, 1], layer=5)
    pairs, notes = agreement([low, high, other, elsewhere])
    by = {p.label: p for p in pairs}
    assert by["low vs high"].jaccard == [1.0] and by["low vs high"].spearman == [pytest.approx(1.0)]
    assert by["low vs other"].jaccard == [0.0] and by["low vs other"].spearman == [pytest.approx(-1.0)]
    assert by["low vs high"].random_jaccard == pytest.approx(expected_jaccard(4, 2))
    assert len(pairs) == 3 and len(notes) == 3 and all("share no MoE layer" in n for n in notes)
