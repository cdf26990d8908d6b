"""Streaming checkpoint writer: size-capped safetensors shards, an index, an atomic finish.

The output layout (every tensor's name, dtype, shape and size) is fixed before the first byte is
written, so headers are exact and every tensor has a known place in its shard. Each tensor's bytes
are then streamed straight from input file ranges with ``copy_file_range`` (a kernel-side copy,
like ``cp``) to that place; only tensors sliced along an inner axis are materialised, one at a
time. Because places are fixed, the order of writing is free: a shard's tensors that do not depend
on the pruning plan are written first, then each MoE layer's, so that a plan still being computed
(prune scores layer by layer while it writes) is waited for as late as possible. Everything is
written into a temporary folder beside the target and renamed into place only when complete.

Durability is opt-in (``durable``, ``moeprune prune --fsync``), as for ``cp`` and
``save_pretrained``: by default the finished folder is renamed into place and the OS writes it to
disk in its own time (an interrupted run still leaves nothing behind). A durable write fsyncs every
file and both folders involved in the rename. To keep that from doubling the time, the kernel is
asked to start writing each ``WRITEBACK_BYTES`` of a shard back to disk as soon as they are copied
(``posix_fadvise(DONTNEED)`` starts write-back of dirty pages without waiting, and drops the
output's clean pages, which nothing here reads again), so the disk works while the next bytes are
copied and each shard's fsync waits only for its tail.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moeprune.errors import OutputError
from moeprune.io.format import PAGE, encode_header
from moeprune.io.paths import atomic_dir

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
    make: Callable[[], bytes | list[Range]] | None = None
    """Or a function returning the data (small tensors sliced on an inner axis) or the input ranges
    that hold it, called only when the tensor is written (it may wait for the plan of ``layer``)."""
    nbytes: int = 0
    layer: int | None = None
    """The MoE layer whose pruning plan chooses this tensor's bytes, if any."""
    origin: int | None = None
    """For ranges that ``make`` gives later: an input offset at the same place within a page as
    theirs will be (e.g. where the tensor sits in the input), for the writer's page alignment."""


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
    durable: bool = False,
) -> list[str]:
    """Write shards (and an index when there is more than one) into ``folder``; return file names.
    ``durable``: start write-back early and fsync every shard."""
    shards = split_shards(tensors, max_bytes)
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    src_fds: dict[Path, int] = {}
    try:
        for fname, shard in zip(names, shards, strict=True):
            _write_shard(folder / fname, shard, metadata, src_fds, progress, durable)
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
    durable: bool,
) -> None:
    entries = [(t.name, t.dtype, t.shape, t.nbytes) for t in shard]
    header = encode_header(entries, metadata, _page_offset(shard))
    places: list[int] = []  # absolute offset of each tensor's data
    pos = len(header)
    for t in shard:
        places.append(pos)
        pos += t.nbytes
    dst = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_at(dst, header, 0)
        unflushed: list[tuple[int, int]] = []  # (offset, bytes) written but not yet handed to write-back
        pending = 0  # their bytes
        for i in _write_order(shard):
            t, at = shard[i], places[i]
            data = t.make() if t.make is not None else t.ranges
            if isinstance(data, list):
                done = 0
                for file, start, count in data:
                    fd = src_fds.get(file)
                    if fd is None:
                        fd = src_fds[file] = os.open(file, os.O_RDONLY)
                    _copy(fd, dst, start, count, at + done)
                    done += count
            else:
                done = _write_at(dst, data, at)
            if done != t.nbytes:
                raise AssertionError(f"{t.name}: {done} bytes for a tensor of {t.nbytes}")
            if durable and hasattr(os, "posix_fadvise"):
                unflushed.append((at, t.nbytes))
                pending += t.nbytes
                if pending >= WRITEBACK_BYTES:
                    for lo, n in unflushed:
                        os.posix_fadvise(dst, lo, n, os.POSIX_FADV_DONTNEED)
                    unflushed.clear()
                    pending = 0
            if progress is not None:
                progress(t.nbytes)
        if durable:
            os.fsync(dst)
    finally:
        os.close(dst)


def _page_offset(shard: list[OutTensor]) -> int:
    """Where in a page the shard's data should start so that most copied bytes keep their offset
    within a page (the input's own alignment, where a run of whole-page tensors was copied)."""
    votes: Counter[int] = Counter()
    pos = 0
    for t in shard:
        if t.make is None:
            for _, start, count in t.ranges:
                votes[(start - pos) % PAGE] += count
                pos += count
        else:
            if t.origin is not None:
                votes[(t.origin - pos) % PAGE] += t.nbytes
            pos += t.nbytes
    aligned = {offset: n for offset, n in votes.items() if offset % 8 == 0}  # tensor data stays 8-aligned
    return max(aligned, key=lambda offset: (aligned[offset], -offset)) if aligned else 0


def _write_order(shard: list[OutTensor]) -> list[int]:
    """Positions of the shard's tensors in the order they are written: those that depend on no
    plan first, then each MoE layer's, layers in order of first appearance."""
    first: dict[int, int] = {}
    for i, t in enumerate(shard):
        if t.layer is not None:
            first.setdefault(t.layer, i)

    def key(i: int) -> tuple[int, int]:
        layer = shard[i].layer
        return (-1 if layer is None else first[layer], i)

    return sorted(range(len(shard)), key=key)


def _write_at(fd: int, data: bytes | memoryview, at: int) -> int:
    """Write all of ``data`` at offset ``at`` of ``fd``; return its length."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], at + done)
    return done


def _copy(src: int, dst: int, start: int, count: int, at: int) -> None:
    """Copy ``count`` bytes of ``src`` from offset ``start`` to offset ``at`` of ``dst``."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(src, dst, count - done, start + done, at + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = _write_at(dst, os.pread(src, min(count - done, 16 << 20), start + done), at + done)
        if n == 0:
            raise OSError(errno.EIO, "input ended early while copying")
        done += n


@contextmanager
def atomic_folder(target: Path, overwrite: bool, durable: bool = False) -> Iterator[Path]:
    """`paths.atomic_dir`: a temporary folder beside ``target`` that replaces it only once complete
    (an existing one only with ``overwrite``), removed on any failure or interruption.
    ``durable``: every file in the folder, the folder and its parent are fsynced, so the finished
    output survives a power cut."""
    with atomic_dir(target, overwrite, on_success=_fsync_tree if durable else None) as tmp:
        yield tmp
    if durable:
        _fsync(Path(target).expanduser().absolute().parent)


def _fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` and every folder, deepest first."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
