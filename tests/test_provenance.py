"""Artefacts record the model they came from, and every command that pairs two things checks that
they belong together before it loads a model: verify, eval --base, prune --scores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import one_line_error, snapshot

Tiny = Callable[..., Path]
Cli = Callable[..., Any]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory, tiny: Tiny) -> Path:
    from moeprune import prune

    out = tmp_path_factory.mktemp("prov") / "pruned"
    prune(tiny("qwen3_moe"), out, "aimer", ratio=0.25)
    return out


def test_plan_records_its_source(pruned: Path, tiny: Tiny) -> None:
    from moeprune.api import open_model
    from moeprune.provenance import fingerprint

    plan = json.loads((pruned / "moeprune_plan.json").read_text())
    assert plan["format"] == "moeprune.plan" and plan["version"] == 1
    src = plan["source"]
    ckpt, moe = open_model(tiny("qwen3_moe"))
    with ckpt:
        assert src["fingerprint"] == fingerprint(ckpt, moe)
    assert src["family"] == "qwen3_moe" and src["n_experts"] == 8 and src["moe_layers"] == [0, 1, 2]
    assert src["model"] == str(tiny("qwen3_moe"))


@pytest.mark.parametrize(
    ("other", "needle"),
    [
        (("mixtral",), "qwen3_moe, 8 experts"),  # another family: refused before transformers builds anything
        (("qwen3_moe", 1), "router weights differ"),  # same architecture, other weights
    ],
)
@pytest.mark.parametrize("command", ["verify", "eval"])
def test_pairing_with_another_model_is_refused(
    command: str, other: tuple[Any, ...], needle: str, pruned: Path, tiny: Tiny, cli: Cli
) -> None:
    base = tiny(other[0], seed=other[1]) if len(other) > 1 else tiny(other[0])
    before = snapshot(pruned)
    if command == "verify":
        r = cli("verify", str(base), str(pruned))
    else:
        r = cli(
            "eval",
            str(pruned),
            "--base",
            str(base),
            "--ppl",
            str(base / "config.json"),
            "-o",
            str(pruned.parent / "e.json"),
        )
    one_line_error(r, "came from", needle)
    assert snapshot(pruned) == before
    assert not (pruned.parent / "e.json").exists()


@pytest.mark.parametrize(
    "layer",
    [
        {"kept": [0, 1, 2, 3, 4, 5, 6, 6], "pruned": [7]},  # repeated id
        {"kept": [0, 1, 2, 3, 4, 5], "pruned": [6, 9]},  # out of range
        {"kept": [1, 0, 2, 3, 4, 5], "pruned": [6, 7]},  # out of order
        {"kept": [0, 1, 2, 3, 4, 5, 6, 7], "pruned": []},  # nothing pruned here, two elsewhere
        {"kept": [0, 1, 2, 3, 4, 5], "pruned": [-1, 7]},  # negative
    ],
)
def test_a_plan_with_bad_ids_is_refused(
    layer: dict[str, Any], pruned: Path, tiny: Tiny, cli: Cli, tmp_path: Path
) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pruned, bad)
    plan = json.loads((bad / "moeprune_plan.json").read_text())
    plan["layers"]["1"] = layer
    (bad / "moeprune_plan.json").write_text(json.dumps(plan))
    r = cli("verify", str(tiny("qwen3_moe")), str(bad))
    one_line_error(r, "moeprune_plan.json")


def test_scores_from_another_model_are_refused(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    scores = tmp_path / "scores.json"
    assert cli("score", str(tiny("qwen3_moe", seed=1)), "-o", str(scores)).code == 0
    r = cli("prune", str(tiny("qwen3_moe")), "--scores", str(scores), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    one_line_error(r, "the scores given came from", "router weights differ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_criterion_picks_from_a_scores_file_and_must_agree(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = str(tiny("qwen3_moe"))
    every = tmp_path / "all.json"
    one = tmp_path / "one.json"
    assert cli("score", model, "-c", "all", "-o", str(every)).code == 0
    assert cli("score", model, "-c", "magnitude", "-o", str(one)).code == 0
    one_line_error(cli("prune", model, "--scores", str(every), "--ratio", "0.5", "-o", str(tmp_path / "a")), "several")
    one_line_error(
        cli("prune", model, "--scores", str(one), "-c", "aimer", "--ratio", "0.5", "-o", str(tmp_path / "b")),
        "disagrees",
    )
    assert (
        cli("prune", model, "--scores", str(every), "-c", "magnitude", "--ratio", "0.5", "-o", str(tmp_path / "c")).code
        == 0
    )
    assert cli("prune", model, "--scores", str(one), "--ratio", "0.5", "-o", str(tmp_path / "d")).code == 0
    for name in ("moeprune_plan.json", "scores.csv", "model.safetensors"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()


def test_scores_written_before_sources_still_load(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    """Files without format/version/source (earlier releases) are checked by shape only."""
    model = str(tiny("qwen3_moe"))
    scores = tmp_path / "old.json"
    assert cli("score", model, "-c", "magnitude", "-o", str(scores)).code == 0
    data = json.loads(scores.read_text())
    scores.write_text(json.dumps({k: data[k] for k in ("criterion", "direction", "layers")}))
    assert cli("prune", model, "--scores", str(scores), "--ratio", "0.5", "-o", str(tmp_path / "out")).code == 0


def test_a_report_of_runs_from_two_models_is_refused(pruned: Path, tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    from moeprune import prune

    other = tmp_path / "other"
    prune(tiny("qwen3_moe", seed=1), other, "aimer", ratio=0.25)
    r = cli("report", str(pruned), str(other), "-o", str(tmp_path / "r.html"))
    one_line_error(r, "a report compares runs of one model")
    assert not (tmp_path / "r.html").exists()
