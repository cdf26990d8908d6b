"""``moeprune eval`` and `moeprune.eval.perplexity`: perplexity, KL and top-1 agreement.

One tiny qwen3_moe checkpoint (vocab 128, no tokenizer), a copy with a word-level tokenizer, and its
50%-pruned version (``moeprune prune``). What the tests prove:

- perplexity of an unpadded [N, L] .npy file equals exp(mean NLL over all N × (L − 1) positions),
  computed independently: a plain transformers forward in float64, one sequence at a time, the NLL
  taken position by position (batches of 2 with a short last one in the evaluation);
- with a padding mask (.safetensors), padded positions neither count nor are counted: the result
  equals the hand computation on each sequence's real prefix alone;
- a model against itself has KL exactly 0, top-1 agreement 1 and ratio 1 (the same object twice,
  and the same checkpoint loaded twice through the CLI);
- the pruned model against its original has KL > 0 and agreement < 1, and eval.json has its schema;
- text sources are packed in source order (the same windows as ``load_tokens(shuffle=False)``);
- ``--tasks`` hands the loaded models to ``moeprune.eval.lmeval.run_tasks`` and reports recovery;
- bad input (nothing to evaluate, a missing source, text without a tokenizer, ids outside the
  vocabulary, no CUDA) is one ``error:`` line and exit 2.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import WORDS, one_line_error, save_word_tokenizer
from moeprune.calib.data import load_tokens
from moeprune.eval import perplexity
from moeprune.eval.perplexity import evaluate_lm, load_lm, score_tokens

N_SEQ, SEQ_LEN, VOCAB = 5, 12, 128


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny: Callable[..., Path]) -> Path:
    return tiny("qwen3_moe")


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, VOCAB, size=(N_SEQ, SEQ_LEN)))
    return path


@pytest.fixture(scope="module")
def reference_lm(model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    # eager experts: a plain per-expert loop (grouped_mm has no float64 kernel), independent of the fast path
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float64, experts_implementation="eager")
    return lm.eval()


@pytest.fixture(scope="module")
def pruned(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moeprune.cli import main

    out = tmp_path_factory.mktemp("pruned") / "model"
    main(["-q", "prune", str(model), "--ratio", "0.5", "-o", str(out)])  # exits (non-zero) only on failure
    assert (out / "moeprune_plan.json").is_file()
    return out


@pytest.fixture(scope="module")
def with_tokenizer(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny checkpoint with a word-level tokenizer (ids < 128; eos 1, pad 0)."""
    copy = tmp_path_factory.mktemp("tokenized") / "model"
    shutil.copytree(model, copy)
    save_word_tokenizer(copy, WORDS)
    return copy


def hand_nll(lm: Any, row: list[int]) -> list[float]:
    """−log p(row[t+1] | row[:t+1]) for every t, from one float64 forward, position by position."""
    with torch.no_grad():
        logits = lm(torch.tensor([row])).logits[0].double()  # (L, V)
    out = []
    for t in range(len(row) - 1):
        z = logits[t]
        out.append(float(torch.logsumexp(z, 0) - z[row[t + 1]]))
    return out


# --- perplexity against an independent computation ---------------------------------------------


def test_perplexity_of_npy_equals_hand_computation(
    cli: Callable[..., Any], model: Path, ids: Path, reference_lm: Any, tmp_path: Path
) -> None:
    rows = np.load(ids).tolist()
    nll = [x for row in rows for x in hand_nll(reference_lm, row)]
    assert len(nll) == N_SEQ * (SEQ_LEN - 1)
    want = math.exp(sum(nll) / len(nll))

    out = tmp_path / "eval.json"
    r = cli("eval", str(model), "--base", str(model), "--ppl", str(ids), "--batch-size", "2", "-o", str(out))
    assert r.code == 0, r
    got = json.loads(out.read_text())
    assert got["data"]["n_positions"] == N_SEQ * (SEQ_LEN - 1)
    assert got["data"]["n_sequences"] == N_SEQ and got["data"]["seq_len"] == SEQ_LEN
    assert got["data"]["sha256"] == load_tokens(ids, None).sha256()
    assert got["perplexity"]["pruned"] == pytest.approx(want, rel=1e-5)
    # the same checkpoint loaded twice: identical distributions
    assert got["perplexity"]["base"] == got["perplexity"]["pruned"]
    assert got["perplexity"]["ratio"] == 1.0
    assert got["kl_mean"] == 0.0
    assert got["top1_agreement"] == 1.0
    assert "perplexity" in r.out and "top-1 agreement" in r.out


