"""The weight-scoring kernel: per-expert n, sum |w| and sum w^2, checked against independent
float64 numpy (or exact ``math.fsum``) computations.

Covers every float dtype the kernel has a path for (bf16 and fp16 by bit patterns, fp32, fp64,
fp8 through torch), awkward lengths (odd, around the chunk size, empty), special values, the
streaming pass with tiny chunks and pieces so that tensors cross many chunk and piece boundaries,
several worker threads, per-expert and fused layouts, an all-zero expert (AIMER 0), and a read
error inside a worker. The streaming pass runs with both kernels (the native ``_moments`` where it
is built, and numpy); the native kernel is also checked on its own: every bf16 and fp16 bit
pattern, offsets that are not page-aligned, many small mapping windows, both of its loops (AVX2
and generic). No timing assertions.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import moeprune.scoring.weights as W
from moeprune.api import open_model
from moeprune.errors import InputError
from moeprune.scoring.criteria import WEIGHT_CRITERIA, WeightMoments, score_layers
from moeprune.scoring.weights import accumulate, layer_moments, weight_moments

RTOL = 1e-12
"""sum w^2 (every dtype) and sum |w| of fp32/fp64: exact values summed in float64."""
RTOL_HALF_ABS = 1e-9
"""sum |w| of bf16/fp16: summed 16 at a time in float32 first (the accuracy requirement is 1e-9
relative; measured ~1e-11 on thousands of values, ~1e-12 on 1e8)."""

NATIVE_RTOL = 2e-13
"""Native kernel, every dtype: exact values summed in float64, at most 1024 terms per vector lane
(fp64; 256 for bf16/fp16), blocks added with compensation: a bound (~1.2e-13 at worst), not a
measurement (~1e-16)."""

HALF = ("bf16", "fp16")
NATIVE = W._NATIVE
needs_native = pytest.mark.skipif(NATIVE is None, reason="moeprune.scoring._moments is not built (no C compiler)")
ISAS = sorted({"generic", NATIVE.isa}) if NATIVE is not None else []
"""The native kernel's loops that this machine can run."""


