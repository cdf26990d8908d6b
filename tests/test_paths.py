"""Nothing is ever lost: one output-path rule for every command, no-replace finishing (races),
signals during the swap or the clean-up, interrupted calibrations that say what they kept, and one
file mode."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import one_line_error, snapshot
from moeprune.errors import Interrupted, OutputError
from moeprune.io import paths
from moeprune.io.paths import atomic_dir, atomic_file, check_output, move_into_place, write_file

Tiny = Callable[..., Path]
Cli = Callable[..., Any]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- the output-path rule ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["same", "inside", "deeper", "contains", "link", "file"])
def test_check_output_refuses_every_relation_to_an_input(where: str, tmp_path: Path) -> None:
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"x")
    (tmp_path / "link").symlink_to(model)
    out = {
        "same": model,
        "inside": model / "out",
        "deeper": model / "a" / "b",
        "contains": tmp_path / "models",
        "link": tmp_path / "link",
        "file": model / "model.safetensors",
    }[where]
    with pytest.raises(OutputError, match="the input"):
        check_output(out, [model])
    check_output(tmp_path / "elsewhere", [model])  # unrelated: fine


@pytest.mark.parametrize("command", ["score", "prune", "calibrate", "eval"])
@pytest.mark.parametrize("where", ["model.safetensors", "config.json", ".", "sub/x"])
def test_no_command_writes_into_its_input(command: str, where: str, tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny("qwen3_moe"), model)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 8), dtype=np.int64))
    before = snapshot(model)
    out = str(model / where) if where != "." else str(model)
    args = {
        "score": ["score", str(model), "-o", out, "--overwrite"],
        "prune": ["prune", str(model), "--ratio", "0.5", "-o", out, "--overwrite"],
        "calibrate": ["calibrate", str(model), "--data", str(ids), "-o", out, "--overwrite"],
        "eval": ["eval", str(model), "--ppl", str(ids), "-o", out, "--overwrite"],
    }[command]
    r = cli(*args)
    one_line_error(r)
    assert "the input" in r.err or " is a " in r.err, r  # ours, or click's "is a file/directory"
    assert snapshot(model) == before


def test_offload_dir_inside_the_input_is_refused(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 8), dtype=np.int64))
    before = snapshot(model)
    r = cli("calibrate", str(model), "--data", str(ids), "-o", str(tmp_path / "s"), "--offload-dir", str(model / "c"))
    one_line_error(r, "the input")
    assert snapshot(model) == before and not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["score", "eval", "report"])
def test_existing_file_outputs_are_replaced_only_with_overwrite(
    command: str, tiny: Tiny, cli: Cli, tmp_path: Path
) -> None:
    model = tiny("qwen3_moe")
    out = tmp_path / "out.html"
    out.write_text("keep me")
    args = {
        "score": ["score", str(model), "-o", str(out)],
        "eval": ["eval", str(model), "--ppl", str(model / "config.json"), "-o", str(out)],
        "report": ["report", str(model), "-o", str(out)],
    }[command]
    one_line_error(cli(*args), "already exists", "--overwrite")
    assert out.read_text() == "keep me"
    assert hidden(tmp_path) == []


# --- atomic, no-replace finishing ----------------------------------------------------------------


def test_a_folder_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Two runs racing for one new output: the later one fails instead of silently replacing."""
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="already exists"), atomic_dir(target, overwrite=False) as tmp:
        (tmp / "mine").write_text("late")
        target.mkdir()  # the other run finished first
        (target / "theirs").write_text("first")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert hidden(tmp_path) == []


