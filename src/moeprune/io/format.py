"""The safetensors file format, parsed and written directly (no whole-file mapping).

A file is an 8-byte little-endian header length N, N bytes of JSON header (tensor name ->
dtype, shape, data_offsets relative to the data section; optional ``__metadata__``), then the
data section. Parsing validates every entry against the file size, so truncated or corrupt
files are caught before any tensor is used.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moeprune.errors import InputError
from moeprune.io.jsonfile import loads, regular_file

ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
"""Bytes per element of every safetensors dtype moeprune reads."""
_TORCH = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32", "U64": "uint64",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """``DTYPES`` (safetensors name -> torch dtype) and ``DTYPE_NAMES`` (the reverse), built on first
    use so that streaming commands never import torch."""
    if name in ("DTYPES", "DTYPE_NAMES"):
        import torch

        dtypes = {k: getattr(torch, v) for k, v in _TORCH.items()}
        globals().update(DTYPES=dtypes, DTYPE_NAMES={v: k for k, v in dtypes.items()})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype name, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    def row_bytes(self) -> int:
        """Bytes of one slice along the first axis."""
        return self.nbytes // self.shape[0] if self.shape and self.shape[0] else 0


MAX_DIM = 1 << 40
"""No tensor dimension is this large; a header claiming one is corrupt."""


def _int(value: Any) -> int | None:
    """``value`` if it is a JSON integer (not a bool, float or string), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _entry(path: Path, name: str, entry: Any, base: int, size: int) -> TensorInfo:
    """One header entry, checked: dtype known, shape of integers in [0, MAX_DIM], byte range of
    two integers matching the shape and inside the file."""
    where = f"{path}: corrupt safetensors header entry for {name!r}"
    if not isinstance(entry, dict):
        raise InputError(f"{where} (not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise InputError(f"{where} (dtype {dtype!r} is not a name)")
    if dtype not in ITEMSIZE:
        raise InputError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    dims = [_int(d) for d in shape] if isinstance(shape, list) else [None]
    if not all(d is not None and 0 <= d <= MAX_DIM for d in dims):
        raise InputError(f"{where} (shape {shape!r} is not a list of sizes)")
    span = [_int(o) for o in offsets] if isinstance(offsets, list) else []
    if len(span) != 2 or span[0] is None or span[1] is None:
        raise InputError(f"{where} (data_offsets {offsets!r} is not two integers)")
    sizes = tuple(d for d in dims if d is not None)
    lo, hi = span[0], span[1]
    if lo < 0 or hi - lo != math.prod(sizes) * ITEMSIZE[dtype]:
        raise InputError(f"{path}: corrupt safetensors header: {name!r} byte range does not match its shape")
    if base + hi > size:
        raise InputError(f"{path}: file is truncated ({size} bytes, tensor {name!r} needs {base + hi}); re-download it")
    return TensorInfo(path, dtype, sizes, base + lo, base + hi)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: ``({name: TensorInfo}, metadata)``."""
    size = regular_file(path, "safetensors file").st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise InputError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise InputError(f"{path}: corrupt safetensors header (header length {n}, file {size} bytes)")
            text = f.read(n)
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    header = loads(text, f"{path}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{path}: corrupt safetensors header (__metadata__ is not a map of strings)")
    base = 8 + n
    tensors = {name: _entry(path, name, entry, base, size) for name, entry in header.items()}
    _check_tiling(path, tensors, base, size)
    return tensors, dict(metadata)


def _check_tiling(path: Path, tensors: dict[str, TensorInfo], base: int, size: int) -> None:
    """The tensors' byte ranges tile the data section exactly, as the reference implementation
    requires: no two tensors share bytes (a copy would duplicate them), no gap, nothing after."""
    at = base
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if info.start != at:
            what = "overlaps the tensor before it" if info.start < at else "leaves a gap before it"
            raise InputError(f"{path}: corrupt safetensors header: {name!r} {what}")
        at = info.end
    if at != size:
        raise InputError(f"{path}: corrupt safetensors file: {size - at} bytes after the last tensor")


PAGE = 4096
"""Bytes of a page: copies between files are fastest when source and destination sit at the same
offset within their pages (the kernel then copies whole pages, not two pieces of each)."""


def encode_header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str], page_offset: int = 0
) -> bytes:
    """Header bytes for tensors laid out back to back in the given order.

    ``entries`` are ``(name, dtype, shape, nbytes)``; the result is padded with spaces to a
    multiple of 8 bytes, as the reference implementation does, and further (by less than a page)
    so that the data starts ``page_offset`` bytes into a page (a multiple of 8, below PAGE).
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    assert page_offset % 8 == 0 and 0 <= page_offset < PAGE, page_offset
    body += b" " * ((page_offset - 8 - len(body)) % PAGE)
    return struct.pack("<Q", len(body)) + body


def read_bytes(fd: int, start: int, nbytes: int, out: bytearray | memoryview | None = None) -> memoryview:
    """Read exactly ``nbytes`` at ``start`` (pread loop) into ``out`` or a new buffer."""
    buf = memoryview(out if out is not None else bytearray(nbytes))[:nbytes]
    got = 0
    while got < nbytes:
        n = os.preadv(fd, [buf[got:]], start + got)
        if n == 0:
            raise InputError(f"unexpected end of file while reading {nbytes} bytes at offset {start}")
        got += n
    return buf
