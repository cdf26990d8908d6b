"""prune with a weight criterion scores on a background thread while it writes: the result must be
byte for byte what scoring first and writing afterwards gives, errors and interruptions must
stop both, and --fsync must make the output durable."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import moeprune.io.writer as writer
from helpers import snapshot
from moeprune import api
from moeprune.io.format import read_header
from moeprune.io.writer import OutTensor, write_checkpoint
from moeprune.scoring.background import ScoringPass

Tiny = Callable[..., Path]


def _scoring_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "moeprune-scoring"]


@pytest.mark.parametrize(
    ("family", "kwargs", "args"),
    [
        ("qwen3_moe", {}, {}),  # per-expert tensors
        ("gpt_oss", {}, {}),  # fused, transposed, router bias, expert biases
        ("deepseek_v3", {}, {}),  # group-limited router, correction bias, shared experts, dense layer
        ("ernie4_5_moe", {}, {}),  # correction bias sliced on axis 1 (materialised)
        ("qwen3_moe", {"max_shard_size": "50KB"}, {"max_shard_size": "40KB"}),  # sharded in and out
    ],
)
def test_overlapped_prune_equals_scoring_first(
    family: str,
    kwargs: dict[str, Any],
    args: dict[str, Any],
    tiny: Tiny,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny(family, **kwargs)
    started: list[list[int]] = []
    real_start = ScoringPass.start

    def start(self: ScoringPass, order: list[int] | None = None) -> None:
        started.append(list(order or []))
        real_start(self, order)

    monkeypatch.setattr(ScoringPass, "start", start)
    overlapped = api.prune(model, tmp_path / "a", "aimer", ratio=0.5, **args)
    assert len(started) == 1, "aimer should score on the background thread"
    assert sorted(started[0]) == sorted(overlapped.layers)
    first = api.prune(model, tmp_path / "b", "aimer", ratio=0.5, scores=api.score(model)["aimer"], **args)
    assert len(started) == 1, "given scores: nothing to overlap"
    assert overlapped.layers == first.layers and overlapped.scores == first.scores
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert not _scoring_threads()


def test_writer_writes_plan_free_tensors_first(tmp_path: Path) -> None:
    """Each tensor lands in its place whatever the order; a shard's tensors that depend on no plan
    are written before any layer's, and layers in order of first appearance."""
    made: list[str] = []
    values = {f"t{i}": torch.full((4,), float(i)) for i in range(7)}
    layers = [None, 3, None, 1, 3, None, 1]

    def maker(name: str) -> Callable[[], bytes]:
        def make() -> bytes:
            made.append(name)
            return values[name].numpy().tobytes()

        return make

    tensors = [
        OutTensor(name, "F32", (4,), make=maker(name), nbytes=16, layer=layer)
        for name, layer in zip(values, layers, strict=True)
    ]
    folder = tmp_path / "out"
    folder.mkdir()
    assert write_checkpoint(folder, tensors, {"format": "pt"}, 10**9) == ["model.safetensors"]
    assert made == ["t0", "t2", "t5", "t1", "t4", "t3", "t6"]
    got = load_file(folder / "model.safetensors")
    assert list(read_header(folder / "model.safetensors")[0]) == list(values)  # the layout's order
    for name, v in values.items():
        assert torch.equal(got[name], v), name


def _nan_in_last_layer(tiny: Tiny, tmp_path: Path) -> tuple[Path, int]:
    src = tiny("qwen3_moe")
    model = tmp_path / "in"
    shutil.copytree(src, model)
    tensors = load_file(model / "model.safetensors")
    last = max(api.inspect(model)["moe_layers"])
    name = f"model.layers.{last}.mlp.experts.3.down_proj.weight"
    tensors[name] = tensors[name].clone()
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model, last


def test_a_scoring_error_during_the_write_is_one_line_and_leaves_nothing(
    tiny: Tiny, cli: Callable[..., Any], tmp_path: Path
) -> None:
    model, last = _nan_in_last_layer(tiny, tmp_path)
    before = snapshot(model)
    for args in (
        ["prune", str(model), "--ratio", "0.5", "-o", str(tmp_path / "out")],
        ["score", str(model), "-o", str(tmp_path / "s.json")],
    ):
        r = cli(*args)
        assert r.code == 2, r
        assert r.err == f"error: layer {last}, expert 3: its aimer score is not finite (inf or NaN in weights)\n"
        assert "Traceback" not in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert snapshot(model) == before
    assert not _scoring_threads()


