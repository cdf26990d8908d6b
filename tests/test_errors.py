"""The bad-input matrix: every way a run can go wrong ends in one clear line and a non-zero exit.

Each case runs the CLI in-process and checks that: the exit code is 2 (1 for a verify mismatch,
130 when interrupted); stderr is exactly one line, ``error: ...``, without a traceback; the input
folder is byte-for-byte unchanged; and no output or temporary folder is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import moeprune.io.writer as writer
from helpers import snapshot

Tiny = Callable[..., Path]
Cli = Callable[..., Any]

# --- helpers ---------------------------------------------------------------------------------------


def assert_one_line(r: Any, code: int = 2, *needles: str, prefix: str = "error: ") -> str:
    assert r.code == code, r
    assert "Traceback" not in r.err, r.err
    assert r.err.startswith(prefix), r.err
    assert r.err.endswith("\n") and r.err.count("\n") == 1, f"not one line: {r.err!r}"
    assert r.out == "", r.out
    line: str = r.err.rstrip("\n")
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


def leftovers(folder: Path, *expected: str) -> list[str]:
    """Entries of ``folder`` other than ``expected`` (output folders, hidden temporary folders)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in expected)


def copy_model(tiny: Tiny, tmp_path: Path, family: str = "qwen3_moe") -> Path:
    dst = tmp_path / "in"
    shutil.copytree(tiny(family), dst)
    return dst


def rewrite_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    file = folder / "model.safetensors"
    save_file(edit(load_file(str(file))), str(file), metadata={"format": "pt"})


