"""The bundled model and ``moeprune demo``.

What the tests prove:

- the bundled checkpoint is what the README says: a qwen3_moe with >= 8 routed experts and top-2
  that transformers loads with its tokenizer, <= 10 MB, whose calibration and held-out files are
  disjoint stdlib files, with a training log whose routing load covers every layer and expert; and
  it learned something: its held-out perplexity is far below the vocabulary size (a model that
  learned nothing scores ~ the vocabulary size) and matches the log;
- a shortened ``moeprune demo`` (one ratio, a few thousand tokens) scores with every weight and
  statistics criterion, prunes 8 of 16 experts per layer with each, verifies every pruned model
  against the masked original (max |Δlogit| <= 1e-4, logits up to ~20), evaluates each on held-out text, prints the
  criterion table, and writes results, eval.json files and the report; an independent
  ``moeprune verify`` of a pruned folder passes;
- an existing output folder or a bad ratio is refused with one line and exit 2, nothing touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import one_line_error
from moeprune.api import CRITERIA, inspect
from moeprune.demo import BUNDLED, CALIB_FILE, HELDOUT_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def records(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (BUNDLED / name).read_text().splitlines()]


def test_bundled_model_is_a_trained_qwen3_moe() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = inspect(BUNDLED)
    assert info["family"] == "qwen3_moe" and info["experts"] >= 8 and info["top_k"] == 2
    checkpoint = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert sum((BUNDLED / n).stat().st_size for n in checkpoint) <= 10 * 10**6

    calib, held = records(CALIB_FILE), records(HELDOUT_FILE)
    assert calib and held
    assert not {r["file"] for r in calib} & {r["file"] for r in held}
    log = json.loads((BUNDLED / "training.json").read_text())
    load = log["expert_load"]
    assert len(load) == len(info["moe_layers"])
    assert all(len(row) == info["experts"] and math.isclose(sum(row), 1, abs_tol=1e-3) for row in load)

    tok = AutoTokenizer.from_pretrained(BUNDLED)
    text = held[0]["text"]
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: lossless
    model = AutoModelForCausalLM.from_pretrained(BUNDLED, dtype=torch.float32).eval()
    ids = torch.tensor([tok(held[0]["text"])["input_ids"][:256]])
    with torch.no_grad():
        ppl = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert ppl < len(tok) / 20, ppl  # learned: a model knowing nothing is near len(tok) = 4096
    assert log["heldout_ppl_bf16_checkpoint"] < len(tok) / 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from moeprune.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    code = 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(["-q", "demo", "-o", str(out), "--ratios", "0.5", "--calib-tokens", "2048", "--eval-tokens", "1024"])
        except SystemExit as e:
            code = int(e.code or 0)
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


def test_demo_prunes_verifies_and_evaluates_every_criterion(demo: tuple[Path, str], cli: Any) -> None:
    out, printed = demo
    result = json.loads((out / "results.json").read_text())
    weight, stats = ["aimer", "magnitude", "random"], [c for c in CRITERIA if c not in ("aimer", "magnitude", "random")]
    assert [r["criterion"] for r in result["runs"]] == weight + stats
    assert {r["kind"] for r in result["runs"] if r["criterion"] in weight} == {"weights"}
    assert {r["kind"] for r in result["runs"] if r["criterion"] in stats} == {"statistics"}
    assert result["calibration"]["tokens"] == 2048 and result["heldout"]["tokens"] == 1024
    assert (out / "stats" / "moments.safetensors").is_file()
    for run in result["runs"]:
        folder = out / run["folder"]
        plan = json.loads((folder / "moeprune_plan.json").read_text())
        assert plan["criterion"] == run["criterion"] and run["pruned_per_layer"] == 8
        assert all(len(lp["kept"]) == 8 and len(lp["pruned"]) == 8 for lp in plan["layers"].values())
        assert inspect(folder)["experts"] == 8
        assert run["max_abs_logit_diff"] <= 1e-4  # verify's threshold; logits here reach ~20
        ev = json.loads((folder / "eval.json").read_text())
        assert ev["perplexity"]["pruned"] == pytest.approx(run["perplexity"])
        assert ev["perplexity"]["base"] == pytest.approx(result["base_perplexity"])
        assert ev["kl_mean"] >= 0 and 0 <= ev["top1_agreement"] <= 1
        assert f"| {run['criterion']} | {run['kind']} | {run['perplexity']:.2f} |" in printed
    # removing half the experts costs something, and the criteria do not all choose alike
    assert all(r["kl_mean"] > 0 for r in result["runs"])
    assert (
        len(
            {
                json.dumps(json.loads((out / r["folder"] / "moeprune_plan.json").read_text())["layers"])
                for r in result["runs"]
            }
        )
        > 3
    )
    assert (out / "results.md").read_text().strip() in printed
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # no temporary folder left beside it

    r = cli("verify", str(BUNDLED), str(out / "runs" / "msan-50"))
    assert r.code == 0 and r.out.startswith("OK: "), r


def test_demo_refuses_an_existing_folder_and_bad_ratios(demo: tuple[Path, str], cli: Any, tmp_path: Path) -> None:
    out, _ = demo
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    for args in (
        ["-o", str(out)],
        ["-o", str(tmp_path / "x"), "--ratios", "0.5,1.2"],
        ["-o", str(tmp_path / "x"), "--ratios", "half"],
    ):
        one_line_error(cli("demo", *args))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not (tmp_path / "x").exists()
