"""Write a pruned GGUF: same metadata (expert count changed, the plan recorded), same tensors in
the same order and shards, with removed experts' slices left out of every expert tensor and
their rows out of the router and selection biases. Byte-exact for every quantization type.

gguf-py's `GGUFWriter` writes the header, metadata and tensor table (so offsets and alignment
follow the format's own code); the tensor data is then copied from the input file by byte range
(``os.copy_file_range``, or pread/pwrite where the kernel cannot), one kept expert slice or
untouched tensor at a time, so memory stays flat whatever the file size. Everything is written to
temporary files beside the target, read back with gguf-py's reader and checked, then renamed into
place; any failure or interrupt removes them.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moeprune.errors import InputError, OutputError
from moeprune.gguf.model import SPLIT, SPLIT_KEYS, GgufModel, GgufTensor
from moeprune.io.paths import check_new, check_output

COPY_BYTES = 64 << 20
"""Largest single copy request (keeps interrupts responsive)."""


def output_paths(model: GgufModel, out: Path) -> list[Path]:
    """The file(s) to write: ``out`` itself, or for a split model of N shards,
    ``<stem>-0000i-of-0000N.gguf`` beside it (``out`` may name the first shard or the stem)."""
    n = len(model.paths)
    if n == 1:
        return [out]
    m = SPLIT.match(out.name)
    stem = m["stem"] if m else (out.name[: -len(".gguf")] if out.name.endswith(".gguf") else out.name)
    return [out.with_name(f"{stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def check_targets(model: GgufModel, targets: Sequence[Path], overwrite: bool) -> None:
    """The project's output rules (`moeprune.io.paths`): never an input, an existing file only
    with ``overwrite``, never a folder, in a folder that exists."""
    for t in targets:
        check_new(check_output(t, model.paths), overwrite, "file")


def _kv(field: Any) -> tuple[Any, Any, Any] | None:
    """(value, type, sub type) of a reader field, as GGUFWriter.add_key_value takes them (strings
    as their exact bytes); None for an empty array (GGUFWriter cannot write one)."""
    from gguf import GGUFValueType

    t0 = field.types[0]
    if t0 == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), t0, None
    if t0 == GGUFValueType.ARRAY:
        if len(field.types) == 1:
            return None
        if len(field.types) != 2:
            raise InputError(f"GGUF metadata {field.name!r}: nested arrays are not supported")
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], t0, sub
        return field.contents(), t0, sub
    return field.parts[field.data[0]][0].item(), t0, None


def _writer(model: GgufModel, n_kept: int, kept: dict[int, list[int]], note: dict[str, Any]) -> Any:
    from gguf import GGUFValueType, GGUFWriter

    w = GGUFWriter(None, model.arch.arch)
    w.data_alignment = model.alignment
    for key, field in model.readers[0].fields.items():
        if key.startswith("GGUF.") or key in SPLIT_KEYS or key == "general.architecture":
            continue
        kv = _kv(field)
        if kv is None:
            continue
        value, vtype, sub = kv
        if key == model.arch.count_key():
            value = n_kept
        w.add_key_value(key, value, vtype, sub)
    w.add_key_value("moeprune.plan", json.dumps(note, separators=(",", ":")), GGUFValueType.STRING)
    for s in range(len(model.paths)):
        if s:
            w.tensors.append({})
        for t in _shard_tensors(model, s):
            shape, nbytes = new_shape(model, t, n_kept)
            w.add_tensor_info(t.name, shape, _DUMMY, nbytes, raw_dtype=t.qtype)
    return w


_DUMMY: Any = "float32"
"""Any dtype but uint8 makes GGUFWriter.add_tensor_info take the shape as element counts."""


def _shard_tensors(model: GgufModel, shard: int) -> list[GgufTensor]:
    return [t for t in model.tensors.values() if t.shard == shard]


def new_shape(model: GgufModel, t: GgufTensor, n_kept: int) -> tuple[tuple[int, ...], int]:
    if t.name not in model.roles:
        return t.shape, t.nbytes
    per = t.nbytes // model.n_experts
    return (n_kept, *t.shape[1:]), per * n_kept


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, count) runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for j in ids:
        if runs and runs[-1][0] + runs[-1][1] == j:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((j, 1))
    return runs


def _copy(src: int, src_off: int, dst: int, dst_off: int, n: int, state: dict[str, bool]) -> None:
    """Copy n bytes between file descriptors at the given offsets."""
    while n > 0:
        k = min(n, COPY_BYTES)
        done = 0
        if state.get("kernel", True):
            try:
                done = os.copy_file_range(src, dst, k, src_off, dst_off)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                    raise
                state["kernel"] = False
        if done <= 0:
            data = os.pread(src, k, src_off)
            if not data:
                raise InputError("the input file ended early (changed while reading?)")
            done = os.pwrite(dst, data, dst_off)
        src_off += done
        dst_off += done
        n -= done


def _pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def write_pruned(
    model: GgufModel,
    targets: Sequence[Path],
    kept: dict[int, list[int]],
    note: dict[str, Any],
    *,
    overwrite: bool = False,
    fsync: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write ``model`` with only the ``kept`` experts of every MoE block (layer -> sorted original
    ids, the same count everywhere) to ``targets`` (one per shard), atomically."""
    check_targets(model, targets, overwrite)
    n_kept = len(next(iter(kept.values())))
    if {layer.index for layer in model.layers} != set(kept) or any(len(k) != n_kept for k in kept.values()):
        raise InputError("the plan must keep the same number of experts in every MoE block of this file")
    w = _writer(model, n_kept, kept, note)
    first = targets[0]
    base = first.with_name(f".{first.name}.moeprune-{os.getpid()}.tmp.gguf")
    temps = w.format_shard_names(base)
    try:
        w.write_header_to_file(base)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.flush()
        ends = [f.tell() for f in w.fout]
        w.close()
        state: dict[str, bool] = {}
        for s, tmp in enumerate(temps):
            _write_data(model, s, tmp, _pad(ends[s], model.alignment), n_kept, kept, state, fsync, progress)
        _check_written(model, temps, n_kept)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
        if fsync:
            fd = os.open(first.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        if w.fout is not None:
            w.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def _write_data(
    model: GgufModel,
    shard: int,
    tmp: Path,
    start: int,
    n_kept: int,
    kept: dict[int, list[int]],
    state: dict[str, bool],
    fsync: bool,
    progress: Callable[[int], None] | None,
) -> None:
    src = os.open(model.paths[shard], os.O_RDONLY)
    dst = os.open(tmp, os.O_RDWR)
    try:
        pos = start
        for t in _shard_tensors(model, shard):
            r = model.roles.get(t.name)
            if r is None:
                _copy(src, t.offset, dst, pos, t.nbytes, state)
                written = t.nbytes
            else:
                per = t.nbytes // model.n_experts
                at = pos
                for j, count in _runs(kept[r.layer]):
                    _copy(src, t.offset + j * per, dst, at, count * per, state)
                    at += count * per
                written = n_kept * per
            if progress is not None:
                progress(written)
            pos += _pad(written, model.alignment)
        os.ftruncate(dst, pos)  # the padding after the last tensor, as GGUFWriter writes it
        if fsync:
            os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)


def _check_written(model: GgufModel, temps: Sequence[Path], n_kept: int) -> None:
    """Read the new files back with gguf-py and check every tensor's type, shape and extent."""
    from gguf import GGUFReader

    for s, tmp in enumerate(temps):
        reader = GGUFReader(tmp, "r")
        got = {t.name: t for t in reader.tensors}
        want = _shard_tensors(model, s)
        if list(got) != [t.name for t in want]:
            raise OutputError(f"{tmp}: written tensor table differs from the input's (internal error)")
        for t in want:
            shape, nbytes = new_shape(model, t, n_kept)
            g = got[t.name]
            if (g.tensor_type, tuple(reversed([int(d) for d in g.shape])), int(g.n_bytes)) != (t.qtype, shape, nbytes):
                raise OutputError(f"{tmp}: tensor {t.name!r} written wrong (internal error)")
        del reader
