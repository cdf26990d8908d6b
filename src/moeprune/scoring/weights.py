"""The weight pass: every routed expert's pooled moments streamed from a safetensors checkpoint.

One pass reads each routed expert's matrices (gate, up, down; biases excluded) once and
accumulates, per expert, the pooled moments n, sum |w| and sum w^2 in float64
(`scoring.criteria.WeightMoments`, from which every weight criterion is computed).

The pass keeps every core busy: one worker thread per core (at most 8) takes runs of an
expert's bytes (pieces of at most 16 MiB) and reduces them, releasing the GIL; the OS is asked to
read ahead of the workers. A piece is reduced by one of two kernels, chosen once, by `_NATIVE`:

- the native one, ``moeprune.scoring._moments`` (C, built by setup.py where a C compiler exists;
  bf16, fp16, fp32, fp64): it maps the piece from the page cache (no copy), widens every value
  exactly to float64 and sums |w| and w^2 in float64, vectorized (AVX2 where the CPU has it).
  Relative error within ~1e-15 for every dtype (measured on 1e8 values; see _moments.c);
- otherwise numpy: ``pread`` 1 MiB at a time into the worker's own buffer and a few numpy
  operations per chunk, accurate as follows.

Accuracy of the numpy kernel (relative, against float64 sums of the exact values):

- bf16 and fp16 are widened exactly to float32 (a bf16 is the top half of a float32 bit pattern,
  so two bit operations widen a pair of them). Their squares are exact in float32 (8 or 11
  significant bits, squared, fit in 24) and are summed in float64: exact to ~1e-16. Summing them
  in float32 would not do: exact squares have structured low bits (quadratic residues), so
  float32 sums of them round down more often than up, by ~6e-8. |w| is summed 16 values at a time
  in float32 (its rounding errors are unbiased), then in float64: within ~1e-10 on thousands of
  values, ~1e-12 on 1e8. Chunks whose float32 squares may overflow or underflow (|w| > ~1e19, or
  a mean w^2 below 2^-100) are redone in float64.
- fp32 and fp64 are summed in float64 (squares of fp32 values are exact there); other float
  dtypes (fp8) are widened through torch.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from moeprune.arch.layout import MoeLayer, MoeModel, is_weight
from moeprune.io.format import ITEMSIZE
from moeprune.io.reader import Checkpoint
from moeprune.scoring.criteria import WeightMoments

if TYPE_CHECKING:
    import numpy as np  # imported where used: the native path never loads numpy (~0.14 s of startup)

CHUNK_BYTES = 1 << 20
"""Bytes read and reduced at once by a worker: big enough that the numpy calls on it are long
compared with handing the GIL to the other workers (each call releases it; 256 KiB chunks ran
no faster on two threads than on one), small enough that the float64 copy stays in cache."""
PIECE_BYTES = 16 << 20
"""Bytes of one expert handed to a worker at once (a run of chunks). The native kernel maps a piece
at once (so this bounds what each worker has mapped), and runs ~15 % faster on 16 MiB pieces
than on 4 MiB ones (fewer calls, maps and unmaps)."""
_GROUP = 16
"""bf16/fp16 |w| are summed 16 at a time in float32, then in float64."""
_TINY = 2.0**-100
PREFETCH_BYTES = 64 << 20
"""How far ahead of the workers the kernel is asked to read a file into the page cache."""
MAX_THREADS = 8
_LITTLE = sys.byteorder == "little"


def _native_kernel() -> Any:
    """The C kernel module, or None where it was not built (then numpy does the work)."""
    try:
        return importlib.import_module("moeprune.scoring._moments")
    except ImportError:
        return None


_NATIVE = _native_kernel()
"""The one switch between the kernels (tests set it to None to run the numpy path)."""
_NATIVE_DTYPES = frozenset({"BF16", "F16", "F32", "F64"})


def accumulate(x: Any) -> tuple[float, float]:
    """(sum |x|, sum x^2) of a float tensor (torch or numpy, any shape), accumulated as described
    in the module docstring for the numpy kernel: sum |x| of bf16/fp16 within ~1e-10 relative, the
    rest to float64 rounding."""
    kind, flat = _as_numpy(x)
    step = max(1, CHUNK_BYTES // flat.itemsize)
    scratch = _Scratch(min(step, flat.size) * flat.itemsize)
    sa = sq = 0.0
    for lo in range(0, flat.size, step):
        a, b = _sums(kind, flat[lo : lo + step], scratch)
        sa += a
        sq += b
    return sa, sq


def _as_numpy(x: Any) -> tuple[str, np.ndarray]:
    """(kind, 1-D numpy array) for the kernel: BF16/F16 as uint16 bit patterns, F32, F64."""
    import numpy as np

    if isinstance(x, np.ndarray):
        flat = np.ascontiguousarray(x).reshape(-1)
        if flat.dtype.name == "bfloat16":  # ml_dtypes
            return "BF16", flat.view(np.uint16)
        kinds = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
        if flat.dtype not in kinds:
            raise TypeError(f"cannot score {x.dtype} weights")
        return kinds[flat.dtype], flat.view(np.uint16) if flat.dtype == np.float16 else flat
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"cannot score {type(x).__name__} objects")
    if not x.is_floating_point():
        raise TypeError(f"cannot score {x.dtype} weights")
    t = x.detach().cpu().contiguous().reshape(-1)
    if t.dtype in (torch.bfloat16, torch.float16):
        return ("BF16" if t.dtype == torch.bfloat16 else "F16"), t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.float32:
        return "F32", t.numpy()
    return "F64", t.to(torch.float64).numpy()


class _Scratch:
    """One worker's buffers: any chunk of at most ``size`` bytes is reduced inside them."""

    def __init__(self, size: int | None = None) -> None:
        import numpy as np

        size = max(8, CHUNK_BYTES if size is None else size)
        self.raw = bytearray(size)
        self.f = np.empty(size // 2 + _GROUP, np.float32)  # |x| of a chunk of 2-byte values, padded
        self.partial = np.empty(size // 2 // _GROUP + 1, np.float32)
        self.wide = np.empty(size // 2, np.float64)


def _sums(kind: str, x: np.ndarray, s: _Scratch) -> tuple[float, float]:
    """(sum |x|, sum x^2) of one chunk; ``x`` as returned by `_as_numpy` (bit patterns for halves)."""
    import numpy as np

    if kind in ("BF16", "F16") and _LITTLE:
        return _sums_half(x, kind == "BF16", s)
    d = s.wide[: x.size]
    if kind == "BF16":  # big-endian host: widen by value
        np.abs((x.astype(np.uint32) << 16).view(np.float32), out=d)
    else:
        np.abs(x.view(np.float16) if kind == "F16" else x, out=d)
    return float(np.add.reduce(d)), float(np.einsum("i,i->", d, d))  # w^2 exact in float64


def _abs_half(bits: np.ndarray, bf16: bool, f: np.ndarray) -> None:
    """|x| of bf16 or fp16 bit patterns ``bits`` into ``f[:n]`` (float32, exact; in some order)."""
    import numpy as np

    n = bits.size
    if not bf16:
        np.abs(bits.view(np.float16), out=f[:n])
        return
    fw = f.view(np.uint32)
    w = n // 2
    if w:
        u = bits[: 2 * w].view(np.uint32)  # (w,) pairs: element 2i in the low half (little-endian)
        np.bitwise_and(u, 0x7FFF0000, out=fw[:w])  # odd elements, sign cleared
        np.left_shift(u, 16, out=fw[w : 2 * w])  # even elements
        np.bitwise_and(fw[w : 2 * w], 0x7FFFFFFF, out=fw[w : 2 * w])
    if n % 2:
        fw[n - 1] = (int(bits[n - 1]) & 0x7FFF) << 16


def _sums_half(bits: np.ndarray, bf16: bool, s: _Scratch) -> tuple[float, float]:
    """(sum |x|, sum x^2) of at most CHUNK_BYTES of bf16 or fp16 values given as uint16 bit patterns."""
    import numpy as np

    n = bits.size
    _abs_half(bits, bf16, s.f)
    g = -(-n // _GROUP)
    s.f[n : g * _GROUP] = 0.0
    partial = s.partial[:g]
    f = s.f[:n]
    with np.errstate(over="ignore", under="ignore"):  # both are checked for below
        np.add.reduce(s.f[: g * _GROUP].reshape(_GROUP, g), axis=0, out=partial)  # (g,) float32 sums of 16
        sa = float(partial.sum(dtype=np.float64))
        np.square(f, out=f)  # exact: 8 (bf16) or 11 (fp16) significant bits, squared, fit in float32's 24
    ss = float(np.add.reduce(f, dtype=np.float64))
    if not (math.isfinite(sa) and math.isfinite(ss)) or (sa > 0.0 and ss < _TINY * n):
        # |w| > ~1e19 overflows float32 squares or partial sums, |w| < ~1e-23 underflows the squares
        _abs_half(bits, bf16, s.f)
        d = s.wide[:n]
        np.copyto(d, f)
        sa, ss = float(np.add.reduce(d)), float(np.einsum("i,i->", d, d))
    return sa, ss


def _raw_sums(dtype: str, raw: bytearray, nbytes: int, s: _Scratch) -> tuple[float, float]:
    """(sum |x|, sum x^2) of the first ``nbytes`` of ``raw``, holding ``dtype`` values (safetensors name)."""
    import numpy as np

    if dtype in ("BF16", "F16"):
        return _sums(dtype, np.frombuffer(raw, np.uint16, nbytes // 2), s)
    if dtype in ("F32", "F64"):
        wide = np.float32 if dtype == "F32" else np.float64
        return _sums(dtype, np.frombuffer(raw, wide, nbytes // ITEMSIZE[dtype]), s)
    import torch

    from moeprune.io.format import DTYPES

    dt = DTYPES.get(dtype)
    if dt is None or not dt.is_floating_point:
        raise TypeError(f"cannot score {dtype} weights")
    x = torch.frombuffer(raw, dtype=dt, count=nbytes // ITEMSIZE[dtype]).to(torch.float64).numpy()
    sa = sq = 0.0
    for lo in range(0, x.size, s.wide.size):
        a, b = _sums("F64", x[lo : lo + s.wide.size], s)
        sa += a
        sq += b
    return sa, sq


class Piece(NamedTuple):
    """A run of one expert's pooled weight bytes."""

    expert: int
    file: Path
    start: int
    """Absolute offset in ``file``."""
    nbytes: int
    dtype: str


def _pieces(ckpt: Checkpoint, model: MoeModel, layer: MoeLayer) -> list[Piece]:
    """A layer's pooled weights as runs of at most PIECE_BYTES, in file order (an expert's adjacent
    tensors merged)."""
    spans: list[Piece] = []
    for j, names in sorted(layer.per_expert.items()):
        for name in names:
            if is_weight(name):
                info = ckpt.info(name)
                spans.append(Piece(j, info.file, info.start, info.nbytes, info.dtype))
    for name in layer.fused:
        if is_weight(name):
            info = ckpt.info(name)
            s, sets = layer.sets.get(name), model.family.expert_sets  # set s's tensor: ids s·E .. (s+1)·E - 1
            count = model.n_experts // len(sets.routers) if s is not None and sets else model.n_experts
            first = 0 if s is None else s * count
            per = info.nbytes // count
            spans += [Piece(first + j, info.file, info.start + j * per, per, info.dtype) for j in range(count)]
    spans.sort(key=lambda p: (str(p.file), p.start))
    merged: list[Piece] = []
    for p in spans:
        if merged:
            j, file, start, nbytes, dtype = merged[-1]
            if (j, file, dtype) == (p.expert, p.file, p.dtype) and start + nbytes == p.start:
                merged[-1] = Piece(j, file, start, nbytes + p.nbytes, dtype)
                continue
        merged.append(p)
    out: list[Piece] = []
    for j, file, start, nbytes, dtype in merged:
        chunk = _chunk(dtype)
        step = max(chunk, PIECE_BYTES - PIECE_BYTES % chunk)
        out += [Piece(j, file, start + lo, min(step, nbytes - lo), dtype) for lo in range(0, nbytes, step)]
    return out


def _chunk(dtype: str) -> int:
    """Bytes read at once: CHUNK_BYTES, rounded down to whole values."""
    size = ITEMSIZE[dtype]
    return max(size, CHUNK_BYTES - CHUNK_BYTES % size)


def _piece_sums(ckpt: Checkpoint, piece: Piece, s: _Scratch) -> tuple[int, float, float]:
    """(values, sum |x|, sum x^2) of one piece, read a chunk at a time."""
    _, file, start, nbytes, dtype = piece
    view = memoryview(s.raw)
    sa = sq = 0.0
    chunk = _chunk(dtype)
    for lo in range(0, nbytes, chunk):
        k = min(chunk, nbytes - lo)
        ckpt.read_raw(file, start + lo, view[:k])
        a, b = _raw_sums(dtype, s.raw, k, s)
        sa += a
        sq += b
    return nbytes // ITEMSIZE[dtype], sa, sq


def _threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, n))


def _stream(
    ckpt: Checkpoint,
    pieces: Sequence[tuple[Any, Piece]],
    pool: ThreadPoolExecutor | None,
    done: Callable[[Any, Piece, tuple[int, float, float]], None],
) -> None:
    """Reduce every piece (on ``pool``'s threads, a bounded number in flight) and hand each result,
    in order, to ``done(tag, piece, (values, sum|x|, sum x^2))`` on the calling thread. The kernel
    is asked to read PREFETCH_BYTES ahead of the workers, so that files not in the page cache
    stream at disk speed."""
    local = threading.local()

    def work(piece: Piece) -> tuple[int, float, float]:
        _, file, start, nbytes, dtype = piece
        if _NATIVE is not None and dtype in _NATIVE_DTYPES:
            return _NATIVE.moments(ckpt.fileno(file), start, nbytes, dtype)
        s = getattr(local, "scratch", None)
        if s is None:
            s = local.scratch = _Scratch()
        return _piece_sums(ckpt, piece, s)

    ahead, window = 0, 0  # pieces[:ahead] prefetched; window: their bytes not yet handed out

    def prefetch(i: int) -> None:
        nonlocal ahead, window
        while ahead < len(pieces) and (ahead <= i or window < PREFETCH_BYTES):
            next_piece = pieces[ahead][1]
            ckpt.prefetch(next_piece.file, next_piece.start, next_piece.nbytes)
            ahead, window = ahead + 1, window + next_piece.nbytes
        window -= pieces[i][1].nbytes

    if pool is None:
        for i, (tag, piece) in enumerate(pieces):
            prefetch(i)
            done(tag, piece, work(piece))
        return
    depth = 4 * getattr(pool, "_max_workers", 2)
    pending: deque[tuple[Any, Piece, Future[tuple[int, float, float]]]] = deque()
    try:
        for i, (tag, piece) in enumerate(pieces):
            prefetch(i)
            pending.append((tag, piece, pool.submit(work, piece)))
            if len(pending) >= depth:
                t, p, fut = pending.popleft()
                done(t, p, fut.result())
        while pending:
            t, p, fut = pending.popleft()
            done(t, p, fut.result())
    finally:
        for _, _, fut in pending:
            fut.cancel()


def layer_moments(
    ckpt: Checkpoint, model: MoeModel, layer: MoeLayer, pool: ThreadPoolExecutor | None = None
) -> WeightMoments:
    """Stream one layer's expert weights and return their pooled moments."""
    m = WeightMoments.zeros(model.n_experts)

    def done(_: Any, piece: Piece, r: tuple[int, float, float]) -> None:
        j = piece.expert
        m.n[j] += r[0]
        m.sum_abs[j] += r[1]
        m.sum_sq[j] += r[2]

    _stream(ckpt, [(None, p) for p in _pieces(ckpt, model, layer)], pool, done)
    return m


def weight_moments(
    ckpt: Checkpoint,
    model: MoeModel,
    progress: Callable[[int], None] | None = None,
    *,
    layers: Sequence[MoeLayer] | None = None,
    layer_done: Callable[[int, WeightMoments], None] | None = None,
) -> dict[int, WeightMoments]:
    """Moments of every MoE layer (or of ``layers``, in that order), in one stream over all of
    them; ``progress(bytes)`` is called as data is consumed and ``layer_done(layer index,
    moments)`` as soon as a layer is complete (both on the calling thread; an exception raised by
    either stops the pass)."""
    layers = model.layers if layers is None else layers
    out = {layer.index: WeightMoments.zeros(model.n_experts) for layer in layers}
    work = [(layer.index, p) for layer in layers for p in _pieces(ckpt, model, layer)]
    left = Counter(i for i, _ in work)
    if layer_done is not None:
        for i in out:  # no weights to read (cannot happen for a checked model, but say so)
            if not left[i]:
                layer_done(i, out[i])

    def done(i: int, piece: Piece, r: tuple[int, float, float]) -> None:
        m, j = out[i], piece.expert
        m.n[j] += r[0]
        m.sum_abs[j] += r[1]
        m.sum_sq[j] += r[2]
        if progress is not None:
            progress(piece.nbytes)
        left[i] -= 1
        if not left[i] and layer_done is not None:
            layer_done(i, m)

    threads = _threads()
    if threads == 1:
        _stream(ckpt, work, None, done)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="moeprune-score") as pool:
            _stream(ckpt, work, pool, done)
    return out


def layer_bytes(ckpt: Checkpoint, layer: MoeLayer) -> int:
    names = [n for names in layer.per_expert.values() for n in names] + layer.fused
    return sum(ckpt.info(n).nbytes for n in names if is_weight(n))
