"""Routing statistics files and the unified criteria computed from them.

The moments here are synthetic (a calibration run is not needed to test the arithmetic): every
named criterion is checked against a hand computation, and every way a STATS folder can belong
to another model or release is refused with one line.
"""

from __future__ import annotations

import json
import math
import shutil
from itertools import combinations

import numpy as np
import pytest
import torch

from moeprune.api import open_model
from moeprune.errors import InputError
from moeprune.provenance import fingerprint as model_fingerprint
from moeprune.scoring.stats import META, MOMENTS, RoutingStats
from moeprune.scoring.unified import NAMED, stats_criterion


def _stats_for(path, seed: int = 0) -> RoutingStats:  # type: ignore[no-untyped-def]
    """Synthetic but consistent moments for the model at ``path`` (expert 0 never routed)."""
    ckpt, moe = open_model(path)
    with ckpt:
        layers = [layer.index for layer in moe.layers]
        gen = torch.Generator().manual_seed(seed)
        m = torch.rand(len(layers), moe.n_experts, 3, 3, generator=gen, dtype=torch.float64) * 10
        m[:, :, 0, 0] = torch.randint(1, 50, (len(layers), moe.n_experts), generator=gen).double()
        m[:, 0] = 0.0  # an expert that received no token
        meta = {
            "family": moe.family.model_type,
            "model_fingerprint": model_fingerprint(ckpt, moe),
            "finished_layers": layers,
        }
        return RoutingStats(layers, m, meta)


def test_named_criteria_are_the_papers_exponents() -> None:
    table = {n: (c.b, c.alpha, c.beta) for n, c in NAMED.items()}
    assert table == {
        "frequency": (0, 0, 0),
        "seer": (0, 1, 0),
        "ean": (0, 0, 1),
        "reap": (1, 1, 1),
        "man": (1, 0, 1),
        "msan": (1, 0, 2),
        "gean": (0, 1, 1),
        "s022": (0, 2, 2),
    }
    assert stats_criterion("unified:1,2,0").b == 1
    assert stats_criterion("aimer") is None
    with pytest.raises(InputError):
        stats_criterion("unified:2,0,1")


@pytest.mark.parametrize("name", [*NAMED, "unified:1,2,2", "unified:0,2,1"])
def test_criterion_equals_hand_computation(name: str) -> None:
    c = stats_criterion(name)
    m = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    # per expert: list of (g, ‖f‖) of its routed tokens
    tokens = {0: [], 1: [(0.5, 2.0)], 2: [(0.25, 1.0), (0.75, 3.0), (0.5, 0.5)], 3: [(1.0, 4.0), (0.1, 0.2)]}
    for j, pairs in tokens.items():
        for g, f in pairs:
            for a in range(3):
                for b in range(3):
                    m[0, j, a, b] += g**a * f**b
    stats = RoutingStats([5], m, {})
    got = c.scores(stats)[5]
    for j, pairs in tokens.items():
        total = sum(g**c.alpha * f**c.beta for g, f in pairs)
        want = (total / len(pairs) if pairs else 0.0) if c.b else total
        assert math.isclose(got[j], want, rel_tol=1e-12, abs_tol=1e-15), (name, j)
    assert got[0] == 0.0  # never routed: scores 0, pruned first


def test_save_load_round_trip_and_merge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = torch.rand(2, 8, 3, 3, dtype=torch.float64)
    m[:, :, 0, 0] = torch.arange(16, dtype=torch.float64).view(2, 8)  # routed-token counts: whole numbers
    s = RoutingStats([1, 2], m, {"family": "x"})
    s.save(tmp_path / "stats")
    back = RoutingStats.load(tmp_path / "stats")
    assert back.layers == [1, 2] and torch.equal(back.moments, s.moments)
    assert back.meta["family"] == "x" and "moeprune_version" in back.meta
    assert torch.equal(s.merge(back).moments, 2 * s.moments)
    assert not (tmp_path / "stats" / ".moments.safetensors.tmp").exists()
    with pytest.raises(InputError):
        s.merge(RoutingStats([1], torch.zeros(1, 8, 3, 3, dtype=torch.float64)))