def test_padding_is_never_counted(model: Path, reference_lm: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    lengths = [SEQ_LEN, 7, 1, 3]  # real tokens per row, padding on the right (a row of 1 scores nothing)
    ids = torch.from_numpy(rng.integers(0, VOCAB, size=(len(lengths), SEQ_LEN)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0  # pad id
    path = tmp_path / "padded.safetensors"
    save_file({"input_ids": ids, "attention_mask": mask}, str(path))

    nll = [x for i, n in enumerate(lengths) for x in hand_nll(reference_lm, ids[i, :n].tolist())]
    assert len(nll) == sum(n - 1 for n in lengths)
    got = evaluate_lm(model, source=path, batch_size=3)
    assert got["data"]["n_positions"] == len(nll)
    assert got["data"]["n_tokens"] == sum(lengths)
    assert got["perplexity"]["pruned"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert got["perplexity"]["base"] is None and got["kl_mean"] is None and got["top1_agreement"] is None
    assert got["tasks"] == {}


def test_model_against_itself_object(model: Path, ids: Path) -> None:
    lm = load_lm(model)
    tokens = load_tokens(ids, None)
    seen: list[tuple[str, int, int]] = []
    got = score_tokens(lm, tokens, base=lm, batch_size=4, chunk=7, progress=lambda *a: seen.append(a))
    assert got["kl_mean"] == 0.0 and got["top1_agreement"] == 1.0 and got["perplexity"]["ratio"] == 1.0
    assert got["n_positions"] == N_SEQ * (SEQ_LEN - 1)
    assert sum(a for _, a, _ in seen) == N_SEQ * SEQ_LEN and {t for _, _, t in seen} == {N_SEQ * SEQ_LEN}
    alone = score_tokens(lm, tokens, batch_size=N_SEQ)  # batching and chunking change nothing
    assert alone["perplexity"]["pruned"] == pytest.approx(got["perplexity"]["pruned"], rel=1e-6)


def test_cached_base_logits_give_the_same_scores(
    model: Path, pruned: Path, ids: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo scores many models against one base: its logits are computed once per batch and
    read back exactly; other batches (another batch size) are computed again, not misread."""
    base, lm = load_lm(model), load_lm(pruned)
    tokens = load_tokens(ids, None)
    direct = score_tokens(lm, tokens, base=base, batch_size=2)
    runs: list[Any] = []
    real = perplexity._logits
    monkeypatch.setattr(perplexity, "_logits", lambda m, *a: runs.append(m) or real(m, *a))
    cached = perplexity.CachedLogits(base, tmp_path / "cache")
    assert score_tokens(lm, tokens, base=cached, batch_size=2) == direct
    n_batches = -(-N_SEQ // 2)
    assert runs.count(base) == n_batches and len(list((tmp_path / "cache").iterdir())) == n_batches
    runs.clear()
    assert score_tokens(lm, tokens, base=cached, batch_size=2) == direct
    assert runs.count(base) == 0  # every batch read back
    other = score_tokens(lm, tokens, base=cached, batch_size=3)
    assert runs.count(base) == -(-N_SEQ // 3)  # different windows per batch: computed, not the cached ones
    assert other["kl_mean"] == pytest.approx(direct["kl_mean"], rel=1e-5)


# --- a pruned model ----------------------------------------------------------------------------


def test_pruned_model_against_original(cli: Callable[..., Any], model: Path, pruned: Path, ids: Path) -> None:
    out = pruned.parent / "eval.json"
    r = cli("eval", str(pruned), "--base", str(model), "--ppl", str(ids), "-o", str(out))
    assert r.code == 0, r
    got = json.loads(out.read_text())
    assert set(got) >= {"model", "base", "data", "perplexity", "kl_mean", "top1_agreement", "tasks"}
    assert got["model"] == str(pruned) and got["base"] == str(model)
    assert set(got["data"]) >= {"source", "seq_len", "n_sequences", "n_positions", "sha256"}
    assert set(got["perplexity"]) == {"pruned", "base", "ratio"}
    ppl = got["perplexity"]
    assert ppl["ratio"] == pytest.approx(ppl["pruned"] / ppl["base"])
    assert got["kl_mean"] > 0
    assert 0 <= got["top1_agreement"] < 1
    assert got["tasks"] == {}
    # the base perplexity is the original's own
    alone = evaluate_lm(model, source=ids)
    assert alone["perplexity"]["pruned"] == pytest.approx(ppl["base"], rel=1e-6)


def test_tasks_get_the_loaded_models(
    cli: Callable[..., Any], model: Path, pruned: Path, with_tokenizer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moeprune.eval import lmeval

    calls: list[tuple[int, list[str], dict[str, Any]]] = []

    def run_tasks(lm: Any, tokenizer: Any, tasks: list[str], **kw: Any) -> dict[str, dict[str, Any]]:
        experts = lm.config.num_experts
        calls.append((experts, tasks, kw))
        assert tokenizer is not None
        score = 0.5 if experts == 4 else 0.625
        return {t: {"metric": "acc", "score": score, "stderr": 0.01, "n": 3} for t in tasks}

    monkeypatch.setattr(lmeval, "run_tasks", run_tasks)  # lm-eval itself is tested in test_eval_lmeval.py
    monkeypatch.setattr(perplexity, "_check_lmeval", lambda: None)
    out = pruned.parent / "tasks.json"
    r = cli("eval", str(pruned), "--base", str(with_tokenizer), "--tasks", "arc, hella", "--limit", "3", "-o", str(out))
    assert r.code == 0, r
    got = json.loads(out.read_text())
    assert got["data"] is None and got["perplexity"] is None
    assert [c[:2] for c in calls] == [(4, ["arc", "hella"]), (8, ["arc", "hella"])]
    assert calls[0][2] == {"limit": 3, "include_path": None, "batch_size": 4, "device": "cpu"}
    assert got["tasks"]["arc"]["recovery"] == 0.8
    assert got["tasks"]["hella"]["metric"] == "acc"
    assert got["tasks"]["hella"]["score"] == 0.5 and got["tasks"]["hella"]["base"] == 0.625
    assert "recovery" in r.out and "0.8000" in r.out


# --- text sources --------------------------------------------------------------------------------


def test_text_is_packed_in_source_order(cli: Callable[..., Any], with_tokenizer: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    text = tmp_path / "held_out.txt"
    text.write_text("\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(6)))
    out = tmp_path / "eval.json"
    r = cli("eval", str(with_tokenizer), "--ppl", str(text), "--tokens", "40", "--seq-len", "16", "-o", str(out))
    assert r.code == 0, r
    got = json.loads(out.read_text())
    want = load_tokens(text, AutoTokenizer.from_pretrained(with_tokenizer), samples=3, seq_len=16, shuffle=False)
    assert got["data"]["sha256"] == want.sha256()
    assert got["data"]["n_sequences"] == 3 and got["data"]["n_positions"] == 3 * 15
    assert math.isfinite(got["perplexity"]["pruned"])


# --- refusals ------------------------------------------------------------------------------------


def test_bad_input_is_one_line(cli: Callable[..., Any], model: Path, ids: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "eval.json")
    one_line_error(cli("eval", str(model), "-o", out), "--ppl", "--tasks")
    one_line_error(cli("eval", str(model), "--ppl", str(tmp_path / "missing.npy"), "-o", out), "missing.npy")
    text = tmp_path / "a.txt"
    text.write_text("expert router token")
    one_line_error(cli("eval", str(model), "--ppl", str(text), "-o", out), "tokenizer")
    big = tmp_path / "big.npy"
    np.save(big, np.full((2, 4), VOCAB))
    one_line_error(cli("eval", str(model), "--ppl", str(big), "-o", out), "vocabulary")
    one_line_error(cli("eval", str(model), "--ppl", str(ids), "-o", str(tmp_path / "no" / "e.json")), "does not exist")
    if not torch.cuda.is_available():
        one_line_error(cli("eval", str(model), "--ppl", str(ids), "--device", "cuda", "-o", out), "CUDA")
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(model: Path, pruned: Path, ids: Path) -> None:
    cpu = evaluate_lm(pruned, base=model, source=ids)
    gpu = evaluate_lm(pruned, base=model, source=ids, device="cuda", dtype="float32")
    assert gpu["data"]["sha256"] == cpu["data"]["sha256"]
    assert gpu["perplexity"]["pruned"] == pytest.approx(cpu["perplexity"]["pruned"], rel=1e-4)
    assert gpu["kl_mean"] == pytest.approx(cpu["kl_mean"], rel=1e-2, abs=1e-6)
