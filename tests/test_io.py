"""Checkpoint files: the safetensors format, the streaming writer, and what `moeprune` writes.

The format and writer tests are pure (a few KB of files); the artifact tests run the CLI on tiny
random checkpoints (built once per session by the ``tiny`` fixture).
"""

from __future__ import annotations

import csv
import errno
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moeprune.errors import InputError, OutputError
from moeprune.io.format import PAGE, encode_header, read_header
from moeprune.io.writer import OutTensor, atomic_folder, parse_size, split_shards, write_checkpoint
from moeprune.scoring.criteria import WEIGHT_CRITERIA

# --- helpers ---------------------------------------------------------------------------------------


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(4, 3, generator=g),  # (4, 3)
        "b.bias": torch.randn(5, generator=g).to(torch.bfloat16),  # (5,)
        "c.ids": torch.arange(6, dtype=torch.int64).view(2, 3),  # (2, 3)
        "d.scalar": torch.tensor(2.5, dtype=torch.float16),  # ()
        "e.empty": torch.zeros(0, 4),  # (0, 4)
        "f.mask": torch.tensor([True, False, True]),  # (3,)
    }


def _dtype_name(t: torch.Tensor) -> str:
    from moeprune.io.format import DTYPE_NAMES

    return DTYPE_NAMES[t.dtype]


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    entries = [(name, _dtype_name(t), tuple(t.shape), t.numel() * t.element_size()) for name, t in tensors.items()]
    path.write_bytes(encode_header(entries, metadata) + b"".join(_raw(t) for t in tensors.values()))


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118


def _header_bytes(header: Any) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body


# --- format: header encode / read ------------------------------------------------------------------


def test_encode_header_is_read_back_by_safetensors(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    _write_raw(path, tensors, {"format": "pt", "note": "hello"})
    got, meta = _load(path)
    assert list(got) == sorted(tensors) or set(got) == set(tensors)
    for name, t in tensors.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name
    assert meta == {"format": "pt", "note": "hello"}
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0


def test_encode_header_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    _write_raw(path, {"w": torch.ones(2, 2)}, {})
    got, meta = _load(path)
    assert torch.equal(got["w"], torch.ones(2, 2))
    assert not meta
    assert b"__metadata__" not in path.read_bytes()


def test_read_header_matches_safetensors_files(tmp_path: Path) -> None:
    tensors = {k: v for k, v in _tensors().items() if v.numel()}
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    infos, meta = read_header(path)
    assert meta == {"format": "pt"}
    assert set(infos) == set(tensors)
    data = path.read_bytes()
    for name, t in tensors.items():
        info = infos[name]
        assert info.file == path
        assert info.shape == tuple(t.shape)
        assert info.dtype == _dtype_name(t)
        assert info.nbytes == t.numel() * t.element_size()
        assert data[info.start : info.end] == _raw(t), name


def test_read_header_of_our_own_encoding(tmp_path: Path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    _write_raw(path, tensors, {})
    infos, _ = read_header(path)
    data = path.read_bytes()
    for name, t in tensors.items():
        assert data[infos[name].start : infos[name].end] == _raw(t)
    assert infos["e.empty"].nbytes == 0 and infos["d.scalar"].shape == ()


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(12.0).view(3, 4), "b": torch.ones(3)}, str(path))
    return path


def test_read_header_detects_truncated_file(good_file: Path) -> None:
    data = good_file.read_bytes()
    good_file.write_bytes(data[:-4])
    with pytest.raises(InputError, match="truncated"):
        read_header(good_file)


