"""The lm-evaluation-harness bridge (``moeprune.eval.lmeval``) on CPU, without network.

A tiny qwen3_moe checkpoint (vocab 128) with a word-level tokenizer is pruned 50 % with
``moeprune prune``; both models are loaded in memory and run the local multiple-choice task of
``tests/data/local_mc`` (20 items, a YAML over a JSONL) end to end: scores in [0, 1], n = 20, the
metric acc_norm (the rule for non-paper tasks), recovery = pruned / base. Refusals, each one
InputError: an unknown task name, a hub task (arc_easy) with the Hub offline, and lm-eval missing.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")

from helpers import WORDS as BASE_WORDS
from helpers import save_word_tokenizer
from moeprune.errors import InputError
from moeprune.eval import lmeval
from moeprune.eval.lmeval import PAPER_METRICS, metric_for, recovery, run_tasks
from moeprune.verify import load_causal_lm

DATA = Path(__file__).parent / "data" / "local_mc"
N_ITEMS = 20
QUESTION_WORDS = ["the", "experts", "a", "of", "Answer", "What", "Which", "pruning", "base", "two", "four", ":", "?"]
WORDS = BASE_WORDS + QUESTION_WORDS


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(original with a word-level tokenizer, its 50 % pruned copy)."""
    from moeprune.cli import main

    root = tmp_path_factory.mktemp("lmeval")
    base = root / "base"
    shutil.copytree(tiny("qwen3_moe"), base)
    save_word_tokenizer(base, WORDS)
    pruned = root / "pruned"
    try:
        main(["-q", "prune", str(base), "--ratio", "0.5", "-o", str(pruned)])
    except SystemExit as e:
        assert e.code in (0, None)
    assert (pruned / "config.json").is_file() and (pruned / "tokenizer.json").is_file()
    return base, pruned


@pytest.fixture(scope="module")
def include_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example task, written with the JSONL's absolute path (datasets reads relative paths from
    the working directory)."""
    folder = tmp_path_factory.mktemp("tasks")
    yaml = (DATA / "local_mc.yaml").read_text()
    assert "test: local_mc.jsonl" in yaml
    (folder / "local_mc.yaml").write_text(yaml.replace("test: local_mc.jsonl", f"test: {DATA / 'local_mc.jsonl'}"))
    return folder


@pytest.fixture
def small_builtin_index(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's built-in index stands for ~15k YAMLs (tens of seconds to build); these tests only
    need a few real built-in tasks to be known, so the index is lm-eval's own ``arc`` folder."""
    from lm_eval import tasks
    from lm_eval.tasks import TaskManager

    arc = tmp_path_factory.mktemp("builtin") / "arc"
    shutil.copytree(Path(tasks.__file__).parent / "arc", arc)
    monkeypatch.setattr(
        lmeval, "_manager", lambda include_path: TaskManager(include_path=str(arc), include_defaults=False)
    )


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    return load_causal_lm(path), AutoTokenizer.from_pretrained(path)


def test_local_task_end_to_end(models: tuple[Path, Path], include_path: Path) -> None:
    assert sum(1 for line in (DATA / "local_mc.jsonl").read_text().splitlines() if line.strip()) == N_ITEMS
    scores = {}
    for name, path in zip(("base", "pruned"), models, strict=True):
        model, tokenizer = _load(path)
        start = time.perf_counter()
        scores[name] = run_tasks(model, tokenizer, ["local_mc"], include_path=str(include_path), batch_size=4)
        assert time.perf_counter() - start < 120
        r = scores[name]["local_mc"]
        assert set(scores[name]) == {"local_mc"}
        assert r["metric"] == "acc_norm"  # not a paper task: acc_norm when present
        assert 0.0 <= r["score"] <= 1.0
        assert r["n"] == N_ITEMS
        p = r["score"]
        assert r["stderr"] == pytest.approx((p * (1 - p) / (N_ITEMS - 1)) ** 0.5)
    rec = recovery(scores["pruned"], scores["base"])
    base_score = scores["base"]["local_mc"]["score"]
    if base_score > 0:
        assert rec["local_mc"] == pytest.approx(scores["pruned"]["local_mc"]["score"] / base_score)
    else:
        assert rec["local_mc"] is None

    # limit: fewer documents
    model, tokenizer = _load(models[1])
    limited = run_tasks(model, tokenizer, ["local_mc"], include_path=str(include_path), limit=5)
    assert limited["local_mc"]["n"] == 5


def test_metric_table() -> None:
    assert set(PAPER_METRICS) == {
        "arc_challenge", "arc_easy", "boolq", "hellaswag", "mmlu", "openbookqa", "rte", "winogrande",
    }  # fmt: skip
    for task in ("arc_challenge", "arc_easy", "hellaswag", "openbookqa"):
        assert metric_for(task, ["acc", "acc_norm"]) == "acc_norm"
    for task in ("boolq", "mmlu", "rte", "winogrande"):
        assert metric_for(task, ["acc", "acc_norm"]) == "acc"
    assert metric_for("mine", ["acc", "acc_norm"]) == "acc_norm"
    assert metric_for("mine", ["f1", "acc"]) == "acc"
    assert metric_for("mine", ["f1", "mcc"]) == "f1"
    assert recovery({"t": {"score": 0.3}, "u": {"score": 0.2}}, {"t": {"score": 0.6}, "u": {"score": 0.0}}) == {
        "t": pytest.approx(0.5),
        "u": None,
    }


@pytest.mark.usefixtures("small_builtin_index")
def test_unknown_task(models: tuple[Path, Path], include_path: Path) -> None:
    model, tokenizer = _load(models[1])
    unknown = r"^unknown lm-eval task\(s\): no_such_task_xyz \(not built into lm-eval nor in"
    with pytest.raises(InputError, match=unknown):
        run_tasks(model, tokenizer, ["local_mc", "no_such_task_xyz"], include_path=str(include_path))
    with pytest.raises(InputError, match="not a folder"):
        run_tasks(model, tokenizer, ["local_mc"], include_path=str(include_path / "missing"))


@pytest.mark.usefixtures("small_builtin_index")
def test_hub_task_offline(models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(models[0].parent / "no_cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", models[0].parent / "no_cache")
    model, tokenizer = _load(models[1])
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        run_tasks(model, tokenizer, ["arc_easy"])
    assert time.perf_counter() - start < 300  # no long retry loop (most of it is indexing lm-eval's YAMLs)
    message = str(e.value)
    assert "\n" not in message
    assert "arc_easy" in message and "allenai/ai2_arc" in message and "--include-path" in message


def test_lm_eval_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(InputError, match=r"moeprune\[eval\]"):
        run_tasks(object(), object(), ["local_mc"])
    with pytest.raises(InputError, match="no lm-eval tasks"):
        lmeval.run_tasks(object(), object(), [])
