"""``moeprune report``: the report builds from saved runs and contains every figure; the agreement
helpers (Jaccard, Spearman with average-tie ranks) equal hand computations."""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from moeprune.cli import main
from moeprune.errors import InputError
from moeprune.plan import HIGHER_PRUNED, LOWER_PRUNED, LayerPlan, PrunePlan
from moeprune.report import Run, build_report, jaccard, load_run, rankdata, spearman
from moeprune.report.agreement import agreement, expected_jaccard

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
    return [unescape(t) for t in re.findall(r'data-title="(.*?)"', html)]


@needs_mpl
def test_report_of_two_runs(runs: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
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
    assert "<td>random tokens</td>" not in html and "data: random tokens: 512 tokens" in html
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


# --- many runs: groups by plan size, a matrix per big group, shared score figures, one map grid --------

MANY = [("aimer", 0), ("magnitude", 0), ("random", 0), ("random", 1)]  # (criterion, seed)
"""Four scorings at two ratios: eight runs, two plan sizes (2 and 4 of 8 experts) of four runs each."""


def _name(criterion: str, seed: int, percent: int) -> str:
    return f"{criterion}{seed or ''}-{percent}"


@pytest.fixture(scope="module")
def many(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Nine pruned tiny qwen3_moe checkpoints (8 experts per layer): the eight of MANY, and aimer-75;
    all but four evaluated."""
    model = tiny("qwen3_moe")
    root = tmp_path_factory.mktemp("many")
    out = {}
    for percent in (50, 25):
        for criterion, seed in MANY:
            name = _name(criterion, seed, percent)
            out[name] = root / name
            args = ["-c", criterion, "--seed", str(seed), "--ratio", str(percent / 100), "-o", str(out[name])]
            main(["-q", "prune", str(model), *args])
    out["aimer-75"] = root / "aimer-75"  # 6 of 8: no other run of its plan size
    main(["-q", "prune", str(model), "--ratio", "0.75", "-o", str(out["aimer-75"])])
    for k, name in enumerate(sorted(out)):
        if name in ("magnitude-50", "random-50", "random1-50", "aimer-75"):
            continue  # not evaluated
        tasks = {"arc_easy": {"metric": "acc_norm", "score": 0.5, "base": 0.625, "recovery": 0.8}}
        ev = {"base": "tiny-base", "perplexity": {"pruned": 100.0 + k, "base": 100.0, "ratio": 1 + k / 100}}
        (out[name] / "eval.json").write_text(json.dumps({**ev, "kl_mean": 0.01 * (k + 1), "tasks": tasks}))
    return out


def _md_table(md: str, title: str) -> list[list[str]]:
    """The body rows of the markdown table under ``### title``."""
    lines = md.split(f"### {title}\n", 1)[1].strip().splitlines()
    assert lines[1].startswith("|---")
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _pruned(run: Path) -> dict[int, set[int]]:
    plan = json.loads((run / "moeprune_plan.json").read_text())
    return {int(i): set(v["pruned"]) for i, v in plan["layers"].items()}


@needs_mpl
def test_report_of_many_runs(many: dict[str, Path], tmp_path: Path) -> None:
    dirs = [many[n] for n in ("random1-50", "aimer-25", "magnitude-50", "random-25", "aimer-50", "random1-25")]
    dirs += [many[n] for n in ("magnitude-25", "random-50")]
    out = build_report(dirs, tmp_path / "report.html")
    html = out.read_text()
    md = (tmp_path / "report.md").read_text()
    # sorted by plan size, then criterion in order of first appearance (random, aimer, magnitude), then as given
    small = ["random-25", "random1-25", "aimer-25", "magnitude-25"]  # 2 of 8 pruned per layer
    large = ["random1-50", "random-50", "aimer-50", "magnitude-50"]  # 4 of 8

    # one matrix per plan size (4 runs = 6 pairs), one grid of maps, one figure per distinct scores
    # (a criterion at both ratios shares one; random with another seed has other scores)
    assert _titles(html) == [
        "Evaluation by run and plan size",  # random twice per plan size: a row per run
        "Agreement between runs, 2 of 8 experts pruned per layer",
        "Agreement between runs, 4 of 8 experts pruned per layer",
        "Scores per layer: random (random-25, random-50)",
        "Scores per layer: random (random1-25, random1-50)",
        "Scores per layer: aimer (aimer-25, aimer-50)",
        "Scores per layer: magnitude (magnitude-25, magnitude-50)",
        "Kept and pruned experts: 8 runs",
    ]
    assert html.count(IMG) == 8
    assert f"Rows and columns: {', '.join(small)}." in html and f"Rows and columns: {', '.join(large)}." in html
    assert "one panel per run: " in html and all(f"{n}-{p}" in html for n in ("aimer", "random1") for p in (25, 50))
    # the second matrix has the same scores as the first: its Spearman half is left out, and said so
    assert "The Spearman correlations of the scores are those of 2 of 8 experts pruned per layer" in html
    assert "<figcaption" not in html  # the title is drawn in the figure and is its alt text, not repeated
    # agreement only within a plan size: no pair table, no pair across sizes
    assert "run A" not in html and " vs " not in html
    pairs, notes = agreement([load_run(d) for d in dirs])
    assert len(pairs) == 12 and not notes
    assert all({p.a, p.b} <= set(small) or {p.a, p.b} <= set(large) for p in pairs)

    # the matrix values: Jaccard below the diagonal, Spearman above, from the plans by hand
    for names, size in ((small, "2 of 8"), (large, "4 of 8")):
        rows = _md_table(md, f"Values: {size} experts pruned per layer")
        assert [r[0] for r in rows] == [f"{i + 1}. {n}" for i, n in enumerate(names)]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                cell = rows[i][j + 1]
                if i == j:
                    assert cell == ""
                    continue
                pa, pb = _pruned(many[a]), _pruned(many[b])
                if i > j:
                    by_hand = [len(pa[k] & pb[k]) / len(pa[k] | pb[k]) for k in sorted(pa)]
                    assert cell == f"{sum(by_hand) / len(by_hand):.3f}", (a, b)
                else:
                    ra, rb = load_run(many[a]), load_run(many[b])
                    sign = {"aimer": -1.0}  # higher pruned: negated so that higher means kept
                    rho = [
                        spearman(
                            [sign.get(ra.plan.criterion, 1.0) * v for v in ra.scores[k]],
                            [sign.get(rb.plan.criterion, 1.0) * v for v in rb.scores[k]],
                        )
                        for k in sorted(ra.scores)
                    ]
                    assert cell == f"{sum(rho) / len(rho):.3f}", (a, b)
    # the same scores (a criterion at both ratios) give the same Spearman in both matrices
    aimer_small = _md_table(md, "Values: 2 of 8 experts pruned per layer")[2]  # aimer-25
    aimer_large = _md_table(md, "Values: 4 of 8 experts pruned per layer")[2]  # aimer-50
    assert aimer_small[4] == aimer_large[4] != "—"  # against magnitude

    # every run in the evaluation table, by plan size then criterion; dashes for the unevaluated
    rows = _md_table(md, "Perplexity and agreement with the base model")
    assert [r[0] for r in rows] == small + large
    by = {r[0]: r for r in rows}
    k = sorted(many).index("random1-25")  # the fixture's perplexity 100 + k, KL 0.01 (k + 1)
    assert by["random1-25"][1:4] == ["random", "2 of 8", f"{100 + k}"]
    assert by["random1-25"][6] == f"{0.01 * (k + 1):.4g}"
    assert by["aimer-25"][3:6] == ["100", "100", "1"]
    assert by["magnitude-50"][3:] == ["—"] * 5
    assert "Not evaluated (no eval.json): random1-50, random-50, magnitude-50." in md
    assert "Every evaluated run: base: tiny-base." in md
    tasks = _md_table(md, "Tasks")
    assert tasks[0] == ["base model", "—", "0", "0.625", "—"]
    assert [t[0] for t in tasks[1:]] == [*small, "aimer-50"]
    assert all(t[3:] == ["0.5 (80%)", "80%"] for t in tasks[1:])

    # self-contained, and the markdown links every figure
    assert not re.search(r"https?://", html) and "href=" not in html
    assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    links = re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", md)
    assert len(links) == 8 and all((tmp_path / link).read_bytes()[:4] == b"\x89PNG" for link in links)


@needs_mpl
def test_report_groups_of_few_pairs(many: dict[str, Path], tmp_path: Path) -> None:
    """Two plan sizes of two runs each and one run alone: per-layer lines and a pair table per size."""
    dirs = [many[n] for n in ("aimer-50", "magnitude-50", "aimer-75", "aimer-25", "magnitude-25")]
    html = build_report(dirs, tmp_path / "r.html").read_text()
    md = (tmp_path / "r.md").read_text()
    assert _titles(html) == [
        "Agreement of pruned experts per layer (Jaccard index): 2 of 8 experts pruned per layer",
        "Agreement of expert scores per layer (Spearman correlation): 2 of 8 experts pruned per layer",
        "Agreement of pruned experts per layer (Jaccard index): 4 of 8 experts pruned per layer",
        "Agreement of expert scores per layer (Spearman correlation): 4 of 8 experts pruned per layer",
        "Scores per layer: aimer (aimer-25, aimer-50, aimer-75)",
        "Scores per layer: magnitude (magnitude-25, magnitude-50)",
        "Kept and pruned experts: 5 runs",
    ]
    assert html.count(IMG) == 7  # three evaluated runs: no evaluation figure
    assert "Not compared, no other run of their plan size: aimer-75 (6 of 8 experts pruned per layer)." in md
    rows = _md_table(md, "2 of 8 experts pruned per layer: 2 runs")
    a, b = _pruned(many["aimer-25"]), _pruned(many["magnitude-25"])
    by_hand = [len(a[k] & b[k]) / len(a[k] | b[k]) for k in sorted(a)]
    mean, least = f"{sum(by_hand) / len(by_hand):.3g}", f"{min(by_hand):.3g}"
    # random 2 of 8: |A∩B| = 1 with probability 12/28, 2 with 1/28: 12/28 x 1/3 + 1/28 = 5/28
    assert rows == [["aimer-25", "magnitude-25", "3", mean, least, "0.179", rows[0][6]]]
    assert [r[:2] for r in _md_table(md, "4 of 8 experts pruned per layer: 2 runs")] == [["aimer-50", "magnitude-50"]]
    assert "aimer-25 vs aimer-50" not in html and "aimer-75 vs" not in html and "vs aimer-75" not in html
    # the runs of every plan size, each in the evaluation table
    rows = _md_table(md, "Perplexity and agreement with the base model")
    assert [r[0] for r in rows] == ["aimer-25", "magnitude-25", "aimer-50", "magnitude-50", "aimer-75"]


def test_agreement_pairs_only_equal_plan_sizes() -> None:
    a = _run("a", LOWER_PRUNED, [1.0, 2.0, 3.0, 4.0], [0, 1])
    b = _run("b", LOWER_PRUNED, [1.0, 3.0, 2.0, 4.0], [0, 2])
    c = _run("c", LOWER_PRUNED, [1.0, 2.0, 3.0, 4.0], [0])  # 1 of 4: compared with nothing
    d = _run("d", LOWER_PRUNED, [4.0, 3.0, 2.0, 1.0], [3])
    pairs, notes = agreement([a, c, b, d])
    assert [(p.a, p.b) for p in pairs] == [("c", "d"), ("a", "b")] and not notes
    assert pairs[0].jaccard == [0.0] and pairs[1].jaccard == [1 / 3]
    assert pairs[0].random_jaccard == pytest.approx(expected_jaccard(4, 1)) == 0.25


# --- the answer first, selection stability, the page as a browser shows it ------------------------------

KL = {("man", 25): 0.01, ("gean", 25): 0.02, ("msan", 25): 0.05, ("random", 25): 0.1, ("man", 50): 0.08}
KL |= {("gean", 50): 0.04}
"""KL of each (criterion, percent) run: man wins at 25 % (four runs: a matrix), gean at 50 % (two: lines)."""


def _sharded_stats(model: Path, folder: Path, n_shards: int = 4) -> None:
    """A STATS folder for ``model`` with synthetic per-shard moments (routed-token counts whole)."""
    import torch

    from moeprune.api import open_model
    from moeprune.provenance import fingerprint as model_fingerprint
    from moeprune.scoring.stats import RoutingStats

    ckpt, moe = open_model(model)
    with ckpt:
        layers = [layer.index for layer in moe.layers]
        gen = torch.Generator().manual_seed(0)
        shards = torch.rand(len(layers), n_shards, moe.n_experts, 3, 3, generator=gen, dtype=torch.float64) * 4
        shards[..., 0, 0] = torch.randint(0, 9, shards.shape[:3], generator=gen).double()
        meta = {"family": moe.family.model_type, "model_fingerprint": model_fingerprint(ckpt, moe)}
        meta |= {"finished_layers": layers, "n_tokens": 4096, "model": str(model)}
        RoutingStats(layers, shards.sum(dim=1), meta, shards).save(folder)


@pytest.fixture(scope="module")
def scored(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A STATS folder with shards and five runs pruned from it (man, gean at 25 % and 50 %; random at
    25 %), each evaluated with the KL of :data:`KL`, under a very long folder name."""
    model = tiny("qwen3_moe")
    root = tmp_path_factory.mktemp("scored")
    _sharded_stats(model, root / "stats")
    out = {}
    for (criterion, percent), kl in KL.items():
        name = f"{criterion}-{percent}"
        out[name] = root / f"a-rather-long-folder-name-for-a-pruning-run-{name}"
        args = ["-c", criterion, "--stats", str(root / "stats"), "--ratio", str(percent / 100), "-o", str(out[name])]
        main(["-q", "prune", str(model), *args])
        ev = {"base": str(model), "perplexity": {"pruned": 10 * (1 + kl), "base": 10.0, "ratio": 1 + kl}}
        ev["data"] = {"source": str(root / "heldout.jsonl"), "n_tokens": 512, "short": True}
        (out[name] / "eval.json").write_text(json.dumps({**ev, "kl_mean": kl, "top1_agreement": 1 - kl}))
    return root / "stats", out


@pytest.fixture(scope="module")
def scored_report(
    scored: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[Any]]:
    """The report of the scored runs with their STATS (HTML), and every matplotlib figure drawn for it."""
    from moeprune.report import plots

    stats, runs = scored
    drawn: list[Any] = []
    png = plots._png
    with pytest.MonkeyPatch.context() as m, warnings.catch_warnings():
        warnings.filterwarnings("error", "constrained_layout not applied")  # axes squeezed to nothing
        m.setattr(plots, "_png", lambda fig: (drawn.append(fig), png(fig))[1])
        out = build_report(list(runs.values()), tmp_path_factory.mktemp("report") / "r.html", stats=stats)
    return out.read_text(), drawn


def _text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


@needs_mpl
def test_report_opens_with_the_answer_and_measures_stability(
    scored: tuple[Path, dict[str, Path]], scored_report: tuple[str, list[Any]]
) -> None:
    from moeprune.scoring.stability import stability
    from moeprune.scoring.stats import RoutingStats

    stats = scored[0]
    html = scored_report[0]
    sections = re.findall(r"<h2>(.*?)</h2>", html)
    assert sections[:2] == ["Which criterion lost least", "Selection stability"] and sections[-1] == "Runs"
    lead = " ".join(_text(p) for p in re.findall(r'<p class="lead">(.*?)</p>', html, re.S))
    assert lead.startswith("Base model: model (qwen3_moe, 8 routed experts in each of 3 MoE layers).")
    assert (
        "Removing 2 of 8 experts per layer (25%), man lost least by both measures: KL 0.01 (next: gean 0.02, " in lead
    )
    assert "2.0× as much; random: 0.1, 10.0× as much)" in lead and "perplexity ×1.010" in lead
    assert "Removing 4 of 8 experts per layer (50%), gean lost least by both measures: KL 0.04 (next: man 0.08" in lead

    # stability: every statistics criterion at each of its plan sizes, the same numbers as scoring/stability.py
    routing = RoutingStats.load(stats)
    rows = [r for r in re.findall(r"<tr>(.*?)</tr>", html) if "experts pruned per layer</td><td>0." in r]
    cells = [re.findall(r"<td>(.*?)</td>", r) for r in rows]
    assert [(c[0], c[1]) for c in cells] == [
        ("man", "2 of 8 experts pruned per layer"),
        ("gean", "2 of 8 experts pruned per layer"),
        ("msan", "2 of 8 experts pruned per layer"),
        ("man", "4 of 8 experts pruned per layer"),
        ("gean", "4 of 8 experts pruned per layer"),
    ]
    for c in cells:
        s = stability(routing, [c[0]], 2 if c[1].startswith("2") else 4)[0]
        assert c[2] == f"{s.overall:.3f}" and c[4] == f"{s.halves_overall:.3f}" and c[6] == f"{s.random:.3f}"
    assert "man's selection: mean Jaccard" in lead
    assert "random read no calibration data" not in html  # random is not a weight criterion to vouch for
    assert "Selection stability by the share of the calibration data" in _titles(html)
    # the recommendation beside what was measured
    assert "What the selection principle recommends (arXiv 2606.15716)" in html
    assert "<td>task-agnostic</td><td>man or msan</td>" in html and "man: 1st of 4 by KL at 2 of 8" in html
    assert "msan: 3rd of 4 by KL at 2 of 8" in html
    assert "gean: 1st of 2 by KL at 4 of 8" in html

    # no temporary or absolute path anywhere on the page; data in words
    page = re.sub(r"data:image/png;base64,[^\"]+", "", html)
    assert str(stats.parent) not in page and "/tmp" not in page
    assert "heldout.jsonl: 512 tokens (the source ran out before the tokens asked for)" in _text(html)
    assert "short=True" not in html


@needs_mpl
def test_old_statistics_without_shards_say_why_there_is_no_stability(
    scored: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    from moeprune.scoring.stats import RoutingStats

    stats, runs = scored
    old = tmp_path / "old"
    shutil.copytree(stats, old)
    routing = RoutingStats.load(old)
    routing.shards = None
    routing.save(old)
    html = build_report([runs["man-25"]], tmp_path / "r.html", stats=old).read_text()
    assert "Selection stability" not in re.findall(r"<h2>(.*?)</h2>", html)
    assert "no selection-stability section: these statistics were written without per-shard moments" in html


@needs_mpl
def test_single_run_report_with_stability(scored: tuple[Path, dict[str, Path]], tmp_path: Path, cli: Cli) -> None:
    stats, runs = scored
    out = tmp_path / "one.html"
    r = cli("report", str(runs["gean-50"]), "--stats", str(stats), "-o", str(out))
    assert r.code == 0, r
    html = out.read_text()
    lead = " ".join(_text(p) for p in re.findall(r'<p class="lead">(.*?)</p>', html, re.S))
    assert re.match(r"\S+gean-50: gean pruned 4 of 8 experts in every MoE layer \(50%\) of model \(qwen3_moe", lead)
    assert "Against the base model: KL 0.04, perplexity ×1.040. Its selection: mean Jaccard " in lead
    assert [t.split(":")[0] for t in _titles(html)] == [
        "Selection stability by the share of the calibration data",
        "Scores per layer",
        "Kept and pruned experts",
    ]
    # another model's statistics are refused before anything is drawn
    r = cli("report", str(runs["gean-50"]), "--stats", str(tmp_path), "-o", str(tmp_path / "x.html"))
    assert r.code == 2 and r.err.count("\n") == 1, r


@needs_mpl
def test_a_folder_given_twice_is_shown_once(runs: dict[str, Path], tmp_path: Path) -> None:
    out = build_report([runs["aimer"], runs["aimer"]], tmp_path / "r.html")
    html = out.read_text()
    page = re.sub(r"data:image/png;base64,[^\"]+", "", html)
    assert "(2)" not in page and "//" not in page
    assert "aimer was given more than once: shown once" in html
    assert html.count("<td>aimer</td><td>aimer</td><td>higher pruned</td>") == 1  # one row in the runs table


@needs_mpl
def test_every_figure_renders_its_full_title_inside_the_image(scored_report: tuple[str, list[Any]]) -> None:
    """Text extents measured by matplotlib, not by eye: everything drawn (titles, axis labels, legends,
    tick labels) lies inside its figure, and the drawn title (lines joined) is the figure's full title;
    with run names of 50 characters, in every kind of figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    html, drawn = scored_report
    titles = _titles(html)
    kinds = {re.sub(r"[:,].*", "", t) for t in titles}
    assert kinds == {
        "Selection stability by the share of the calibration data",
        "Evaluation by criterion and plan size",
        "Agreement between runs",  # the matrix of the four 25 % runs
        "Agreement of pruned experts per layer (Jaccard index)",  # the two 50 % runs
        "Agreement of expert scores per layer (Spearman correlation)",
        "Scores per layer",
        "Kept and pruned experts",
    }
    assert len(drawn) == len(titles)
    evaluation = drawn[titles.index("Evaluation by criterion and plan size")]
    for ax, unpruned in zip(evaluation.axes, (1.0, 0.0, 1.0), strict=True):  # ratio 1, KL 0, top-1 1 in view
        lo, hi = ax.get_xlim()
        assert lo < unpruned < hi
    for fig, full in zip(drawn, titles, strict=True):
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        inside = fig.get_tightbbox(renderer)  # inches: everything drawn (titles, labels, ticks, legends)
        width, height = fig.get_size_inches()
        assert inside.x0 >= -0.01 and inside.y0 >= -0.01, full
        assert inside.x1 <= width + 0.01 and inside.y1 <= height + 0.01, full
        title = fig._suptitle.get_window_extent(renderer)  # type: ignore[union-attr]
        assert title.x0 >= 0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1, full
        assert fig._suptitle is not None and " ".join(fig._suptitle.get_text().split()) == " ".join(full.split())