def test_a_failed_write_stops_the_scoring_pass(tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer fails on its first copy, long before the pass is done: prune returns promptly,
    the scoring thread is gone and nothing is left behind."""
    model = tiny("qwen3_moe")
    reached: list[int] = []

    def fail(*args: Any) -> None:
        reached.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "_copy", fail)
    with pytest.raises(KeyboardInterrupt):
        api.prune(model, tmp_path / "out", "aimer", ratio=0.5)
    assert reached == [1]
    assert not _scoring_threads()
    assert list(tmp_path.iterdir()) == []


def test_closing_a_pass_stops_it(tiny: Tiny) -> None:
    model = tiny("qwen3_moe")
    ckpt, moe = api.open_model(model)
    with ckpt:
        scoring = ScoringPass(ckpt, moe, "aimer", 2)
        scoring.close()  # never started: nothing to stop
        scoring = ScoringPass(ckpt, moe, "aimer", 2)
        scoring.start()
        scoring.close()
        assert not _scoring_threads()
        kept = {}
        for layer in moe.layers:  # every layer finished, or failed with the stop
            with contextlib.suppress(Exception):
                kept[layer.index] = scoring.kept(layer.index)
        assert all(len(k) == moe.n_experts - 2 for k in kept.values())


def test_progress_reports_scoring_from_its_thread_and_writing_from_the_caller(tiny: Tiny, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    seen: dict[str, list[tuple[int, int, str]]] = {"score": [], "write": []}
    api.prune(
        model,
        tmp_path / "out",
        "aimer",
        ratio=0.5,
        progress=lambda stage, b, total: seen[stage].append((b, total, threading.current_thread().name)),
    )
    info = api.inspect(model)
    score_total = {t for _, t, _ in seen["score"]}
    assert score_total == {info["routed_expert_bytes"]}
    assert sum(b for b, _, _ in seen["score"]) == info["routed_expert_bytes"]
    assert {name for _, _, name in seen["score"]} == {"moeprune-scoring"}
    (write_total,) = {t for _, t, _ in seen["write"]}
    assert (
        sum(b for b, _, _ in seen["write"])
        == write_total
        == (tmp_path / "out" / "model.safetensors").stat().st_size
        - (8 + int.from_bytes((tmp_path / "out" / "model.safetensors").read_bytes()[:8], "little"))
    )
    assert {name for _, _, name in seen["write"]} == {threading.main_thread().name}


@pytest.mark.parametrize("durable", [False, True])
def test_fsync_makes_every_file_and_both_folders_durable(
    durable: bool, tiny: Tiny, cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(writer.os, "fsync", fsync)
    out = tmp_path / "parent" / "out"
    r = cli("prune", str(tiny("qwen3_moe")), "--ratio", "0.5", "-o", str(out), *(["--fsync"] if durable else []))
    assert r.code == 0, r
    if not durable:
        assert synced == []
        return
    tmp = out.parent / f".out.moeprune-partial-{os.getpid()}"
    files = {str(tmp / p.name) for p in out.iterdir()}
    assert files <= set(synced), files - set(synced)
    assert str(tmp) in synced and synced[-1] == str(out.parent)
    assert (out / "model.safetensors").is_file()


def test_cli_progress_bars_from_two_threads(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's bars take updates from the scoring thread and the writer at once; a finished
    stage's bar is closed at once (its clock stops), a later pass of the stage gets a new one."""
    from moeprune.cli.common import Progress

    bars = Progress(quiet=False, live=True)

    def feed(stage: str) -> None:
        for _ in range(200):
            bars(stage, 5, 1000)

    threads = [threading.Thread(target=feed, args=(stage,)) for stage in ("score", "write")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bars.bars == {}
    bars("score", 10, 20)
    assert set(bars.bars) == {"score"} and bars.bars["score"].n == 10
    bars.close()
    err = capsys.readouterr().err
    assert "score: 100%" in err and "write: 100%" in err
