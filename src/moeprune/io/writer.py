"""Streaming checkpoint writer: size-capped safetensors shards, an index, an atomic finish.

The output layout (every tensor's name, dtype, shape and byte source) is fixed before the first
byte is written, so headers are exact and each tensor's bytes are streamed straight from the
input file ranges with ``copy_file_range`` (a kernel-side copy, like ``cp``). Only tensors sliced
along an inner axis are materialised, one at a time. Everything is written into a temporary
folder beside the target and renamed into place only when complete.

Durability: every shard is fsynced before the rename. To keep that from doubling the time, the
kernel is asked to start writing each ``WRITEBACK_BYTES`` of a shard back to disk as soon as they
are copied (``posix_fadvise(DONTNEED)`` starts write-back of dirty pages without waiting, and
drops the output's clean pages, which nothing here reads again), so the disk works while the next
bytes are copied and the final fsync waits only for the tail.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moeprune.errors import OutputError
from moeprune.io.format import encode_header

WRITEBACK_BYTES = 64 << 20
"""Bytes of a shard copied between two write-back requests."""

Range = tuple[Path, int, int]
"""(file, absolute start, byte count) of an input region."""


@dataclass
class OutTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    ranges: list[Range] = field(default_factory=list)
    """Input byte ranges that, concatenated, are this tensor's data."""
    make: Callable[[], bytes] | None = None
    """Or a function returning the data (small tensors sliced on an inner axis)."""
    nbytes: int = 0


def parse_size(text: str | int) -> int:
    """``5GB`` (10^9), ``500MiB`` (2^20), or a plain byte count."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise OutputError(f"cannot read size {text!r}; use e.g. 5GB, 500MB or 2GiB")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    power = "KMGT".index(unit) + 1 if unit else 0
    size = int(value * (1024 if binary else 1000) ** power)
    if size <= 0:
        raise OutputError(f"size {text!r} must be positive")
    return size


def split_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most ``max_bytes`` of data (a larger tensor gets a shard alone)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def write_checkpoint(
    folder: Path,
    tensors: list[OutTensor],
    metadata: dict[str, str],
    max_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write shards (and an index when there is more than one) into ``folder``; return file names."""
    shards = split_shards(tensors, max_bytes)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    src_fds: dict[Path, int] = {}
    try:
        for fname, shard in zip(names, shards, strict=True):
            _write_shard(folder / fname, shard, metadata, src_fds, progress)
    finally:
        for fd in src_fds.values():
            os.close(fd)
    if n > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: fname for fname, shard in zip(names, shards, strict=True) for t in shard},
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def _write_shard(
    path: Path,
    shard: list[OutTensor],
    metadata: dict[str, str],
    src_fds: dict[Path, int],
    progress: Callable[[int], None] | None,
) -> None:
    header = encode_header([(t.name, t.dtype, t.shape, t.nbytes) for t in shard], metadata)
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(dst, header)
        flushed = 0  # bytes of the shard already handed to write-back
        for t in shard:
            if t.make is not None:
                data = t.make()
                assert len(data) == t.nbytes, t.name
                _write_all(dst, data)
            else:
                for file, start, count in t.ranges:
                    fd = src_fds.get(file)
                    if fd is None:
                        fd = src_fds[file] = os.open(file, os.O_RDONLY)
                    _copy(fd, dst, start, count)
            written = os.lseek(dst, 0, os.SEEK_CUR)
            if written - flushed >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(dst, flushed, written - flushed, os.POSIX_FADV_DONTNEED)
                flushed = written
            if progress is not None:
                progress(t.nbytes)
        os.fsync(dst)
    finally:
        os.close(dst)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy(src: int, dst: int, start: int, count: int) -> None:
    """Copy ``count`` bytes from ``src`` at ``start`` to the current position of ``dst``."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(src, dst, count - done, start + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _copy_slow(src, dst, start + done, count - done)
        if n == 0:
            raise OSError(errno.EIO, "input ended early while copying")
        done += n


def _copy_slow(src: int, dst: int, start: int, count: int) -> int:
    chunk = os.pread(src, min(count, 16 << 20), start)
    _write_all(dst, chunk)
    return len(chunk)


@contextmanager
def atomic_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (an existing
    one only with ``overwrite``, and only once the new one is complete); on any failure or
    interruption it is removed and ``target`` is left as it was."""
    target = target.resolve()
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists; pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.moeprune-partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise OutputError(f"no space left on device while writing {target}; nothing was written") from None
        raise OutputError(f"could not write {target}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.parent / f".{target.name}.moeprune-old-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
