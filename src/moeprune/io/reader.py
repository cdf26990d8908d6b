"""Lazy access to a Hugging Face checkpoint: a local folder or a hub id.

`Checkpoint` parses config.json and every safetensors header (validating each against its file),
then reads tensors, or slices of them along the first axis, on demand with ``pread``: one
tensor (or one slice) in memory at a time, no file mapped, the input never opened for writing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moeprune.arch.config import load_config
from moeprune.errors import InputError
from moeprune.io.format import TensorInfo, read_bytes, read_header
from moeprune.io.jsonfile import read_json, regular_file

if TYPE_CHECKING:
    import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve(model: str | os.PathLike[str], *, weights: bool = True) -> Path:
    """A local folder for ``model``: the folder itself, or a hub snapshot (downloaded)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if path.exists():
        raise InputError(f"{text}: is a file; give the checkpoint folder")
    if not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise InputError(f"{text}: no such folder (and not a Hugging Face hub id like org/name)")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "*.model", "*.jinja", "*.py", "*.md"]
        if weights:
            patterns.append("*.safetensors")
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as e:  # hub errors are many; every one means the same thing here
        raise InputError(
            f"{text}: could not fetch from the Hugging Face hub ({e.__class__.__name__}); "
            "check the id, your network or HF_TOKEN, or pass a local folder"
        ) from None


class Checkpoint:
    """A checkpoint's config and tensor table; tensors are read lazily."""

    def __init__(self, path: Path, config: dict[str, Any], tensors: dict[str, TensorInfo], metadata: dict[str, str]):
        self.path = path
        self.config = config
        self.tensors = tensors
        self.metadata = metadata
        self._fds: dict[Path, int] = {}

    @classmethod
    def open(cls, model: str | os.PathLike[str], *, weights: bool = True) -> Checkpoint:
        path = resolve(model, weights=weights)
        config = load_config(path)
        remote = not Path(model).expanduser().is_dir()
        if not weights and remote and not any(path.glob("*.safetensors")):  # hub id: headers only
            return cls(path, config, _hub_headers(str(model), path), {})
        files, expected = _weight_files(path)
        tensors: dict[str, TensorInfo] = {}
        metadata: dict[str, str] = {}
        for file in files:
            found, meta = read_header(file)
            metadata.update(meta)
            for name, info in found.items():
                if name in tensors:
                    raise InputError(f"{path}: tensor {name!r} appears in two shards")
                tensors[name] = info
        if expected is not None:
            for name, fname in expected.items():
                held = tensors.get(name)
                if held is None or held.file.name != fname:
                    raise InputError(
                        f"{path / INDEX}: names tensor {name!r} in {fname}, but that shard does not hold it"
                    )
            tensors = {name: tensors[name] for name in expected}
        return cls(path, config, tensors, metadata)

    # -- reading ---------------------------------------------------------------------------------

    def _fd(self, file: Path) -> int:
        fd = self._fds.get(file)
        if fd is None:  # safe from several threads: a loser of the race closes its own descriptor
            new = os.open(file, os.O_RDONLY)
            fd = self._fds.setdefault(file, new)
            if fd != new:
                os.close(new)
        return fd

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise InputError(f"{self.path}: tensor {name!r} not found in the checkpoint") from None

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` (or rows ``lo:hi`` of its first axis) as a new CPU tensor."""
        import torch

        from moeprune.io.format import DTYPES

        info = self.info(name)
        shape = list(info.shape)
        start, nbytes = info.start, info.nbytes
        if rows is not None:
            lo, hi = rows
            row = info.row_bytes()
            start, nbytes, shape[0] = info.start + lo * row, (hi - lo) * row, hi - lo
        buf = read_bytes(self._fd(info.file), start, nbytes)
        if info.dtype not in DTYPES:  # e.g. F8_E8M0 scales: raw bytes
            return torch.frombuffer(buf, dtype=torch.uint8).view(shape) if nbytes else torch.empty(shape)
        dtype = DTYPES[info.dtype]
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).view(shape)

    def read_raw(self, file: Path, start: int, out: bytearray | memoryview) -> memoryview:
        """Fill ``out`` with the bytes of ``file`` (one of this checkpoint's shards) from absolute
        offset ``start``, with no allocation: the streaming scorer's read (safe from any thread)."""
        return read_bytes(self._fd(file), start, len(out), out)

    def fileno(self, file: Path) -> int:
        """The read-only descriptor of ``file`` (one of this checkpoint's shards), opened on first
        use and closed by `close`: for readers that map or read it themselves (the native scoring
        kernel). Safe from any thread; do not close it."""
        return self._fd(file)

    def prefetch(self, file: Path, start: int, nbytes: int) -> None:
        """Ask the kernel to start reading a byte range of ``file`` into the page cache, without
        waiting (streaming passes call it ahead of their reads; a no-op where unsupported)."""
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd(file), start, nbytes, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _hub_headers(repo: str, path: Path) -> dict[str, TensorInfo]:
    """Tensor table of a hub checkpoint from its safetensors headers only (HTTP range reads)."""
    try:
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(repo)
    except Exception as e:
        raise InputError(f"{repo}: could not read safetensors headers from the hub ({e.__class__.__name__})") from None
    tensors: dict[str, TensorInfo] = {}
    for fname, fmeta in meta.files_metadata.items():
        for name, t in fmeta.tensors.items():
            lo, hi = t.data_offsets
            tensors[name] = TensorInfo(path / fname, t.dtype, tuple(t.shape), lo, hi)
    return tensors


def _weight_map(data: Any, index: Path) -> dict[str, str]:
    """The checked ``weight_map`` of model.safetensors.index.json: tensor name -> shard file."""
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index}: field weight_map: must be an object of tensor name -> shard file name")
    return weight_map


def _weight_files(path: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files to read, and the index's name -> file map when there is one."""
    index = path / INDEX
    if index.exists() or index.is_symlink():
        weight_map = _weight_map(read_json(index, INDEX), index)
        files = sorted(set(weight_map.values()))
        if any(Path(f).name != f or f in ("", ".", "..") for f in files):
            raise InputError(f"{index}: names a shard outside the checkpoint folder")
        missing = [f for f in files if not ((path / f).exists() or (path / f).is_symlink())]
        if missing:
            raise InputError(f"{path}: shard {missing[0]} named by {INDEX} is missing ({len(missing)} missing)")
        for f in files:
            regular_file(path / f, f"shard named by {INDEX}")
        return [path / f for f in files], dict(weight_map)
    if (path / SINGLE).is_file():
        return [path / SINGLE], None
    shards = sorted(path.glob("model*.safetensors"))
    if shards:
        return shards, None
    if any((path / n).exists() for n in PICKLE_NAMES) or list(path.glob("pytorch_model*.bin")):
        raise InputError(
            f"{path}: holds only pickle (.bin) weights, which moeprune never unpickles; convert them first: "
            f'python -c "from transformers import AutoModelForCausalLM as M; '
            f"M.from_pretrained('{path}').save_pretrained('{path}-safetensors')\""
        )
    raise InputError(f"{path}: no safetensors weights (model.safetensors or {INDEX})")