def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "scores.json"
    with pytest.raises(OutputError, match="already exists"), atomic_file(target, overwrite=False) as tmp:
        tmp.write_text("late")
        target.write_text("first")
    assert target.read_text() == "first" and hidden(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_overwrite_swaps_folders_whole(exchange: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not exchange:  # systems without renameat2: two renames, same result
        monkeypatch.setattr(paths, "_RENAMEAT2", None)
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert hidden(tmp_path) == []


def test_a_signal_during_the_swap_is_held_until_it_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    real = move_into_place

    def interrupted_move(src: Path, dst: Path, *, replace: bool) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the swap
        real(src, dst, replace=replace)

    monkeypatch.setattr(paths, "move_into_place", interrupted_move)
    with pytest.raises(Interrupted, match="was complete; it is in place"), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert hidden(tmp_path) == []


def test_a_second_ctrl_c_during_the_clean_up_does_not_stop_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.rmtree

    def rmtree_interrupted(path: Any, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real(path, *args, **kwargs)

    monkeypatch.setattr(paths.shutil, "rmtree", rmtree_interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "a" / "b" / "out", overwrite=False) as tmp:
        for i in range(50):
            (tmp / f"f{i}").write_text("x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # the parents it created are gone too


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_stop_signals_leave_nothing(signum: int, tiny: Tiny, tmp_path: Path) -> None:
    """A real process, stopped by a signal while it writes the checkpoint."""
    model = tiny("qwen3_moe")
    out = tmp_path / "new" / "out"
    script = textwrap.dedent(
        f"""
        import os, signal
        from moeprune.io import writer
        from moeprune.cli import main
        real = writer._write_at
        def write_then_stop(fd, data, at):
            os.kill(os.getpid(), {int(signum)})
            return real(fd, data, at)
        writer._write_at = write_then_stop
        main(["prune", {str(model)!r}, "--ratio", "0.5", "-o", {str(out)!r}])
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "interrupted; nothing was written", r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_files_get_one_mode(tmp_path: Path) -> None:
    write_file(tmp_path / "a.json", "{}", overwrite=False)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == paths.FILE_MODE


# --- calibrate: replacing and interrupting ------------------------------------------------------


@pytest.fixture(scope="module")
def calib_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ids") / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, 128, size=(4, 16)))
    return path


def _stop_on_layer(monkeypatch: pytest.MonkeyPatch, layer: int) -> None:
    """Ctrl-C as the engine starts running MoE layer ``layer`` (0-based among the layers it runs)."""
    from moeprune.scoring.stats import RoutingStats

    save = RoutingStats.save

    def save_or_stop(self: RoutingStats, folder: Path) -> None:
        if len(self.meta.get("finished_layers", [])) > layer:
            raise KeyboardInterrupt
        save(self, folder)

    monkeypatch.setattr(RoutingStats, "save", save_or_stop)


def test_calibrate_overwrite_keeps_the_old_stats_until_the_new_ones_are_complete(
    tiny: Tiny, calib_ids: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(tiny("qwen3_moe"))
    out = tmp_path / "stats"
    assert cli("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--batch-size", "2").code == 0
    before = snapshot(out)
    assert all(stat.S_IMODE(p.stat().st_mode) == paths.FILE_MODE for p in out.iterdir() if p.is_file())
    with monkeypatch.context() as m:
        _stop_on_layer(m, 1)
        r = cli("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--overwrite", "--batch-size", "2")
    assert r.code == 130 and r.err.strip() == "interrupted; nothing was written", r
    assert snapshot(out) == before
    assert hidden(tmp_path) == []
    r = cli("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--overwrite", "--batch-size", "1")
    assert r.code == 0 and snapshot(out) != before
    assert hidden(tmp_path) == []


def test_calibrate_interrupted_says_what_it_kept_and_how_to_resume(
    tiny: Tiny, calib_ids: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(tiny("qwen3_moe"))
    out = tmp_path / "stats"
    args = ("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--batch-size", "2")
    with monkeypatch.context() as m:
        _stop_on_layer(m, 0)  # before the first layer is recorded: nothing to resume, nothing kept
        r = cli(*args)
    assert r.code == 130 and "nothing was written" in r.err, r
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with monkeypatch.context() as m:
        _stop_on_layer(m, 2)
        r = cli(*args)
    assert r.code == 130 and r.err.count("\n") == 1, r
    assert "finished MoE layer(s) are kept in" in r.err and "--resume" in r.err
    assert cli(*args, "--resume").code == 0
    full = tmp_path / "full"
    assert cli("calibrate", model, "--data", str(calib_ids), "-o", str(full), "--batch-size", "2").code == 0
    from safetensors.torch import load_file

    resumed, whole = load_file(out / "moments.safetensors"), load_file(full / "moments.safetensors")
    assert sorted(resumed) == sorted(whole)
    assert all(resumed[k].equal(whole[k]) for k in whole)


@pytest.mark.parametrize("replacing", [False, True])
def test_an_offloaded_activation_cache_that_cannot_be_resumed_is_removed(
    replacing: bool, tiny: Tiny, calib_ids: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(tiny("qwen3_moe"))
    out, offload = tmp_path / "stats", tmp_path / "offload"
    offload.mkdir()
    args = ("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--batch-size", "2")
    if replacing:
        assert cli(*args).code == 0
    with monkeypatch.context() as m:
        _stop_on_layer(m, 0 if not replacing else 1)
        r = cli(*args, "--offload-dir", str(offload), *(["--overwrite"] if replacing else []))
    assert r.code == 130 and "nothing was written" in r.err, r
    assert list(offload.iterdir()) == []
    assert out.exists() == replacing


def test_resume_refuses_an_edited_last_layer(
    tiny: Tiny, calib_ids: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupted run whose stats.json was edited must not be 'finished' with layers missing."""
    import json

    model = str(tiny("qwen3_moe"))
    out = tmp_path / "stats"
    args = ("calibrate", model, "--data", str(calib_ids), "-o", str(out), "--batch-size", "2")
    with monkeypatch.context() as m:
        _stop_on_layer(m, 1)
        assert cli(*args).code == 130
    meta = json.loads((out / "stats.json").read_text())
    assert meta["finished_layers"] == [0]
    meta["last_layer"] = 2
    (out / "stats.json").write_text(json.dumps(meta))
    one_line_error(cli(*args, "--resume"), "last_layer", "disagree")


def test_eval_may_add_its_eval_json_to_the_model_folder(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    """The one exception to the output rule: eval.json beside the model it evaluates, where
    `moeprune report` reads it; every checkpoint file stays as it was."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny("qwen3_moe"), model)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 128, size=(2, 8)))
    before = snapshot(model)
    assert cli("eval", str(model), "--ppl", str(ids), "-o", str(model / "eval.json")).code == 0
    after = snapshot(model)
    assert set(after) - set(before) == {"eval.json"} and all(after[k] == v for k, v in before.items())
    one_line_error(cli("eval", str(model), "--ppl", str(ids), "-o", str(model / "eval.json")), "already exists")