def shard(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Split model.safetensors into two shards with an index; return the shard names and weight map."""
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map: dict[str, str] = {}
    for fname, part in zip(files, (names[:half], names[half:]), strict=True):
        save_file({k: tensors[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": weight_map,
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files, weight_map


def edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (folder / "config.json").write_text(json.dumps(config))


# --- bad checkpoints: every command refuses them the same way -------------------------------------


def _missing_folder(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    return tmp / "does-not-exist", ("no such folder",)


def _a_file(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    f = tmp / "in"
    f.write_text("not a folder")
    return f, ("is a file",)


def _no_config(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    (d / "config.json").unlink()
    return d, ("no config.json",)


def _empty_folder(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = tmp / "in"
    d.mkdir()
    return d, ("no config.json",)


def _invalid_json(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    (d / "config.json").write_text('{"model_type": "qwen3_moe", ')
    return d, ("config.json", "not valid JSON")


def _config_not_object(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    (d / "config.json").write_text("[1, 2, 3]")
    return d, ("config.json", "not a JSON object")


def _unknown_model_type(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    edit_config(d, model_type="llama")
    return d, ("'llama'", "not supported", "qwen3_moe", "deepseek_v3", "mixtral", "docs/adding-a-family.md")


def _no_expert_count(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    edit_config(d, num_experts=None, num_local_experts=None)
    return d, ("expert count",)


def _missing_shard(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    files, _ = shard(d)
    (d / files[1]).unlink()
    return d, (files[1], "missing")


def _truncated_shard(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 1000])
    return d, ("truncated", "model.safetensors")


def _truncated_second_shard(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    files, _ = shard(d)
    data = (d / files[1]).read_bytes()
    (d / files[1]).write_bytes(data[: len(data) // 2])
    return d, ("truncated", files[1])


def _corrupt_header_length(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[:8] = (2**40).to_bytes(8, "little")
    (d / "model.safetensors").write_bytes(bytes(data))
    return d, ("corrupt safetensors header",)


def _corrupt_header_json(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    data = bytearray((d / "model.safetensors").read_bytes())
    data[8:40] = b"\x00garbage, not json, at all!!!!\xff"
    (d / "model.safetensors").write_bytes(bytes(data))
    return d, ("corrupt safetensors header",)


def _tiny_garbage_file(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    (d / "model.safetensors").write_bytes(b"abc")
    return d, ("not a safetensors file",)


def _index_names_absent_tensor(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    files, weight_map = shard(d)
    moved = next(k for k, v in weight_map.items() if v == files[0])
    weight_map[moved] = files[1]  # the index says shard 2, the tensor is in shard 1
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = weight_map
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d, (moved, files[1], "does not hold it")


def _index_names_unknown_tensor(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    files, weight_map = shard(d)
    weight_map["model.layers.9.mlp.gate.weight"] = files[0]
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = weight_map
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d, ("model.layers.9.mlp.gate.weight", "does not hold it")


def _index_not_json(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    shard(d)
    (d / "model.safetensors.index.json").write_text("{ nope")
    return d, ("model.safetensors.index.json",)


def _expert_missing(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    rewrite_tensors(d, lambda t: {k: v for k, v in t.items() if not k.startswith("model.layers.1.mlp.experts.3.")})
    return d, ("layer 1", "expert 3", "missing")


def _expert_tensor_missing(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    gone = "model.layers.2.mlp.experts.5.up_proj.weight"
    rewrite_tensors(d, lambda t: {k: v for k, v in t.items() if k != gone})
    return d, ("layer 2", "expert 5")


def _router_missing(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    rewrite_tensors(d, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.gate.weight"})
    return d, ("layer 1", "router", "model.layers.1.mlp.gate.weight")


def _router_wrong_shape(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = copy_model(tiny, tmp)
    name = "model.layers.0.mlp.gate.weight"

    def edit(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t[name] = t[name][:6].clone()  # (6, H): two router rows lost
        return t

    rewrite_tensors(d, edit)
    return d, (name, "expected 8 experts")


def _pickle_only(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = tmp / "in"
    d.mkdir()
    shutil.copy(tiny("qwen3_moe") / "config.json", d / "config.json")
    # garbage that would blow up (or worse) if anything tried to unpickle it
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n" + bytes(range(256)) * 4)
    return d, ("pickle", "never unpickles", "save_pretrained(", "from_pretrained(")


def _sharded_pickle_only(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = tmp / "in"
    d.mkdir()
    shutil.copy(tiny("qwen3_moe") / "config.json", d / "config.json")
    (d / "pytorch_model-00001-of-00002.bin").write_bytes(b"\x80garbage")
    (d / "pytorch_model-00002-of-00002.bin").write_bytes(b"\x80garbage")
    return d, ("pickle", "save_pretrained(")


def _no_weights(tiny: Tiny, tmp: Path) -> tuple[Path, tuple[str, ...]]:
    d = tmp / "in"
    d.mkdir()
    shutil.copy(tiny("qwen3_moe") / "config.json", d / "config.json")
    return d, ("no safetensors weights",)


BAD_CHECKPOINTS = [
    _missing_folder,
    _a_file,
    _no_config,
    _empty_folder,
    _invalid_json,
    _config_not_object,
    _unknown_model_type,
    _no_expert_count,
    _missing_shard,
    _truncated_shard,
    _truncated_second_shard,
    _corrupt_header_length,
    _corrupt_header_json,
    _tiny_garbage_file,
    _index_names_absent_tensor,
    _index_names_unknown_tensor,
    _index_not_json,
    _expert_missing,
    _expert_tensor_missing,
    _router_missing,
    _router_wrong_shape,
    _pickle_only,
    _sharded_pickle_only,
    _no_weights,
]

COMMANDS = {
    "prune": lambda model, out: ("prune", model, "--ratio", "0.5", "-o", out),
    "score": lambda model, out: ("score", model, "-o", out),
    "inspect": lambda model, out: ("inspect", model),
    "dry-run": lambda model, out: ("prune", model, "--prune", "2", "-o", out, "--dry-run"),
}


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("moeprune must never unpickle a checkpoint")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", BAD_CHECKPOINTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_checkpoint(
    case: Callable[[Tiny, Path], tuple[Path, tuple[str, ...]]],
    command: str,
    tiny: Tiny,
    cli: Cli,
    tmp_path: Path,
    no_unpickling: None,
) -> None:
    model, needles = case(tiny, tmp_path)
    before = snapshot(model)
    out = tmp_path / ("out" if command != "score" else "scores.json")
    r = cli(*COMMANDS[command](str(model), str(out)))
    assert_one_line(r, 2, *needles)
    assert snapshot(model) == before
    assert leftovers(tmp_path, model.name) == []


# --- bad plans: refused before anything is read or written ---------------------------------------


@pytest.mark.parametrize(
    ("family", "args", "needles"),
    [
        ("qwen3_moe", ("--ratio", "0"), ("--ratio", "between 0 and 1")),
        ("qwen3_moe", ("--ratio", "1"), ("between 0 and 1",)),
        ("qwen3_moe", ("--ratio", "1.5"), ("between 0 and 1",)),
        ("qwen3_moe", ("--ratio", "-0.1"), ("between 0 and 1",)),
        ("qwen3_moe", ("--ratio", "nan"), ("--ratio",)),
        ("qwen3_moe", ("--ratio", "0.05"), ("rounds to 0", "0.125")),  # 0.4 of 8 experts
        ("qwen3_moe", ("--ratio", "0.0625"), ("rounds to 0",)),  # exactly 0.5: halves round down
        ("qwen3_moe", ("--ratio", "abc"), ("ratio",)),
        ("qwen3_moe", ("--prune", "7"), ("top-k", "at most 6")),
        ("qwen3_moe", ("--prune", "8"), ("top-k",)),
        ("qwen3_moe", ("--prune", "100"), ("top-k",)),
        ("qwen3_moe", ("--prune", "0"), ("--prune",)),
        ("qwen3_moe", ("--ratio", "0.99"), ("top-k",)),
        ("qwen3_moe", ("--ratio", "0.5", "--prune", "2"), ("exactly one",)),
        ("qwen3_moe", (), ("exactly one",)),
        ("deepseek_v3", ("--prune", "1"), ("group", "multiple of 2")),
        ("deepseek_v3", ("--ratio", "0.375"), ("group", "multiple of 2")),  # 3 of 8
        ("deepseek_v3", ("--prune", "6"), ("per group",)),  # 1 left per group; V3 needs 2
        ("qwen3_moe", ("--ratio", "0.5", "--criterion", "nonsense"), ("nonsense", "aimer")),
        ("qwen3_moe", ("--ratio", "0.5", "--criterion", "all"), ("one criterion", "aimer")),
        ("qwen3_moe", ("--ratio", "0.5", "--max-shard-size", "5XB"), ("5XB",)),
        ("qwen3_moe", ("--ratio", "0.5", "--max-shard-size", "0"), ("size",)),
    ],
)
def test_bad_plan(
    family: str, args: tuple[str, ...], needles: tuple[str, ...], tiny: Tiny, cli: Cli, tmp_path: Path
) -> None:
    model = tiny(family)
    before = snapshot(model)
    out = tmp_path / "out"
    for dry in ((), ("--dry-run",)):
        r = cli("prune", str(model), *args, "-o", str(out), *dry)
        assert_one_line(r, 2, *needles)
        assert snapshot(model) == before
        assert leftovers(tmp_path) == []
        assert leftovers(model.parent, model.name) == []


def test_unknown_criterion_in_score(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    r = cli("score", str(tiny("qwen3_moe")), "--criterion", "nonsense", "-o", str(tmp_path / "s.json"))
    assert_one_line(r, 2, "nonsense", "aimer", "magnitude", "random")
    assert leftovers(tmp_path) == []


def test_unknown_command_and_option(cli: Cli, tmp_path: Path) -> None:
    assert_one_line(cli("nonsense"), 2, "nonsense")
    assert_one_line(cli("prune", str(tmp_path), "--ratio", "0.5"), 2, "output")  # -o is required
    assert_one_line(cli("prune", str(tmp_path), "--bogus", "-o", str(tmp_path / "o")), 2, "--bogus")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("not json", ("not valid json",)),
        ('{"criterion": "aimer"}', ("not a moeprune scores.json", "direction")),
        ('{"criterion": "aimer", "direction": "higher_pruned", "layers": {"0": [1.0, 2.0]}}', ("do not match",)),
        ('{"criteria": {}}', ("not a moeprune scores.json", "criteria")),
    ],
)
def test_bad_scores_file(content: str, needles: tuple[str, ...], tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    scores = tmp_path / "scores.json"
    scores.write_text(content)
    r = cli("prune", str(model), "--ratio", "0.5", "--scores", str(scores), "-o", str(tmp_path / "out"))
    assert_one_line(r, 2, *needles)
    assert leftovers(tmp_path, "scores.json") == []


@pytest.mark.parametrize(
    ("corrupt", "needles"),
    [
        ({"value": float("nan")}, ("layers.1", "finite")),
        ({"value": float("inf")}, ("layers.1", "finite")),
        ({"direction": "sideways"}, ("sideways",)),
        ({"drop_layer": "2"}, ("do not match",)),
    ],
)
def test_scores_file_with_bad_values(
    corrupt: dict[str, Any], needles: tuple[str, ...], tiny: Tiny, cli: Cli, tmp_path: Path
) -> None:
    scores = {
        "criterion": "aimer",
        "direction": "higher_pruned",
        "layers": {str(i): [float(j) for j in range(8)] for i in range(3)},
    }
    if "value" in corrupt:
        scores["layers"]["1"][4] = corrupt["value"]
    if "direction" in corrupt:
        scores["direction"] = corrupt["direction"]
    if "drop_layer" in corrupt:
        del scores["layers"][corrupt["drop_layer"]]
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores))  # NaN and Infinity are written as JSON extensions
    for dry in ((), ("--dry-run",)):
        r = cli(
            "prune", str(tiny("qwen3_moe")), "--ratio", "0.5", "--scores", str(path), "-o", str(tmp_path / "out"), *dry
        )
        assert_one_line(r, 2, *needles)
        assert leftovers(tmp_path, "scores.json") == []


def test_score_output_in_a_missing_folder(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    r = cli("score", str(tiny("qwen3_moe")), "-o", str(tmp_path / "absent" / "s.json"))
    assert_one_line(r, 2, "does not exist")
    assert leftovers(tmp_path) == []


# --- output location -------------------------------------------------------------------------------


def test_output_exists_is_refused_then_replaced_with_overwrite(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    before = snapshot(model)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    for dry in ((), ("--dry-run",)):
        r = cli("prune", str(model), "--ratio", "0.5", "-o", str(out), *dry)
        if dry:  # a dry run writes nothing, so an existing output is no problem
            assert r.code == 0, r
        else:
            assert_one_line(r, 2, "already exists", "--overwrite")
        assert snapshot(out) == {"old.txt": hashlib.sha256(b"keep me").hexdigest()}
    r = cli("prune", str(model), "--ratio", "0.5", "-o", str(out), "--overwrite")
    assert r.code == 0, r
    assert not (out / "old.txt").exists()
    assert (out / "model.safetensors").is_file() and (out / "moeprune_plan.json").is_file()
    assert leftovers(tmp_path, "out") == []
    assert snapshot(model) == before


def test_output_that_is_a_file_is_refused(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    for extra in ((), ("--overwrite",)):
        r = cli("prune", str(tiny("qwen3_moe")), "--ratio", "0.5", "-o", str(out), *extra)
        assert_one_line(r, 2, str(out))
        assert out.read_text() == "a file"
        assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("where", ["sub", "sub/deeper", ".", "./"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_inside_the_input_is_refused(where: str, overwrite: bool, tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = copy_model(tiny, tmp_path)
    before = snapshot(model)
    out = str(model / where) if where not in (".", "./") else str(model) + where.lstrip(".")
    r = cli("prune", str(model), "--ratio", "0.5", "-o", out, *(["--overwrite"] if overwrite else []))
    assert_one_line(r, 2, "the input")
    assert snapshot(model) == before
    assert leftovers(tmp_path, "in") == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_containing_the_input_is_refused(overwrite: bool, tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    """Replacing a folder that holds the input would delete the input."""
    parent = tmp_path / "models"
    parent.mkdir()
    model = copy_model(tiny, parent)
    before = snapshot(parent)
    for out in (parent, tmp_path):
        r = cli("prune", str(model), "--ratio", "0.5", "-o", str(out), *(["--overwrite"] if overwrite else []))
        assert_one_line(r, 2, str(out))
        assert snapshot(parent) == before
        assert leftovers(tmp_path, "models") == []


def test_output_inside_the_input_through_a_symlink_is_refused(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = copy_model(tiny, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(model, target_is_directory=True)
    before = snapshot(model)
    r = cli("prune", str(link), "--ratio", "0.5", "-o", str(model / "out"))
    assert_one_line(r, 2, "the input")
    r = cli("prune", str(model), "--ratio", "0.5", "-o", str(link), "--overwrite")
    assert_one_line(r, 2, "the input")
    assert snapshot(model) == before
    assert leftovers(tmp_path, "in", "link") == []


# --- failures while writing ------------------------------------------------------------------------


def _failing_copy(monkeypatch: pytest.MonkeyPatch, exc: BaseException, after: int) -> list[int]:
    calls: list[int] = []
    real = writer._copy

    def copy(*args: Any) -> None:
        calls.append(1)
        if len(calls) > after:
            raise exc
        real(*args)

    monkeypatch.setattr(writer, "_copy", copy)
    return calls


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_write_leaves_nothing(
    existing: bool, tiny: Tiny, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("qwen3_moe")
    before = snapshot(model)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    calls = _failing_copy(monkeypatch, KeyboardInterrupt(), after=5)
    r = cli("prune", str(model), "--ratio", "0.5", "-o", str(out), *(["--overwrite"] if existing else []))
    assert len(calls) == 6
    # click writes one blank line first, to end the terminal's ^C echo; then exactly one line
    assert r.code == 130, r
    assert r.err.lstrip("\n") == "interrupted; nothing was written\n", r.err
    assert r.out == ""
    assert snapshot(model) == before
    if existing:  # the old output is left exactly as it was
        assert snapshot(out) == {"old.txt": hashlib.sha256(b"old").hexdigest()}
        assert leftovers(tmp_path, "out") == []
    else:
        assert leftovers(tmp_path) == []


def test_sigterm_during_write_leaves_nothing(
    tiny: Tiny, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill` (SIGTERM) is handled like Ctrl-C: the partial output is removed, exit 130."""
    import os
    import signal

    calls: list[int] = []
    real = writer._copy

    def copy(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises in this (the main) thread
        real(*args)

    monkeypatch.setattr(writer, "_copy", copy)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        r = cli("prune", str(tiny("qwen3_moe")), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.code == 130, r
    assert r.err.lstrip("\n") == "interrupted; nothing was written\n", r.err
    assert len(calls) < 10
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("after", [0, 3])
def test_no_space_left_during_write(
    after: int, tiny: Tiny, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny("qwen3_moe")
    before = snapshot(model)
    _failing_copy(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), after=after)
    r = cli("prune", str(model), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    assert_one_line(r, 2, "no space left")
    assert snapshot(model) == before
    assert leftovers(tmp_path) == []


def test_other_os_error_during_write(tiny: Tiny, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("qwen3_moe")
    _failing_copy(monkeypatch, OSError(errno.EIO, "Input/output error"), after=2)
    r = cli("prune", str(model), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    assert_one_line(r, 2, "input/output error")
    assert leftovers(tmp_path) == []


def test_no_space_left_while_writing_side_files(
    tiny: Tiny, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moeprune.io.surgery as surgery

    def full(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(surgery, "copy_side_files", full)
    r = cli("prune", str(tiny("qwen3_moe")), "--ratio", "0.5", "-o", str(tmp_path / "out"))
    assert_one_line(r, 2, "no space left")
    assert leftovers(tmp_path) == []


# --- hub ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["prune", "score", "inspect"])
def test_hub_id_while_offline(command: str, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads the variable once, on import: import it first (so that later tests see the
    # real setting), then switch its flag for this test only
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    args = {"prune": ("--ratio", "0.5", "-o", "out"), "score": ("-o", "s.json"), "inspect": ()}[command]
    r = cli(command, "org/does-not-exist", *args)
    assert_one_line(r, 2, "org/does-not-exist", "hub")
    assert leftovers(tmp_path) == []


# --- verify ----------------------------------------------------------------------------------------


def test_verify_mismatch_exits_1(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    out = tmp_path / "out"
    assert cli("prune", str(model), "--prune", "2", "-o", str(out)).code == 0
    # claim other experts were removed than those that really were
    plan = json.loads((out / "moeprune_plan.json").read_text())
    layer = plan["layers"]["1"]
    layer["kept"][0], layer["pruned"][0] = layer["pruned"][0], layer["kept"][0]
    layer["kept"].sort()
    layer["pruned"].sort()
    (out / "moeprune_plan.json").write_text(json.dumps(plan))
    before, before_out = snapshot(model), snapshot(out)
    r = cli("verify", str(model), str(out))
    assert_one_line(r, 1, "mismatch")
    assert snapshot(model) == before and snapshot(out) == before_out
    assert leftovers(tmp_path, "out") == []


def _drop_tensor(folder: Path, name: str) -> None:
    """Rewrite a single-file checkpoint without tensor ``name`` (its index, if any, is not used)."""
    file = folder / "model.safetensors"
    tensors = load_file(file)
    del tensors[name]
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_verify_refuses_weights_transformers_would_leave_at_their_defaults(
    family: str, tiny: Tiny, cli: Cli, tmp_path: Path
) -> None:
    """A weight the checkpoint lacks (the final norm here) is built by transformers with its default
    (ones): original and pruned would agree and verify would prove nothing about the stored model."""
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(tiny(family), src)
    assert cli("prune", str(src), "--ratio", "0.5", "-o", str(out)).code == 0
    for folder in (src, out):
        _drop_tensor(folder, "model.norm.weight")
    before, before_out = snapshot(src), snapshot(out)
    r = cli("verify", str(src), str(out))
    assert_one_line(r, 2, "model.norm.weight", "no stored value")
    assert snapshot(src) == before and snapshot(out) == before_out


def test_verify_of_a_folder_not_written_by_moeprune(tiny: Tiny, cli: Cli, tmp_path: Path) -> None:
    model = tiny("qwen3_moe")
    r = cli("verify", str(model), str(model))
    assert_one_line(r, 2, "moeprune_plan.json")
    r = cli("verify", str(model), str(tmp_path / "absent"))
    assert_one_line(r, 2, "no such folder")
    assert leftovers(tmp_path) == []