def test_stats_criteria_through_the_cli(tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tiny("qwen3_moe")
    stats = _stats_for(src)
    folder = str(tmp_path / "stats")
    stats.save(tmp_path / "stats")
    r = cli("score", str(src), "--stats", folder, "--criterion", "msan", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["criterion"] == "msan" and data["direction"] == "lower_pruned"
    for i in stats.layers:
        m = stats.layer(i)
        want = [float(m[j, 0, 2] / m[j, 0, 0]) if m[j, 0, 0] > 0 else 0.0 for j in range(stats.n_experts)]
        assert data["layers"][str(i)] == pytest.approx(want, rel=1e-12)

    out = tmp_path / "out"
    r = cli(
        "prune", str(src), "--stats", str(tmp_path / "stats"), "--criterion", "man", "--ratio", "0.25", "-o", str(out)
    )
    assert r.code == 0, r
    plan = json.loads((out / "moeprune_plan.json").read_text())
    assert plan["criterion"] == "man"
    for i in stats.layers:
        assert 0 in plan["layers"][str(i)]["pruned"]  # the never-routed expert goes first

    r = cli("score", str(src), "--stats", folder, "--criterion", "all", "-o", str(tmp_path / "a.json"))
    assert r.code == 0, r
    assert set(json.loads((tmp_path / "a.json").read_text())["criteria"]) == {"aimer", "magnitude", "random", *NAMED}
    assert "overlap of pruned sets at ratio 0.25" in r.out and "overlap of pruned sets at ratio 0.5" in r.out


def test_statistics_criterion_without_stats_is_one_clear_error(tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = cli("score", str(tiny("qwen3_moe")), "--criterion", "man", "-o", str(tmp_path / "s.json"))
    assert r.code == 2 and r.err.startswith("error: ") and "--stats" in r.err and r.err.count("\n") == 1


def _bad(case: str, folder, other):  # type: ignore[no-untyped-def]
    meta = json.loads((folder / META).read_text())
    if case == "another model":
        shutil.rmtree(folder)
        _stats_for(other).save(folder)
    elif case == "other weights":
        meta["model_fingerprint"] = "0" * 64
    elif case == "another release":
        meta["moeprune_version"] = "0.0.1"
    elif case == "another format":
        meta["format"] = 99
    elif case == "unfinished":
        meta["finished_layers"] = meta["finished_layers"][:1]
    elif case == "not stats":
        (folder / MOMENTS).unlink()
    elif case == "corrupt":
        (folder / MOMENTS).write_bytes(b"garbage")
    if case in ("other weights", "another release", "another format", "unfinished"):
        (folder / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "case",
    [
        "another model",
        "other weights",
        "another release",
        "another format",
        "unfinished",
        "not stats",
        "corrupt",
    ],
)
def test_stats_of_another_model_or_release_are_refused(case, tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tiny("qwen3_moe")
    folder = tmp_path / "stats"
    _stats_for(src).save(folder)
    _bad(case, folder, tiny("olmoe"))
    r = cli("score", str(src), "--stats", str(folder), "--criterion", "man", "-o", str(tmp_path / "s.json"))
    assert r.code == 2, r
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert not (tmp_path / "s.json").exists()
    r = cli(
        "prune", str(src), "--stats", str(folder), "--criterion", "man", "--ratio", "0.5", "-o", str(tmp_path / "o")
    )
    assert r.code == 2 and not (tmp_path / "o").exists()


# --- calibration shards and selection stability ------------------------------------------------------


def _sharded(layers: list[int], n_shards: int, n_experts: int, seed: int = 0) -> RoutingStats:
    """Synthetic per-shard moments (whole routed-token counts, some zero) and their totals."""
    gen = torch.Generator().manual_seed(seed)
    shards = torch.rand(len(layers), n_shards, n_experts, 3, 3, generator=gen, dtype=torch.float64) * 5
    shards[..., 0, 0] = torch.randint(0, 6, (len(layers), n_shards, n_experts), generator=gen).double()
    meta = {"family": "qwen3_moe", "finished_layers": layers}
    return RoutingStats(layers, shards.sum(dim=1), meta, shards)


def test_stability_equals_hand_computation() -> None:
    from moeprune.plan import select
    from moeprune.report import jaccard
    from moeprune.scoring.stability import expected_jaccard, stability

    stats = _sharded([2, 5], n_shards=4, n_experts=6)
    got = {r.criterion: r for r in stability(stats, ["man", "gean", "frequency"], 2, resamples=25, seed=7)}

    def pruned(name: str, layer: int, weights: list[int]) -> set[int]:
        """The experts `name` prunes in ``layer`` on the shards taken ``weights[s]`` times, by hand."""
        c = NAMED[name]
        k = stats.layers.index(layer)
        scores = []
        for j in range(6):
            moment = [
                [sum(weights[s] * float(stats.shards[k, s, j, a, b]) for s in range(4)) for b in range(3)]
                for a in range(3)
            ]
            n = moment[0][0]
            total = moment[c.alpha][c.beta]
            scores.append((total / n if n > 0 else 0.0) if c.b else total)
        return set(select(scores, c.direction, 2, None).pruned)

    draws = np.random.default_rng(7).integers(0, 4, size=(25, 4))  # the documented bootstrap
    for name, r in got.items():
        for k, layer in enumerate([2, 5]):
            full = pruned(name, layer, [1, 1, 1, 1])
            boot = [jaccard(pruned(name, layer, [list(d).count(s) for s in range(4)]), full) for d in draws]
            assert r.bootstrap[k] == pytest.approx(sum(boot) / 25, abs=1e-12), (name, layer)
            halves = [
                jaccard(pruned(name, layer, [int(s in h) for s in range(4)]), full) for h in combinations(range(4), 2)
            ]
            assert r.halves[k] == pytest.approx(sum(halves) / 6, abs=1e-12), (name, layer)
        for size in range(1, 5):
            per_layer = [
                sum(
                    jaccard(pruned(name, layer, [int(s in h) for s in range(4)]), pruned(name, layer, [1] * 4))
                    for h in combinations(range(4), size)
                )
                / math.comb(4, size)
                for layer in (2, 5)
            ]
            assert r.curve[size - 1] == pytest.approx(sum(per_layer) / 2, abs=1e-12), (name, size)
        assert r.curve[-1] == 1.0 and r.random == pytest.approx(expected_jaccard(6, 2))
        assert r.overall == pytest.approx(sum(r.bootstrap) / 2)
    # the fixed seed gives the same numbers again; another seed other draws
    again = stability(stats, ["man"], 2, resamples=25, seed=7)[0]
    assert again.bootstrap == got["man"].bootstrap


def test_stability_on_group_limited_routers_prunes_within_groups() -> None:
    from moeprune.arch.spec import Groups
    from moeprune.plan import select
    from moeprune.scoring.stability import criterion_scores, pruned_mask

    stats = _sharded([0], n_shards=2, n_experts=8, seed=3)
    groups = Groups(n_group=2, topk_group=1, min_per_group=1)
    for c in NAMED.values():
        mask = pruned_mask(criterion_scores(c, stats.moments[0]), c.direction, 4, groups)
        assert mask.nonzero().flatten().tolist() == select(c.scores(stats)[0], c.direction, 4, groups).pruned


@pytest.fixture(scope="module")
def calibrated(tiny, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A tiny qwen3_moe calibrated on 16 windows of 8 tokens (batches of 3 straddle the shard borders)."""
    from moeprune.calib.data import TokenBatch
    from moeprune.calib.engine import calibrate

    model = tiny("qwen3_moe")
    ids = torch.from_numpy(np.random.default_rng(1).integers(0, 128, size=(16, 8)))
    tokens = TokenBatch(ids, torch.ones_like(ids), "random ids", 0, 8)
    folder = tmp_path_factory.mktemp("cal") / "stats"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calibrate(model, tokens, out=folder, batch_size=3)
    finally:
        torch.set_num_threads(before)
    return model, tokens, folder


def test_calibrate_records_moments_per_shard(calibrated, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moeprune.calib.data import TokenBatch
    from moeprune.calib.engine import calibrate

    model, tokens, folder = calibrated
    stats = RoutingStats.load(folder)
    assert stats.shards is not None and stats.n_shards == 8
    counts = stats.moments[:, :, 0, 0]
    assert torch.equal(stats.shards[:, :, :, 0, 0].sum(dim=1), counts)
    assert torch.allclose(stats.shards.sum(dim=1), stats.moments, rtol=1e-12, atol=0)
    # shard k holds windows 2k, 2k + 1: the moments of a calibration on those windows alone
    for k in (0, 5):
        ids = tokens.input_ids[2 * k : 2 * k + 2]
        alone = calibrate(model, TokenBatch(ids, torch.ones_like(ids), "slice", 0, 8), batch_size=1)
        assert torch.equal(stats.shards[:, k, :, 0, 0], alone.moments[:, :, 0, 0])
        assert torch.allclose(stats.shards[:, k], alone.moments, rtol=1e-5, atol=1e-9)


def test_score_stability_through_the_cli(calibrated, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, _, folder = calibrated
    r = cli("score", str(model), "--stats", str(folder), "-c", "man", "--stability", "-o", str(tmp_path / "s.json"))
    assert r.code == 0, r
    lines = r.out.strip().splitlines()
    assert lines[0].startswith("selection stability: mean Jaccard") and "200 bootstrap draws of 8 shards" in lines[0]
    assert sum(line.split()[:2] == ["man", "2/8"] for line in lines) == 2  # the table and the curve
    assert sum(line.split()[:2] == ["man", "4/8"] for line in lines) == 2
    assert "1 by construction" in r.out
    # statistics written before shards existed: the scores still come, the stability says why not
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    stats = RoutingStats.load(old)
    stats.shards = None
    stats.save(old)
    r = cli("score", str(model), "--stats", str(old), "-c", "man", "--stability", "-o", str(tmp_path / "o.json"))
    assert r.code == 0 and "stability: not measured" in r.out and "run calibrate again" in r.out, r
    assert json.loads((tmp_path / "o.json").read_text())["criterion"] == "man"
    r = cli("score", str(model), "--stability", "-o", str(tmp_path / "x.json"))
    assert r.code == 2 and r.err.count("\n") == 1 and "--stats" in r.err, r


FIELDLESS = ("nan", "inf", "negative")
"""Damage to the moments tensor (the case names the value, not the field)."""


def _damage(case: str, folder) -> str:  # type: ignore[no-untyped-def]
    """Write one malformed value into a STATS folder; returns the field the error must name."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / MOMENTS))
    meta = json.loads((folder / META).read_text())
    if case == "nan moments":
        tensors["moments"][0, 1, 0, 1] = float("nan")
    elif case == "inf moments":
        tensors["moments"][-1, 0, 2, 2] = float("inf")
    elif case == "negative count":
        tensors["moments"][0, 2, 0, 0] = -3.0
    elif case == "nan shards":
        tensors["shards"][0, 0, 0, 1, 1] = float("nan")
    elif case == "shards do not add up":
        tensors["shards"][0, 0, 0, 0, 0] += 1.0
    elif case == "shards shape":
        tensors["shards"] = tensors["shards"][:, :, :-1].contiguous()
    elif case == "layers dtype":
        tensors["layers"] = tensors["layers"].double()
    elif case == "finished_layers type":
        meta["finished_layers"] = "all"
    elif case == "n_tokens negative":
        meta["n_tokens"] = -1
    elif case == "meta not an object":
        meta = [1, 2]
    save_file(tensors, str(folder / MOMENTS))
    (folder / META).write_text(json.dumps(meta))
    if case == "meta not an object":
        return f"{META}: expected a JSON object"
    return "field " + ("shards" if "shards" in case else "moments" if case.split()[0] in FIELDLESS else case.split()[0])


@pytest.mark.parametrize(
    "case",
    [
        "nan moments",
        "inf moments",
        "negative count",
        "nan shards",
        "shards do not add up",
        "shards shape",
        "layers dtype",
        "finished_layers type",
        "n_tokens negative",
        "meta not an object",
    ],
)
def test_malformed_statistics_are_refused_naming_file_and_field(case, tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tiny("qwen3_moe")
    stats = _stats_for(src)
    stats.shards = torch.zeros(len(stats.layers), 2, stats.n_experts, 3, 3, dtype=torch.float64)
    stats.shards[:, 0] = stats.moments
    folder = tmp_path / "stats"
    stats.save(folder)
    RoutingStats.load(folder)  # valid before the damage
    field = _damage(case, folder)
    with pytest.raises(InputError) as e:
        RoutingStats.load(folder)
    assert str(folder) in str(e.value) and field in str(e.value), str(e.value)
    # prune never removes experts on such statistics (NaN moments once gave every expert score 0)
    r = cli("prune", str(src), "--stats", str(folder), "-c", "man", "--ratio", "0.5", "-o", str(tmp_path / "o"))
    assert r.code == 2 and r.err.startswith("error: ") and r.err.count("\n") == 1, r
    assert not (tmp_path / "o").exists()


# --- recommendation by goal (arXiv 2606.15716's selection principle) ---------------------------------


@pytest.mark.parametrize(
    ("goal", "has_stats", "want"),
    [
        ("task-agnostic", True, "man"),
        ("task-agnostic", False, "aimer"),
        ("task-specific", True, "gean"),
        ("task-specific", False, "aimer"),
        (None, True, "aimer"),
        (None, False, "aimer"),
    ],
)
def test_recommendation_by_goal(goal, has_stats, want) -> None:  # type: ignore[no-untyped-def]
    from moeprune.scoring.recommend import choose, recommend

    criterion, line = choose(None, goal, has_stats)
    assert criterion == want and line.startswith("criterion: ")
    if goal is None:  # the default stays aimer, and the line says what each goal would choose
        assert "task-agnostic -> " in line and "task-specific -> " in line
    else:
        assert recommend(goal, has_stats).criterion == want and "2606.15716" in line
    if goal == "task-specific" and not has_stats:
        assert "calibrate" in line and "target domain" in line
    assert choose("msan", goal, has_stats)[0] == "msan"  # a criterion given is used as asked
    if goal == "task-agnostic":
        assert choose("msan", goal, has_stats)[1] == ""  # the runner-up: no remark
        assert "recommends man or msan" in choose("gean", goal, has_stats)[1]


def test_goal_through_the_cli(tiny, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tiny("qwen3_moe")
    _stats_for(src).save(tmp_path / "stats")
    out = tmp_path / "s.json"
    r = cli("score", str(src), "--stats", str(tmp_path / "stats"), "--goal", "task-specific", "-o", str(out))
    assert r.code == 0 and json.loads(out.read_text())["criterion"] == "gean", r
    r = cli("prune", str(src), "--goal", "task-agnostic", "--ratio", "0.5", "--dry-run", "-o", str(tmp_path / "p"))
    assert r.code == 0 and r.out.startswith("dry run, nothing written. aimer"), r
    r = cli("score", str(src), "--goal", "everything", "-o", str(out))
    assert r.code == 2, r


def test_stability_takes_any_statistics_criterion_and_refuses_weight_criteria() -> None:
    from moeprune.scoring.stability import stability

    stats = _sharded([0], n_shards=3, n_experts=5)
    unified = stability(stats, ["unified:1,0,1"], 2, resamples=10)[0]
    assert unified.bootstrap == stability(stats, ["man"], 2, resamples=10)[0].bootstrap  # man is S(1,0,1)
    with pytest.raises(InputError, match="aimer: not a statistics criterion"):
        stability(stats, ["aimer"], 2)
    stats.shards = None
    with pytest.raises(InputError, match="run calibrate again"):
        stability(stats, ["man"], 2)
