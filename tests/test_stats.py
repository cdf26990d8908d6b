"""Routing statistics files and the unified criteria computed from them.

The moments here are synthetic (a calibration run is not needed to test the arithmetic): every
named criterion is checked against a hand computation, and every way a STATS folder can belong
to another model or release is refused with one line.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from moeprune.api import open_model
from moeprune.errors import InputError
from moeprune.scoring.stats import META, MOMENTS, RoutingStats, model_fingerprint
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
    s = RoutingStats([1, 2], torch.rand(2, 8, 3, 3, dtype=torch.float64), {"family": "x"})
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
