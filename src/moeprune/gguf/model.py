"""Open a GGUF model (one file or a ``-00001-of-0000N.gguf`` split) with gguf-py's reader and
check it, once, into a typed `GgufModel`: architecture, expert count, top-k, groups, MoE blocks
and their expert / per-expert tensors with file offsets. Every defect (not GGUF, truncated,
tensor data out of range or misaligned, unknown architecture, inconsistent expert shapes) is one
`InputError` line. No tensor data is read here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from moeprune.arch.gguf import GgufArch, Role, expected, gguf_arch, groups, role
from moeprune.arch.spec import Groups
from moeprune.errors import InputError

SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
PER_EXPERT = re.compile(r"^blk\.\d+\.[^.]*(_exps|_chexps)\b")
"""Names of per-expert tensors: every one must have a known role (arch/gguf.py)."""


@dataclass(frozen=True)
class GgufTensor:
    """One tensor: where its bytes are and what they hold."""

    name: str
    shard: int
    qtype: Any
    """gguf.GGMLQuantizationType."""
    shape: tuple[int, ...]
    """Numpy order (outer axis first; GGUF's dims reversed), in elements."""
    offset: int
    """Absolute byte offset of the data in its shard."""
    nbytes: int


@dataclass
class GgufLayer:
    index: int
    experts: list[str] = field(default_factory=list)
    """Expert tensors (weights and biases): numpy axis 0 is the expert."""
    sliced: list[str] = field(default_factory=list)
    """Router rows, router bias, selection bias: one entry per expert on numpy axis 0."""
    pooled: list[str] = field(default_factory=list)
    """The expert weights the weight criteria pool (no biases)."""


@dataclass
class GgufModel:
    paths: list[Path]
    readers: list[Any]
    """gguf.GGUFReader per shard (metadata fields and memmaps)."""
    arch: GgufArch
    tensors: dict[str, GgufTensor]
    """Every tensor, in file order (shard by shard)."""
    roles: dict[str, Role]
    n_experts: int
    top_k: int
    n_blocks: int
    groups: Groups | None
    layers: list[GgufLayer]
    alignment: int

    @property
    def path(self) -> Path:
        return self.paths[0]

    def field(self, key: str) -> Any:
        return _scalar(self.readers[0], key)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def shard_paths(path: Path) -> list[Path]:
    """All files of the model ``path`` names: itself, or every shard of its split."""
    m = SPLIT.match(path.name)
    if m is None:
        return [path]
    count = int(m["count"])
    paths = [path.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{path}: split GGUF is missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    return paths


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file")
    size = path.stat().st_size
    if size < 24:
        raise InputError(f"{path}: not a GGUF file (only {size} bytes)")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InputError(f"{path}: not a GGUF file (wrong magic)")
    try:
        reader = GGUFReader(path, "r")
        if reader.byte_order != "I":
            raise InputError(f"{path}: a GGUF file for big-endian machines; moeprune handles little-endian ones")
        return reader
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError, MemoryError) as e:
        text = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if "reshape" in text or "out of bounds" in text or isinstance(e, IndexError):
            text = f"data runs past the end of the file at {size} bytes; truncated? ({text})"
        raise InputError(f"{path}: not a readable GGUF file: {text}") from None


def _scalar(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InputError(f"GGUF metadata {key!r} cannot be read") from None


def _int(reader: Any, path: Path, key: str, *, required: bool = True) -> int:
    v = _scalar(reader, key)
    if v is None:
        if required:
            raise InputError(f"{path}: GGUF metadata has no {key!r}")
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InputError(f"{path}: GGUF metadata {key!r} is {v!r}, not a count")
    return v


def open_gguf(path: str | os.PathLike[str]) -> GgufModel:
    """Read and check the metadata and tensor table of a GGUF model (no tensor data)."""
    from gguf import GGML_QUANT_SIZES

    paths = shard_paths(Path(path))
    readers = [_reader(p) for p in paths]
    first = readers[0]
    name = _scalar(first, "general.architecture")
    if not isinstance(name, str):
        raise InputError(f"{paths[0]}: GGUF metadata has no general.architecture")
    arch = gguf_arch(name)
    if len(paths) > 1:
        count = _scalar(first, "split.count")
        if count is not None and count != len(paths):
            raise InputError(f"{paths[0]}: split.count says {count} files, the name says {len(paths)}")
    n_experts = _int(first, paths[0], arch.count_key())
    top_k = _int(first, paths[0], arch.used_key())
    n_blocks = _int(first, paths[0], arch.block_count_key())
    if n_experts < 2:
        raise InputError(f"{paths[0]}: {arch.count_key()} = {n_experts}: this {name} model has no routed experts")
    tensors: dict[str, GgufTensor] = {}
    alignment = int(first.alignment)
    for s, (p, reader) in enumerate(zip(paths, readers, strict=True)):
        size = p.stat().st_size
        for t in reader.tensors:
            if t.name in tensors:
                raise InputError(f"{p}: tensor {t.name!r} appears in two shards")
            block = GGML_QUANT_SIZES[t.tensor_type][0]
            dims = [int(d) for d in t.shape]
            if dims and dims[0] % block:
                raise InputError(f"{p}: tensor {t.name!r}: row of {dims[0]} is not whole {t.tensor_type.name} blocks")
            start, nbytes = int(t.data_offset), int(t.n_bytes)
            if start + nbytes > size:
                raise InputError(
                    f"{p}: tensor {t.name!r} data [{start}, {start + nbytes}) is out of range (file has {size} bytes)"
                )
            if (start - int(reader.data_offset)) % int(reader.alignment):
                raise InputError(f"{p}: tensor {t.name!r} data is not aligned to {reader.alignment} bytes")
            tensors[t.name] = GgufTensor(t.name, s, t.tensor_type, tuple(reversed(dims)), start, nbytes)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.shard == s)
        for (_, end, a), (start, _, b) in pairwise(spans):
            if start < end:
                raise InputError(f"{p}: the data of tensors {a!r} and {b!r} overlap")
    roles = {n: r for n in tensors if (r := role(n)) is not None}
    unknown = next((n for n in tensors if n not in roles and PER_EXPERT.match(n)), None)
    if unknown is not None:  # e.g. ffn_norm_exps, chunk experts, per-expert scales: would stay unpruned
        raise InputError(f"{paths[0]}: tensor {unknown!r} looks per-expert, and moeprune does not know how to prune it")
    by_layer: dict[int, GgufLayer] = {}
    for n, r in roles.items():
        layer = by_layer.setdefault(r.layer, GgufLayer(r.layer))
        (layer.experts if r.role == "expert" else layer.sliced).append(n)
        if r.pooled:
            layer.pooled.append(n)
    layers = [by_layer[i] for i in sorted(by_layer)]
    if not layers:
        raise InputError(f"{paths[0]}: no routed-expert tensors (blk.N.ffn_*_exps) in this {name} file")
    present = set(tensors)
    for layer in layers:
        missing = [n for n in expected(arch, present, layer.index) if n not in present]
        if missing:
            raise InputError(f"{paths[0]}: MoE block {layer.index} lacks {', '.join(missing)}")
        for n in layer.experts + layer.sliced:
            _check_expert_axis(tensors[n], roles[n], n_experts, paths[0])
    n_group, n_group_used = (_int(first, paths[0], k, required=False) for k in arch.group_keys())
    has_bias = any(r.role == "selection" for r in roles.values())
    return GgufModel(
        paths,
        readers,
        arch,
        tensors,
        roles,
        n_experts,
        top_k,
        n_blocks,
        groups(arch, n_group, n_group_used, has_bias),
        layers,
        alignment,
    )


def _check_expert_axis(t: GgufTensor, r: Role, n_experts: int, path: Path) -> None:
    want_dims = 3 if r.role == "expert" and r.suffix == "weight" else 2 if r.role in ("expert", "router") else 1
    if r.role == "router" and r.suffix == "bias":
        want_dims = 1
    if len(t.shape) != want_dims or t.shape[0] != n_experts:
        raise InputError(
            f"{path}: tensor {t.name!r} has shape {list(t.shape)}; expected {want_dims} dims with "
            f"{n_experts} experts on the outer axis"
        )
    if t.nbytes % n_experts:
        raise InputError(f"{path}: tensor {t.name!r} of {t.nbytes} bytes does not split into {n_experts} experts")