def test_read_header_detects_file_shorter_than_the_length_field(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(InputError, match="not a safetensors file"):
        read_header(path)
    path.write_bytes(b"")
    with pytest.raises(InputError, match="not a safetensors file"):
        read_header(path)


@pytest.mark.parametrize("length", [2**63, 10**12, 10**9])
def test_read_header_detects_bad_header_length(good_file: Path, length: int) -> None:
    data = bytearray(good_file.read_bytes())
    data[:8] = struct.pack("<Q", length)
    good_file.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt safetensors header"):
        read_header(good_file)


def test_read_header_detects_header_cut_by_end_of_file(good_file: Path) -> None:
    n = struct.unpack("<Q", good_file.read_bytes()[:8])[0]
    good_file.write_bytes(good_file.read_bytes()[: 8 + n // 2])
    with pytest.raises(InputError, match="corrupt safetensors header"):
        read_header(good_file)


@pytest.mark.parametrize("body", [b"{not json at all}", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"text"', b"null"])
def test_read_header_detects_non_json_or_non_object_header(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\x00" * 64)
    with pytest.raises(InputError, match="corrupt safetensors header"):
        read_header(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]},  # 4 elements need 16 bytes
        {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 20]},
        {"dtype": "F16", "shape": [4], "data_offsets": [4, 8]},  # 4 x F16 = 8 bytes, range is 4
        {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]},
    ],
)
def test_read_header_detects_offsets_not_matching_shape(tmp_path: Path, entry: dict[str, Any]) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_header_bytes({"t": entry}) + b"\x00" * 64)
    with pytest.raises(InputError, match="does not match its shape"):
        read_header(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [2]},
        {"shape": [2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": "two", "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [0]},
        "not an entry",
    ],
)
def test_read_header_detects_malformed_entries(tmp_path: Path, entry: Any) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_header_bytes({"t": entry}) + b"\x00" * 64)
    with pytest.raises(InputError, match="corrupt safetensors header"):
        read_header(path)


def test_read_header_rejects_unknown_dtype(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_header_bytes({"t": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}) + b"\x00" * 8)
    with pytest.raises(InputError, match="unsupported dtype"):
        read_header(path)


def test_read_header_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_header(tmp_path / "absent.safetensors")


# --- writer: sizes and shards ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("500MiB", 500 * 2**20),
        ("10KB", 10_000),
        ("1TB", 10**12),
        ("5gb", 5 * 10**9),
        (" 5 GB ", 5 * 10**9),
        ("5G", 5 * 10**9),
        ("4096", 4096),
        (12345, 12345),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "five GB", "5XB", "5 G B", "-1GB", "0GB", "0", "1e9", "5GBs", "0.0001B"])
def test_parse_size_rejects_bad_strings(text: str) -> None:
    with pytest.raises(OutputError):
        parse_size(text)


def _t(name: str, nbytes: int) -> OutTensor:
    return OutTensor(name, "U8", (nbytes,), nbytes=nbytes)


def test_split_shards() -> None:
    ts = [_t("a", 40), _t("b", 40), _t("c", 30), _t("d", 100), _t("e", 10), _t("f", 0)]
    shards = split_shards(ts, 100)
    assert [[t.name for t in s] for s in shards] == [["a", "b"], ["c"], ["d"], ["e", "f"]]
    assert all(sum(t.nbytes for t in s) <= 100 for s in shards)
    # a tensor larger than the cap gets a shard of its own; order is kept
    shards = split_shards([_t("a", 10), _t("big", 500), _t("c", 10)], 100)
    assert [[t.name for t in s] for s in shards] == [["a"], ["big"], ["c"]]
    assert [t.name for s in split_shards(ts, 10**9) for t in s] == list("abcdef")
    assert len(split_shards(ts, 10**9)) == 1


def _source_tensors(tmp_path: Path) -> tuple[dict[str, torch.Tensor], list[OutTensor]]:
    """Tensors saved in a source file, and OutTensors that copy / slice / compute them."""
    g = torch.Generator().manual_seed(1)
    src = {f"layer.{i}.weight": torch.randn(8, 16, generator=g) for i in range(6)}  # (8, 16) each
    path = tmp_path / "src.safetensors"
    save_file(src, str(path))
    infos, _ = read_header(path)
    out: list[OutTensor] = []
    for name, info in infos.items():
        out.append(OutTensor(name, info.dtype, info.shape, [(path, info.start, info.nbytes)], nbytes=info.nbytes))
    # rows 0, 1 and 5 of layer.0 (two ranges): (3, 16)
    info = infos["layer.0.weight"]
    row = info.row_bytes()
    ranges = [(path, info.start, 2 * row), (path, info.start + 5 * row, row)]
    out.append(OutTensor("rows", "F32", (3, 16), ranges, nbytes=3 * row))
    made = torch.arange(10, dtype=torch.int32)
    out.append(OutTensor("made", "I32", (10,), make=lambda: _raw(made), nbytes=40))
    expected = dict(src)
    expected["rows"] = src["layer.0.weight"][[0, 1, 5]]
    expected["made"] = made
    return expected, out


