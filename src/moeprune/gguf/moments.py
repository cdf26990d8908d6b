"""Pooled weight moments (n, sum |w|, sum w^2) of every routed expert of a GGUF model, streamed
one expert slice at a time, for the weight criteria of `moeprune.scoring.criteria`.

An expert's slice of ``blk.N.ffn_*_exps.weight`` is contiguous (the expert is the outer axis) and
made of whole rows, hence whole quantization blocks. F32/F16/BF16 slices go to the same kernel as
safetensors weights (the native one, reading the file by offset, or numpy's `accumulate`);
quantized slices (Q8_0, K-quants, IQ*, MXFP4, ...) are dequantized, at most ROWS_BYTES of them
at a time, by llama.cpp's own C functions where llama-cpp-python is installed (`moeprune.gguf.ggml`)
or else by gguf-py (``gguf.quants.dequantize``, the same values, far slower), and the float32
values summed by `accumulate` in float64. The biases are not pooled, as for safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moeprune.errors import InputError
from moeprune.gguf import ggml
from moeprune.gguf.model import GgufModel, GgufTensor
from moeprune.scoring import weights
from moeprune.scoring.criteria import WeightMoments
from moeprune.scoring.weights import accumulate

ROWS_BYTES = 8 << 20
"""Quantized bytes dequantized at once (the float32 copy is ~4-8x larger)."""
PLAIN = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
USE_GGML = True
"""Dequantize with llama.cpp's own C functions when llama-cpp-python is installed (`ggml`);
tests switch it off to run gguf-py's."""

Work = tuple[int, int, GgufTensor]
"""(layer, expert, tensor)."""


def expert_bytes(model: GgufModel) -> int:
    return sum(model.tensors[n].nbytes for layer in model.layers for n in layer.pooled)


def _rows(fd: int, offset: int, rows: int, row_bytes: int) -> Any:
    """``rows`` rows of ``row_bytes`` read at ``offset`` (pread: the file is never mapped, so
    memory stays a few chunks whatever the file size), as uint8 ``(rows, row_bytes)``."""
    import numpy as np

    buf = np.empty(rows * row_bytes, np.uint8)  # not zeroed: every byte is read into
    view, done = buf.data, 0  # a memoryview of the array
    while done < buf.size:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise InputError("the GGUF file ended early (changed while reading?)")
        done += got
    return buf.reshape(rows, row_bytes)


def slice_moments(model: GgufModel, t: GgufTensor, j: int, fds: dict[int, int]) -> tuple[int, float, float]:
    """(values, sum |w|, sum w^2) of expert ``j`` in weight tensor ``t``, read ROWS_BYTES at a time."""
    import numpy as np
    from gguf.quants import dequantize

    per = t.nbytes // model.n_experts
    kind = PLAIN.get(t.qtype.name)
    if kind is not None and weights._NATIVE is not None:
        r = weights._NATIVE.moments(fds[t.shard], t.offset + j * per, per, kind)
        return int(r[0]), float(r[1]), float(r[2])
    rows = t.shape[1] if len(t.shape) == 3 else 1
    row_bytes, ne0 = per // rows, t.shape[-1]
    step = max(1, ROWS_BYTES // max(1, row_bytes))
    fast = ggml.dequantizer(t.qtype.name) if USE_GGML else None
    sa = sq = 0.0
    for lo in range(0, rows, step):
        k = min(step, rows - lo)
        raw = _rows(fds[t.shard], t.offset + j * per + lo * row_bytes, k, row_bytes)
        if kind == "F32":
            x = raw.view(np.float32)
        elif kind == "F16":
            x = raw.view(np.float16)
        elif kind == "BF16":  # widened exactly: a bf16 is the top half of a float32
            x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif fast is not None:
            x = fast(raw, k * ne0)
        else:
            try:
                x = dequantize(raw, t.qtype)  # (k, ne0) float32
            except NotImplementedError:
                raise InputError(
                    f"tensor {t.name!r}: gguf-py cannot dequantize {t.qtype.name}, so it cannot be scored"
                ) from None
        a, b = accumulate(x)
        sa += a
        sq += b
    return rows * ne0, sa, sq


def gguf_moments(model: GgufModel, progress: Callable[[int], None] | None = None) -> dict[int, WeightMoments]:
    """Moments of every MoE layer of ``model``, one expert slice per task on a few threads."""
    out = {layer.index: WeightMoments.zeros(model.n_experts) for layer in model.layers}
    work: list[Work] = [
        (layer.index, j, model.tensors[n])
        for layer in model.layers
        for n in layer.pooled
        for j in range(model.n_experts)
    ]
    fds = {s: os.open(p, os.O_RDONLY) for s, p in enumerate(model.paths)}
    try:

        def run(w: Work) -> tuple[int, float, float]:
            return slice_moments(model, w[2], w[1], fds)

        for (i, j, t), (n, a, b) in zip(work, _map(run, work), strict=True):
            m = out[i]
            m.n[j] += n
            m.sum_abs[j] += a
            m.sum_sq[j] += b
            if progress is not None:
                progress(t.nbytes // model.n_experts)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _map(fn: Callable[[Work], tuple[int, float, float]], work: list[Work]) -> Iterator[tuple[int, float, float]]:
    threads = weights._threads()
    if threads == 1:
        yield from map(fn, work)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="moeprune-gguf-score") as pool:
        yield from pool.map(fn, work)  # results are three numbers each: all may be in flight