@pytest.fixture(params=["native", "numpy"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the streaming pass with the native kernel (skipped where not built) or with numpy."""
    if request.param == "native" and NATIVE is None:
        pytest.skip("moeprune.scoring._moments is not built")
    if request.param == "numpy":
        monkeypatch.setattr(W, "_NATIVE", None)
    return str(request.param)


CHUNK_VALUES = W.CHUNK_BYTES // 2
"""bf16/fp16 values per chunk with the default chunk size."""


def _bf16_bits(n: int, seed: int, scale: float = 0.02) -> np.ndarray:
    """Random bf16 bit patterns (uint16) of normal-ish weights, independent of the kernel."""
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32) * np.float32(scale)
    return (x.view(np.uint32) >> 16).astype(np.uint16)


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    """float64 values of bf16 bit patterns, by value (a bf16 is the top half of a float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _bf16_tensor(bits: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


def _exact(v: np.ndarray) -> tuple[float, float]:
    """(sum |v|, sum v^2) of float64 values, correctly rounded (v^2 of a bf16/fp16 is exact)."""
    return math.fsum(np.abs(v).tolist()), math.fsum((v * v).tolist())


def _close(got: tuple[float, float], want: tuple[float, float], half: bool = False) -> None:
    """``got`` == ``want`` (sum |w|, sum w^2) within the kernel's accuracy (``half``: bf16/fp16 input)."""
    for g, w, rtol in zip(got, want, (RTOL_HALF_ABS if half else RTOL, RTOL), strict=True):
        assert g == pytest.approx(w, rel=rtol, abs=0.0), (got, want)


def _sample(dtype: str, n: int, seed: int = 0) -> tuple[object, np.ndarray]:
    """(kernel input, its float64 values)."""
    if dtype == "bf16":
        bits = _bf16_bits(n, seed)
        return _bf16_tensor(bits), _bf16_values(bits)
    x = np.random.default_rng(seed).standard_normal(n) * 0.02
    npt = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[dtype]
    a = x.astype(npt)
    return torch.from_numpy(a.copy()), a.astype(np.float64)


# --- accumulate -------------------------------------------------------------------------------------

LENGTHS = [0, 1, 2, 3, 63, 64, 65, 127, 4097, CHUNK_VALUES - 1, CHUNK_VALUES, CHUNK_VALUES + 1, 3 * CHUNK_VALUES + 3]


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp64"])
@pytest.mark.parametrize("n", LENGTHS)
def test_accumulate_matches_exact_sums(dtype: str, n: int) -> None:
    x, v = _sample(dtype, n, seed=n)
    _close(accumulate(x), _exact(v), half=dtype in HALF)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("chunk", [4, 6, 8, 1024, 1028])
def test_accumulate_across_small_chunks(monkeypatch: pytest.MonkeyPatch, dtype: str, chunk: int) -> None:
    """Chunks of a few values (even, odd, not a multiple of 4 bytes): the boundaries change nothing."""
    monkeypatch.setattr(W, "CHUNK_BYTES", chunk)
    for n in (1, 5, 7, 1001):
        x, v = _sample(dtype, n, seed=7 * n)
        _close(accumulate(x), _exact(v), half=dtype in HALF)


def test_accumulate_ten_million_bf16_values() -> None:
    """The accuracy claim at scale, against float64 numpy (pairwise sums, ~1e-16): sum w^2 within
    1e-13, sum |w| within 1e-11."""
    n = 10_000_019
    bits = _bf16_bits(n, seed=3)
    v = _bf16_values(bits)
    a, b = accumulate(_bf16_tensor(bits))
    assert a == pytest.approx(float(np.abs(v).sum()), rel=1e-11, abs=0.0)
    assert b == pytest.approx(float(np.dot(v, v)), rel=1e-13, abs=0.0)


def test_accumulate_numpy_inputs_and_any_shape() -> None:
    x = np.random.default_rng(1).standard_normal((37, 29))
    for dt in (np.float16, np.float32, np.float64):
        a = x.astype(dt)
        want = _exact(a.astype(np.float64).ravel())
        half = dt == np.float16
        _close(accumulate(a), want, half)
        _close(accumulate(a.T), want, half)  # not contiguous
        _close(accumulate(torch.from_numpy(a.copy()).T), want, half)


def test_accumulate_special_values() -> None:
    bits = np.array([0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80], np.uint16)
    v = _bf16_values(bits)  # zeros of both signs, subnormals, the smallest normal, +-max bf16, +-1
    assert np.isfinite(v * v).all()  # their squares are finite in float64 (not in float32): redone there
    _close(accumulate(_bf16_tensor(bits)), _exact(v), half=True)
    tiny = np.array([0x0001, 0x8003, 0x0080, 0x1000, 0x0000] * 9, np.uint16)  # squares underflow float32
    _close(accumulate(_bf16_tensor(tiny)), _exact(_bf16_values(tiny)), half=True)
    assert accumulate(torch.zeros(1001, dtype=torch.bfloat16)) == (0.0, 0.0)
    assert accumulate(-torch.zeros(7, dtype=torch.float16)) == (0.0, 0.0)
    a, b = accumulate(torch.tensor([1.0, float("inf")], dtype=torch.bfloat16))
    assert a == b == math.inf
    assert all(math.isnan(s) for s in accumulate(torch.tensor([1.0, float("nan"), 2.0], dtype=torch.bfloat16)))


def test_accumulate_fp8_goes_through_float64() -> None:
    x = (torch.randn(1001) * 4).to(torch.float8_e4m3fn)
    v = x.to(torch.float64).numpy()
    _close(accumulate(x), _exact(v))


@pytest.mark.parametrize("bad", [torch.arange(5), torch.ones(3, dtype=torch.bool), np.arange(4), [1.0, 2.0]])
def test_accumulate_refuses_non_float(bad: object) -> None:
    with pytest.raises(TypeError):
        accumulate(bad)


# --- the streaming pass -------------------------------------------------------------------------------

E = 6
TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.float8_e4m3fn}


def _per_expert_checkpoint(folder: Path, dtype: str, zero: int = 3) -> dict[int, np.ndarray]:
    """An OLMoE-keyed checkpoint in two shards with odd-sized expert matrices, a bias per expert
    (excluded from the moments), expert ``zero`` all zeros, and a second MoE layer whose tensors
    are stored in reverse order. Returns ``{layer * E + expert: float64 values pooled}``."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shapes = {"gate_proj.weight": (7, 5), "up_proj.weight": (7, 5), "down_proj.weight": (5, 7), "up_proj.bias": (7,)}
    config = {"model_type": "olmoe", "num_experts": E, "num_experts_per_tok": 2, "num_hidden_layers": 2}
    (folder / "config.json").write_text(json.dumps(config))
    shards: list[dict[str, torch.Tensor]] = [{}, {}]
    pooled: dict[int, np.ndarray] = {}
    for layer in range(2):
        p = f"model.layers.{layer}.mlp."
        shards[layer][p + "gate.weight"] = torch.randn(E, 5, generator=g).to(TORCH[dtype])
        items = [(j, k) for j in range(E) for k in shapes]
        for j, k in items if layer == 0 else items[::-1]:
            t = (torch.randn(shapes[k], generator=g) * (0.02 if dtype != "fp8" else 4)).to(TORCH[dtype])
            if j == zero:
                t = torch.zeros_like(t)
            shards[layer][p + f"experts.{j}.{k}"] = t
            if not k.endswith("bias"):
                v = t.to(torch.float64).reshape(-1).numpy()
                pooled[layer * E + j] = np.concatenate([pooled.get(layer * E + j, np.zeros(0)), v])
    weight_map = {}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return pooled


def _check(moments: dict[int, WeightMoments], pooled: dict[int, np.ndarray], half: bool) -> None:
    for i, m in moments.items():
        for j in range(E):
            v = pooled[i * E + j]
            assert m.n[j] == v.size
            _close((float(m.sum_abs[j]), float(m.sum_sq[j])), _exact(v), half)


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp8"])
@pytest.mark.parametrize(
    ("chunk", "piece", "threads"), [(W.CHUNK_BYTES, W.PIECE_BYTES, 2), (4, 12, 1), (8, 40, 3), (6, 9, 2)]
)
def test_weight_moments_per_expert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str, dtype: str, chunk: int, piece: int, threads: int
) -> None:
    pooled = _per_expert_checkpoint(tmp_path / "m", dtype)
    monkeypatch.setattr(W, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(W, "PIECE_BYTES", piece)
    monkeypatch.setattr(W, "_threads", lambda: threads)
    seen: list[int] = []
    ckpt, moe = open_model(tmp_path / "m")
    with ckpt:
        moments = weight_moments(ckpt, moe, seen.append)
        assert sum(seen) == sum(W.layer_bytes(ckpt, layer) for layer in moe.layers)
        _check(moments, pooled, dtype in HALF)
        one = layer_moments(ckpt, moe, moe.layers[1])  # serial, no pool
        _check({1: one}, pooled, dtype in HALF)
    aimer = score_layers(moments, "aimer")
    assert aimer[0][3] == aimer[1][3] == 0.0  # the all-zero expert
    assert all(0 < s <= 1 for i in (0, 1) for j, s in enumerate(aimer[i]) if j != 3)
    assert score_layers(moments, "magnitude")[0][3] == 0.0


def test_weight_moments_do_not_depend_on_threads_or_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    _per_expert_checkpoint(tmp_path / "m", "bf16")
    results = []
    for chunk, piece, threads in [(W.CHUNK_BYTES, W.PIECE_BYTES, 1), (W.CHUNK_BYTES, W.PIECE_BYTES, 4), (4, 8, 3)]:
        monkeypatch.setattr(W, "CHUNK_BYTES", chunk)
        monkeypatch.setattr(W, "PIECE_BYTES", piece)
        monkeypatch.setattr(W, "_threads", lambda t=threads: t)
        ckpt, moe = open_model(tmp_path / "m")
        with ckpt:
            m = weight_moments(ckpt, moe)
        results.append(score_layers(m, "aimer"))
    assert results[0] == results[1]  # same pieces, any number of threads: identical
    for a, b in zip(results[0][0], results[2][0], strict=True):
        assert a == pytest.approx(b, rel=1e-14)


def test_weight_moments_fused_layout(tiny: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, kernel: str) -> None:
    """gpt-oss: fused gate_up_proj / down_proj with the expert on axis 0, and fused biases (excluded)."""
    path = tiny("gpt_oss", dtype="bfloat16")
    monkeypatch.setattr(W, "CHUNK_BYTES", 100)
    monkeypatch.setattr(W, "PIECE_BYTES", 300)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    ckpt, moe = open_model(path)
    with ckpt:
        moments = weight_moments(ckpt, moe)
    assert moe.layers[0].fused
    for layer in moe.layers:
        m = moments[layer.index]
        for j in range(moe.n_experts):
            parts = [tensors[n][j].to(torch.float64).reshape(-1).numpy() for n in layer.fused if not n.endswith("bias")]
            v = np.concatenate(parts)
            assert m.n[j] == v.size
            _close((float(m.sum_abs[j]), float(m.sum_sq[j])), _exact(v), half=True)


def test_weight_moments_match_whole_tensor_reads(tiny: Callable[..., Path], kernel: str) -> None:
    """The streaming pass equals `accumulate` over whole tensors read with `Checkpoint.read`."""
    ckpt, moe = open_model(tiny("qwen3_moe", dtype="bfloat16"))
    with ckpt:
        moments = weight_moments(ckpt, moe)
        for layer in moe.layers:
            for j, names in layer.per_expert.items():
                sums = [accumulate(ckpt.read(n)) for n in names if not n.endswith("bias")]
                want = (math.fsum(s[0] for s in sums), math.fsum(s[1] for s in sums))
                _close((float(moments[layer.index].sum_abs[j]), float(moments[layer.index].sum_sq[j])), want, half=True)


def test_weight_moments_read_error_in_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error inside a worker thread reaches the caller (and nothing hangs): numpy kernel."""
    monkeypatch.setattr(W, "_NATIVE", None)
    _per_expert_checkpoint(tmp_path / "m", "bf16")
    monkeypatch.setattr(W, "CHUNK_BYTES", 8)
    monkeypatch.setattr(W, "PIECE_BYTES", 16)
    monkeypatch.setattr(W, "_threads", lambda: 2)
    ckpt, moe = open_model(tmp_path / "m")
    calls = 0
    real = ckpt.read_raw

    def flaky(*args: object) -> memoryview:
        nonlocal calls
        calls += 1
        if calls == 25:
            raise OSError(5, "Input/output error")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ckpt, "read_raw", flaky)
    with ckpt, pytest.raises(OSError, match="Input/output error"):
        weight_moments(ckpt, moe)


@needs_native
def test_weight_moments_native_error_in_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with the native kernel: its OSError reaches the caller."""
    _per_expert_checkpoint(tmp_path / "m", "bf16")
    monkeypatch.setattr(W, "CHUNK_BYTES", 8)
    monkeypatch.setattr(W, "PIECE_BYTES", 16)
    monkeypatch.setattr(W, "_threads", lambda: 2)
    calls = 0

    class Flaky:
        @staticmethod
        def moments(*args: object) -> tuple[int, float, float]:
            nonlocal calls
            calls += 1
            if calls == 25:
                raise OSError(5, "Input/output error")
            return NATIVE.moments(*args)  # type: ignore[union-attr,arg-type]

    monkeypatch.setattr(W, "_NATIVE", Flaky)
    ckpt, moe = open_model(tmp_path / "m")
    with ckpt, pytest.raises(OSError, match="Input/output error"):
        weight_moments(ckpt, moe)
    assert calls >= 25  # the other worker may have gone on meanwhile


def test_aimer_and_magnitude_from_moments() -> None:
    """The criteria are the documented functions of the moments (n, sum|w|, sum w^2)."""
    m = WeightMoments([4.0, 4.0, 9.0], [4.0, 2.0, 0.0], [4.0, 2.0, 0.0])
    assert WEIGHT_CRITERIA["aimer"].score(m, 0, 0) == pytest.approx([1.0, 2 / math.sqrt(8), 0.0])
    assert WEIGHT_CRITERIA["magnitude"].score(m, 0, 0) == pytest.approx([1.0, 0.5, 0.0])
    arrays = WeightMoments(*(np.array(v) for v in (m.n, m.sum_abs, m.sum_sq)))  # numpy arrays do as well
    for name in ("aimer", "magnitude"):
        assert WEIGHT_CRITERIA[name].score(arrays, 0, 0) == WEIGHT_CRITERIA[name].score(m, 0, 0)
    # inf or NaN weights give a NaN score (refused by score_layers), never a quiet 0 (never pruned)
    nan = WeightMoments([4.0, 4.0], [math.nan, math.inf], [math.nan, math.inf])
    assert all(math.isnan(v) for v in WEIGHT_CRITERIA["aimer"].score(nan, 0, 0))
    with pytest.raises(InputError, match="layer 0, expert 0: its aimer score is not finite"):
        score_layers({0: nan}, "aimer")


# --- the native kernel on its own ---------------------------------------------------------------------

NATIVE_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp64": "F64"}
LE_TYPES = {"bf16": "<i2", "fp16": "<f2", "fp32": "<f4", "fp64": "<f8"}
"""numpy types of the little-endian values (bf16 as its bit patterns)."""
PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096


def _le_bytes(dtype: str, n: int, seed: int) -> tuple[bytes, np.ndarray]:
    """(little-endian bytes of n random ``dtype`` weights, their float64 values)."""
    if dtype == "bf16":
        bits = _bf16_bits(n, seed)
        return bits.astype("<u2").tobytes(), _bf16_values(bits)
    a = (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(LE_TYPES[dtype])
    return a.tobytes(), a.astype(np.float64)


def _native(tmp_path: Path, data: bytes, dtype: str, pad: int = 0, **kw: object) -> tuple[int, float, float]:
    """The native kernel over ``data``, written ``pad`` random bytes into a file (and followed by
    random bytes, so that reading outside the range would show)."""
    noise = np.random.default_rng(len(data) + pad).integers(0, 256, pad + 13, dtype=np.uint8).tobytes()
    path = tmp_path / f"x-{pad}-{len(data)}.bin"
    path.write_bytes(noise[:pad] + data + noise[pad:])
    fd = os.open(path, os.O_RDONLY)
    try:
        return NATIVE.moments(fd, pad, len(data), NATIVE_DTYPES.get(dtype, dtype), **kw)  # type: ignore[union-attr,arg-type]
    finally:
        os.close(fd)


def _native_close(got: tuple[int, float, float], v: np.ndarray, rtol: float = NATIVE_RTOL) -> None:
    want = _exact(v)
    assert got[0] == v.size
    for g, w in zip(got[1:], want, strict=True):
        assert g == pytest.approx(w, rel=rtol, abs=0.0), (got, want)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp64"])
def test_native_matches_exact_sums(tmp_path: Path, dtype: str, isa: str) -> None:
    """Odd lengths, lengths around the kernel's blocks (4096 values) and vector widths, offsets not
    page-aligned (nor even value-aligned), and windows of two or three pages, so that values of
    the range straddle many window ends."""
    for n in [0, 1, 2, 3, 7, 8, 9, 17, 33, 4095, 4096, 4097, 8193, 40_001]:
        data, v = _le_bytes(dtype, n, seed=n)
        for pad in [0, 1, 3, 6, PAGE - 3, PAGE, PAGE + 5]:
            for window in [0, 2 * PAGE, 3 * PAGE]:
                _native_close(_native(tmp_path, data, dtype, pad, window=window, isa=isa), v)


@needs_native
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32", "fp64"])
def test_native_equals_numpy_kernel(tmp_path: Path, dtype: str) -> None:
    """Both kernels on the same values (the numpy one within its own accuracy)."""
    data, v = _le_bytes(dtype, 3 * CHUNK_VALUES + 11, seed=5)
    x = torch.from_numpy(np.frombuffer(data, LE_TYPES[dtype]).copy())
    numpy_sums = accumulate(x.view(torch.bfloat16) if dtype == "bf16" else x)
    got = _native(tmp_path, data, dtype, pad=5)
    _native_close(got, v)
    _close(got[1:], numpy_sums, half=dtype in HALF)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_native_every_half_bit_pattern(tmp_path: Path, dtype: str, isa: str) -> None:
    """All 65536 bit patterns, 64 at a time (neighbouring patterns: similar magnitudes, so that any
    value widened wrongly shows in its slice's sums): zeros, subnormals, normals, inf, NaN."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    v = _bf16_values(bits) if dtype == "bf16" else bits.view(np.float16).astype(np.float64)
    path = tmp_path / "all.bin"
    path.write_bytes(b"\x01" + bits.astype("<u2").tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        for lo in range(0, 1 << 16, 64):
            got = NATIVE.moments(fd, 1 + 2 * lo, 128, NATIVE_DTYPES[dtype], isa=isa)  # type: ignore[union-attr]
            part = v[lo : lo + 64]
            if np.isnan(part).any():
                assert got[0] == 64 and math.isnan(got[1]) and math.isnan(got[2])
            elif np.isinf(part).any():
                assert got == (64, math.inf, math.inf)
            else:
                _native_close(got, part, rtol=1e-14)
    finally:
        os.close(fd)


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_native_tiny_huge_and_special_wide_values(tmp_path: Path, isa: str) -> None:
    f32 = np.array([0.0, -0.0, 1e-45, -1e-45, 1.2e-38, 3.4e38, -3.4e38, 1.0, 1e-30, 7.0], "<f4")
    _native_close(_native(tmp_path, f32.tobytes(), "fp32", 3, isa=isa), f32.astype(np.float64), rtol=1e-15)
    f64 = np.array([5e-324, 1e-300, 1e150, -2.0, 0.0], "<f8")
    _native_close(_native(tmp_path, f64.tobytes(), "fp64", 1, isa=isa), f64, rtol=1e-15)
    assert _native(tmp_path, np.array([1.0, 1e200], "<f8").tobytes(), "fp64", isa=isa)[2] == math.inf  # as numpy
    for dtype in ("fp32", "fp64"):
        a = np.array([1.0, np.inf, -2.0] * 20, "<f4" if dtype == "fp32" else "<f8")
        assert _native(tmp_path, a.tobytes(), dtype, isa=isa) == (60, math.inf, math.inf)
        a[7] = np.nan
        got = _native(tmp_path, a.tobytes(), dtype, isa=isa)
        assert got[0] == 60 and math.isnan(got[1]) and math.isnan(got[2])
    assert _native(tmp_path, np.zeros(1001, "<u2").tobytes(), "bf16", isa=isa) == (1001, 0.0, 0.0)
    assert _native(tmp_path, np.full(77, 0x8000, "<u2").tobytes(), "fp16", isa=isa) == (77, 0.0, 0.0)  # -0


@needs_native
def test_native_ten_million_bf16_values(tmp_path: Path) -> None:
    """At scale, against float64 numpy (pairwise sums, ~1e-16): within the same bound."""
    n = 10_000_019
    data, v = _le_bytes("bf16", n, seed=3)
    n_got, a, b = _native(tmp_path, data, "bf16", pad=PAGE + 2)
    assert n_got == n
    assert a == pytest.approx(float(np.abs(v).sum()), rel=NATIVE_RTOL, abs=0.0)
    assert b == pytest.approx(float(np.square(v).sum()), rel=NATIVE_RTOL, abs=0.0)  # np.dot: ~1e-13 only


@needs_native
def test_native_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDONLY)
    m = NATIVE.moments  # type: ignore[union-attr]
    try:
        assert m(fd, 100, 0, "BF16") == (0, 0.0, 0.0)
        with pytest.raises(OSError, match="file ends at byte 100"):
            m(fd, 50, 52, "BF16")
        with pytest.raises(OSError, match="file ends"):
            m(fd, 1 << 40, 2, "BF16")
        with pytest.raises(ValueError, match="whole number"):
            m(fd, 0, 3, "F16")
        with pytest.raises(ValueError, match="dtype"):
            m(fd, 0, 4, "F8_E4M3")
        with pytest.raises(ValueError, match="negative"):
            m(fd, -2, 4, "BF16")
        with pytest.raises(ValueError, match="isa"):
            m(fd, 0, 4, "BF16", isa="no-such-isa")
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        m(fd, 0, 4, "BF16")  # closed descriptor


def test_numpy_kernel_when_the_native_one_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the extension was not built, the module still imports and picks numpy."""
    monkeypatch.setitem(sys.modules, "moeprune.scoring._moments", None)  # import now raises ImportError
    assert W._native_kernel() is None