def test_write_checkpoint_single_file(tmp_path: Path) -> None:
    expected, out = _source_tensors(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    done: list[int] = []
    names = write_checkpoint(folder, out, {"format": "pt"}, 10**9, progress=done.append)
    assert names == ["model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    got, meta = _load(folder / "model.safetensors")
    assert meta == {"format": "pt"}
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    assert sum(done) == sum(t.nbytes for t in out)


def test_write_checkpoint_shards_and_index(tmp_path: Path) -> None:
    expected, out = _source_tensors(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    names = write_checkpoint(folder, out, {"format": "pt"}, 1200)  # two 512-byte tensors per shard
    assert len(names) == 4
    assert names == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in out)
    assert set(index["weight_map"]) == set(expected)
    seen: dict[str, torch.Tensor] = {}
    for fname in names:
        assert (folder / fname).stat().st_size <= 1200 + 1000 + PAGE  # data, header, page alignment
        got, meta = _load(folder / fname)
        assert meta == {"format": "pt"}
        for k, v in got.items():
            assert index["weight_map"][k] == fname
            seen[k] = v
    assert set(seen) == set(expected)
    for k, v in expected.items():
        assert torch.equal(seen[k], v), k
    assert sum(t.nbytes for t in out) == sum(v.numel() * v.element_size() for v in seen.values())


def test_copied_tensors_keep_their_place_within_a_page(tmp_path: Path) -> None:
    """The header is padded so that copied bytes sit at the same offset within a page as in the
    input (the kernel then copies whole pages); loaders read the padded header as usual."""
    expected, out = _source_tensors(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    write_checkpoint(folder, out, {"format": "pt"}, 10**9)
    src, _ = read_header(tmp_path / "src.safetensors")
    dst, _ = read_header(folder / "model.safetensors")
    assert {(src[name].start - dst[name].start) % PAGE for name in src} == {0}
    assert all(dst[name].start % 8 == 0 for name in dst)
    got, _ = _load(folder / "model.safetensors")
    assert all(torch.equal(got[k], v) for k, v in expected.items())


# --- writer: atomic folder -------------------------------------------------------------------------


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_folder_success_creates_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target, overwrite=False) as tmp:
        assert tmp.parent == target.parent.resolve() and tmp.name.startswith(".")
        assert not target.exists()
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert _siblings(target) == ["out"]


def test_atomic_folder_creates_missing_parents(tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "out"
    with atomic_folder(target, overwrite=False) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_atomic_folder_leaves_nothing_on_failure(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "out"
    with pytest.raises(type(exc)), atomic_folder(target, overwrite=False) as tmp:
        (tmp / "half.safetensors").write_bytes(b"x" * 100)
        raise exc
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_turns_os_errors_into_one_line(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(OutputError, match="no space left"), atomic_folder(target, overwrite=False) as tmp:
        (tmp / "half").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="could not write"), atomic_folder(target, overwrite=False):
        raise OSError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_refuses_existing_target_without_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(OutputError, match="already exists"), atomic_folder(target, overwrite=False):
        pytest.fail("must not yield")
    assert (target / "old").read_text() == "old"
    assert _siblings(target) == ["out"]


def test_atomic_folder_replaces_existing_target_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
        assert (target / "old").read_text() == "old"  # untouched while the new one is built
        raise RuntimeError("fail")
    assert sorted(p.name for p in target.iterdir()) == ["old"]
    assert _siblings(target) == ["out"]
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert _siblings(target) == ["out"]


def test_atomic_folder_refuses_a_file_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("file")
    with pytest.raises(OutputError), atomic_folder(target, overwrite=True):
        pytest.fail("must not yield")
    assert target.read_text() == "file"
    assert _siblings(target) == ["out"]


# --- what `moeprune prune` writes --------------------------------------------------------------------

CARD = """---
license: apache-2.0
language:
- en
base_model: Someone/Original-Base
---

# The original model

Original card body text.
"""

SIDE_FILES = {
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
    "tokenizer_config.json": '{"model_max_length": 256}\n',
    "special_tokens_map.json": '{"eos_token": "</s>"}\n',
    "chat_template.jinja": "{{ messages }}\n",
    "merges.txt": "#version: 0.2\na b\n",
}


@pytest.fixture(scope="module")
def pruned_qwen(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source copy with side files and a card, its pruned output at ratio 0.5 with aimer)."""
    from moeprune.cli import main

    root = tmp_path_factory.mktemp("artifacts")
    src = root / "src"
    shutil.copytree(tiny("qwen3_moe"), src)
    for name, text in SIDE_FILES.items():
        (src / name).write_text(text)
    (src / "README.md").write_text(CARD)
    out = root / "out"
    main(["-q", "prune", str(src), "--ratio", "0.5", "--criterion", "aimer", "-o", str(out)])  # exits only on error
    return src, out


def test_prune_copies_side_files(pruned_qwen: tuple[Path, Path]) -> None:
    src, out = pruned_qwen
    for name in [*SIDE_FILES, "generation_config.json"]:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            *SIDE_FILES,
            "generation_config.json",
            "config.json",
            "README.md",
            "model.safetensors",
            "moeprune_plan.json",
            "scores.csv",
        ]
    )
    config, original = (json.loads((p / "config.json").read_text()) for p in (out, src))
    keys = [k for k in ("num_experts", "num_local_experts") if k in original]
    assert keys and all(config[k] == 4 for k in keys)
    assert {k: v for k, v in config.items() if k not in keys} == {k: v for k, v in original.items() if k not in keys}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_prune_writes_a_model_card(pruned_qwen: tuple[Path, Path]) -> None:
    src, out = pruned_qwen
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    front, _, body = card[4:].partition("\n---\n")
    front_lines = front.splitlines()
    assert "license: apache-2.0" in front_lines
    assert "- en" in front_lines
    assert f"base_model: {src}" in front_lines
    assert not any("Original-Base" in ln for ln in front_lines)  # the base is now the source
    assert str(src) in body
    assert "aimer" in body
    assert "0.5" in body
    assert "4 of 8" in body
    assert "Original card body text." in body


def test_prune_plan_and_scores_csv(pruned_qwen: tuple[Path, Path]) -> None:
    _, out = pruned_qwen
    plan = json.loads((out / "moeprune_plan.json").read_text())
    assert set(plan) >= {"criterion", "direction", "ratio", "n_experts", "n_pruned_per_layer", "layers"}
    assert plan["criterion"] == "aimer"
    assert plan["direction"] == "higher_pruned"
    assert plan["ratio"] == 0.5
    assert plan["n_experts"] == 8
    assert plan["n_pruned_per_layer"] == 4
    assert sorted(plan["layers"], key=int) == ["0", "1", "2"]
    for lp in plan["layers"].values():
        assert set(lp) == {"kept", "pruned"}
        assert len(lp["pruned"]) == 4
        assert sorted(lp["kept"] + lp["pruned"]) == list(range(8))
        assert lp["kept"] == sorted(lp["kept"]) and lp["pruned"] == sorted(lp["pruned"])

    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["layer", "expert", "score", "rank", "pruned"]
    assert len(rows) == 3 * 8
    for layer, lp in plan["layers"].items():
        mine = [r for r in rows if r["layer"] == layer]
        assert [int(r["expert"]) for r in mine] == list(range(8))
        assert sorted(int(r["rank"]) for r in mine) == list(range(8))
        assert {int(r["expert"]) for r in mine if r["pruned"] == "1"} == set(lp["pruned"])
        assert {int(r["expert"]) for r in mine if int(r["rank"]) < 4} == set(lp["pruned"])
        assert all(r["pruned"] in ("0", "1") for r in mine)
        # higher_pruned: rank 0 has the highest score
        by_rank = sorted(mine, key=lambda r: int(r["rank"]))
        values = [float(r["score"]) for r in by_rank]
        assert values == sorted(values, reverse=True)


def test_score_json_schema_and_prune_from_scores(
    pruned_qwen: tuple[Path, Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src, out = pruned_qwen
    scores_file = tmp_path / "scores.json"
    r = cli("score", str(src), "--criterion", "aimer", "-o", str(scores_file))
    assert r.code == 0, r
    data = json.loads(scores_file.read_text())
    assert set(data) == {"format", "version", "source", "criterion", "direction", "layers"}
    assert data["criterion"] == "aimer" and data["direction"] == "higher_pruned"
    assert sorted(data["layers"], key=int) == ["0", "1", "2"]
    for s in data["layers"].values():
        assert len(s) == 8 and all(isinstance(v, float) for v in s)
    # the scores in scores.csv are the same numbers
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        assert float(r["score"]) == data["layers"][r["layer"]][int(r["expert"])]
    # pruning from the saved scores reproduces the inline plan
    again = tmp_path / "again"
    r = cli("prune", str(src), "--scores", str(scores_file), "--ratio", "0.5", "-o", str(again))
    assert r.code == 0, r
    plan_file = "moeprune_plan.json"
    assert json.loads((again / plan_file).read_text()) == json.loads((out / plan_file).read_text())
    assert (again / "scores.csv").read_bytes() == (out / "scores.csv").read_bytes()
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_score_all_writes_every_weight_criterion(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "all.json"
    r = cli("score", str(tiny("qwen3_moe")), "--criterion", "all", "-o", str(path))
    assert r.code == 0, r
    data = json.loads(path.read_text())
    assert set(data) == {"format", "version", "source", "criteria"}
    assert set(data["criteria"]) == set(WEIGHT_CRITERIA)
    for name, s in data["criteria"].items():
        assert s["criterion"] == name
        assert s["direction"] == WEIGHT_CRITERIA[name].direction
        assert sorted(s["layers"], key=int) == ["0", "1", "2"]
        assert all(len(v) == 8 for v in s["layers"].values())
    # one criterion alone gives the same numbers as in the "all" file
    one = tmp_path / "magnitude.json"
    assert cli("score", str(tiny("qwen3_moe")), "-c", "magnitude", "-o", str(one)).code == 0
    alone = json.loads(one.read_text())
    assert alone["source"] == data["source"]
    assert {k: alone[k] for k in ("criterion", "direction", "layers")} == data["criteria"]["magnitude"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.json", "magnitude.json"]


def test_dry_run_prints_the_plan_and_writes_nothing(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    src = tiny("qwen3_moe")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir())
    out = tmp_path / "out"
    r = cli("prune", str(src), "--ratio", "0.25", "-o", str(out), "--dry-run")
    assert r.code == 0, r
    assert "dry run" in r.out
    assert "2 of 8" in r.out
    for layer in (0, 1, 2):
        assert f"layer {layer}: prune [" in r.out
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir()) == before


# --- inspect ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (
            "deepseek_v3",
            {
                "family": "deepseek_v3",
                "layers": 3,
                "moe_layers": [1, 2],
                "experts": 8,
                "top_k": 2,
                "layout": "per-expert",
                "groups": {"n_group": 2, "topk_group": 1},
                "expert_count_key": "n_routed_experts",
            },
        ),
        (
            "gpt_oss",
            {
                "family": "gpt_oss",
                "layers": 3,
                "moe_layers": [0, 1, 2],
                "experts": 8,
                "top_k": 2,
                "layout": "fused",
                "groups": None,
                "expert_count_key": "num_local_experts",
            },
        ),
    ],
)
def test_inspect(tiny: Callable[..., Path], cli: Callable[..., Any], family: str, expected: dict[str, Any]) -> None:
    path = tiny(family)
    r = cli("inspect", str(path), "--json")
    assert r.code == 0, r
    info = json.loads(r.out)
    for k, v in expected.items():
        assert info[k] == v, k
    assert info["dtypes"] == ["F32"]
    assert info["files"] == ["model.safetensors"]
    assert 0 < info["routed_expert_bytes"] < info["total_bytes"]
    assert info["bytes_per_expert"] * 8 * len(expected["moe_layers"]) == info["routed_expert_bytes"]

    r = cli("inspect", str(path))
    assert r.code == 0, r
    text = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in r.out.splitlines() if ":" in ln}
    assert text["family"] == family
    n_moe = len(expected["moe_layers"])
    span = f"{expected['moe_layers'][0]}-{expected['moe_layers'][-1]}"
    assert text["layers"] == f"3 ({n_moe} MoE: {span})"
    assert text["routed experts"].startswith("8 per MoE layer")
    assert expected["expert_count_key"] in text["routed experts"]
    assert text["top-k"] == "2"
    assert text["layout"].startswith(expected["layout"])
    assert ("n_group 2" in text["groups"]) == (expected["groups"] is not None)
