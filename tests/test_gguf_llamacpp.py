"""The proof in llama.cpp: a tiny Hugging Face MoE, converted to GGUF, pruned in GGUF by moeprune
with the plan chosen on the checkpoint, runs in llama.cpp (llama-cpp-python) and gives the logits
transformers gives on the checkpoint pruned with the same plan. F32 files: equal within float32
rounding (~1e-6, llama.cpp's KV cache in F32); F16: within F16 rounding (~1e-3); Q8_0 experts:
within the quantization error, which the unpruned file shows the same. (The Q8_0 files quantize
the routed experts only: the llama.cpp 0.3.36 build here, AVX-512/AMX CPU, crashes on Q8_0
attention and output matrices of these tiny shapes, also in files moeprune never touched.)

Needs ``llama-cpp-python`` (it builds llama.cpp from source); skipped cleanly without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.llamacpp
llama_cpp = pytest.importorskip("llama_cpp")

import moeprune.gguf as mg  # noqa: E402
from gguf_support import TINY, hf_to_gguf  # noqa: E402

TOKENS = [5, 17, 99, 3, 42, 64, 7, 120, 31, 8, 77, 15, 100, 2, 56, 90]
FAMILIES = ["qwen3_moe", "qwen2_moe", "olmoe", "mixtral"]
TOLERANCE = {"F32": 1e-5, "F16": 5e-3, "Q8_0": None}
"""Largest |Δlogit| accepted against transformers (logits are O(1)); Q8_0: the unpruned file's
own error, doubled."""


def llama_logits(path: Path) -> np.ndarray:
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, seed=0, type_k=0, type_v=0
    )  # F32 KV cache (the default F16 one rounds keys and values)
    llm.eval(TOKENS)
    out = np.array(llm.scores[: len(TOKENS)], dtype=np.float64)
    llm.close()
    return out


def hf_logits(folder: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].double().numpy()


@pytest.fixture(scope="module")
def pruned_hf(tiny, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """family -> (original checkpoint, checkpoint pruned at 0.5 with AIMER)."""
    from moeprune.api import prune

    out = {}
    for family in FAMILIES:
        hf = tiny(family, **TINY.get(family, {}))
        dest = tmp_path_factory.mktemp(family) / "pruned"
        prune(hf, dest, "aimer", ratio=0.5)
        out[family] = (hf, dest)
    return out


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_gguf_runs_in_llamacpp_like_transformers(tmp_path: Path, family: str, qtype: str, pruned_hf) -> None:  # type: ignore[no-untyped-def]
    hf, hf_pruned = pruned_hf[family]
    src = hf_to_gguf(hf, tmp_path / "m.gguf", qtype, experts_only=qtype == "Q8_0")
    plan = hf_pruned / "moeprune_plan.json"
    mg.prune(src, tmp_path / "p.gguf", plan=plan)
    assert mg.inspect(tmp_path / "p.gguf")["experts"] == json.loads(plan.read_text())["n_experts"] // 2
    want = hf_logits(hf_pruned)
    got = llama_logits(tmp_path / "p.gguf")
    err = float(np.abs(got - want).max())
    tol = TOLERANCE[qtype]
    note = ""
    if tol is None:  # quantized: the pruned file is as close as the unpruned one is to its original
        base = float(np.abs(llama_logits(src) - hf_logits(hf)).max())
        tol, note = 2 * base + 1e-3, f"; unpruned file vs checkpoint {base:.3g}"
    print(f"{family} {qtype}: max |Δlogit| llama.cpp vs transformers = {err:.3g} (tolerance {tol:.3g}{note})")
    assert err <= tol
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= (1.0 if qtype != "Q8_0" else 0.8)


@pytest.mark.parametrize(
    "qtype",
    [
        "Q8_0",
        "Q4_0",
        "Q5_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "IQ2_XXS",
        "IQ2_S",
        "IQ3_S",
        "IQ1_M",
        "IQ4_XS",
        "MXFP4",
    ],
)
def test_llamacpp_dequantizers_equal_gguf_py(qtype: str) -> None:
    """Scoring uses llama.cpp's C dequantizers when they are installed: bit for bit gguf-py's."""
    import gguf

    from moeprune.gguf.ggml import dequantizer

    q = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[q]
    raw = np.random.default_rng(0).integers(0, 256, (16, 512 // block * size), dtype=np.uint8)
    raw[..., :2] &= 0x3B  # scale-like leading bytes finite (the rest is any bytes)
    fast = dequantizer(qtype)
    assert fast is not None
    want = gguf.quants.dequantize(raw, q).ravel()
    got = fast(raw, 16 * 512)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
