"""Test support for GGUF: a tiny Hugging Face MoE checkpoint written as GGUF with gguf-py's
GGUFWriter, following llama.cpp's convert_hf_to_gguf.py conventions (tensor names from gguf-py's
TensorNameMap, per-expert weights stacked expert-first into ``ffn_*_exps``, 1-D tensors and the
router kept in F32 when quantizing, the converter's metadata keys), and synthetic GGUF files of
any quantization type made of seeded random bytes (slicing is byte-level, so any bytes prove it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

ARCHS = {"qwen3_moe": "QWEN3MOE", "qwen2_moe": "QWEN2MOE", "olmoe": "OLMOE", "mixtral": "LLAMA"}
"""Families this converter handles -> gguf.MODEL_ARCH member."""
TINY = {
    "qwen2_moe": {"overrides": {"mlp_only_layers": []}},  # llama.cpp's qwen2moe has no dense layers
    "olmoe": {"overrides": {"num_key_value_heads": 4}},  # llama.cpp's olmoe: q/k norms over all heads (no GQA)
}
"""make_tiny arguments for a tiny model of each family that llama.cpp's architecture can run."""


def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The llama converter's q/k permutation (HF rotate-half order -> llama.cpp's interleaved rope)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf(folder: Path, out: Path, qtype: str = "F32", *, experts_only: bool = False) -> Path:
    """Write the tiny checkpoint in ``folder`` as GGUF (F32, F16 or Q8_0 like the converter's
    --outtype); ``experts_only``: only the routed-expert tensors get ``qtype``, the rest F32."""
    import gguf

    cfg = json.loads((folder / "config.json").read_text())
    mt = cfg["model_type"]
    arch = gguf.MODEL_ARCH[ARCHS[mt]]
    name = gguf.MODEL_ARCH_NAMES[arch]
    n_layers = cfg["num_hidden_layers"]
    n_exp = cfg.get("num_experts") or cfg.get("num_local_experts")
    w = gguf.GGUFWriter(out, name)
    w.add_name("tiny " + mt)
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    rope = (cfg.get("rope_parameters") or {}).get("rope_theta") or cfg.get("rope_theta") or 10000.0
    w.add_rope_freq_base(float(rope))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg.get("moe_intermediate_size"):
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    if mt == "llama" or name == "llama":
        w.add_rope_dimension_count(head_dim)
    w.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7}[qtype])
    # a placeholder vocabulary of the model's size (tests feed token ids, never text)
    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([3 if i < 3 else 1 for i in range(vocab)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(arch, n_layers)
    hf = _hf_tensors(folder)
    experts: dict[str, dict[int, np.ndarray]] = {}
    for key in sorted(hf, key=_order):
        t = hf[key]
        parts = key.split(".")
        if ".experts." in key and parts[parts.index("experts") + 1].isdigit():
            j = int(parts[parts.index("experts") + 1])
            stacked = ".".join(parts[: parts.index("experts") + 1] + parts[parts.index("experts") + 2 :])
            experts.setdefault(stacked, {})[j] = t
            if len(experts[stacked]) < n_exp:
                continue
            t = np.stack([experts[stacked][i] for i in range(n_exp)])
            key = stacked
        if name == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg["num_attention_heads"] if "q_proj" in key else cfg["num_key_value_heads"]
            t = _permute(t, heads)
        base = key.rsplit(".", 1)[0]
        suffix = key.rsplit(".", 1)[1]
        new = names.get_name(base.replace(".block_sparse_moe.", ".mlp.") if mt == "mixtral" else base)
        if new is None:
            new = names.get_name(base)
        assert new is not None, key
        _add(w, f"{new}.{suffix}", t.astype(np.float32), qtype if "_exps" in new or not experts_only else "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _order(key: str) -> tuple[int, int, str]:
    """The converter's tensor order is the checkpoint's; stable order: embeddings, layers, rest."""
    parts = key.split(".")
    if "layers" in parts:
        return (1, int(parts[parts.index("layers") + 1]), key)
    return (0 if "embed" in key else 2, 0, key)


def _add(w: Any, name: str, t: np.ndarray, qtype: str) -> None:
    import gguf

    if qtype == "F32" or t.ndim == 1 or ".ffn_gate_inp." in name:
        w.add_tensor(name, t.astype(np.float32))
    elif qtype == "F16":
        w.add_tensor(name, t.astype(np.float16))
    else:
        q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def synthetic(
    out: Path,
    arch: str = "qwen3moe",
    qtype: str = "Q8_0",
    *,
    n_layers: int = 3,
    n_experts: int = 8,
    top_k: int = 2,
    hidden: int = 256,
    ffn: int = 256,
    dense_first: int = 0,
    groups: tuple[int, int] | None = None,
    seed: int = 0,
    split: int = 1,
    alignment: int | None = None,
    values: str = "random",
) -> Path:
    """A GGUF of ``arch`` with ``n_layers`` blocks (the first ``dense_first`` dense), every
    routed-expert tensor of type ``qtype``, in the architecture's tensor layout: gate/up/down
    experts, router (+ bias for gpt-oss), expert biases (gpt-oss), ``exp_probs_b``
    (selection-bias architectures), a shared expert where the real one has it, attention stand-ins.
    ``values``: "random" bytes with every fp16 field finite (scores are defined), or "ramp"
    (every expert slice distinct and recognisable). ``split`` > 1 writes that many shards
    (``out`` names the stem)."""
    import gguf

    from moeprune.arch.gguf import GGUF_ARCHS

    entry = GGUF_ARCHS[arch]
    rng = np.random.default_rng(seed)
    qt = gguf.GGMLQuantizationType[qtype]
    tensors: list[tuple[str, tuple[int, ...], Any, np.ndarray]] = []

    def raw(shape: tuple[int, ...], q: Any) -> np.ndarray:
        block, size = gguf.GGML_QUANT_SIZES[q]
        assert shape[-1] % block == 0
        nbytes = int(np.prod(shape[:-1])) * shape[-1] // block * size
        if values == "ramp":
            data = (np.arange(nbytes, dtype=np.int64) * 7 + len(tensors) * 13) % 60
        else:
            data = rng.integers(0, 0x3C, nbytes)  # every byte < 0x3C: any fp16/bf16 field is finite, |x| < 1
        return data.astype(np.uint8)

    def add(name: str, shape: tuple[int, ...], q: Any = None) -> None:
        q = gguf.GGMLQuantizationType.F32 if q is None else q
        tensors.append((name, shape, q, raw(shape, q)))

    add("token_embd.weight", (64, hidden))
    for b in range(n_layers):
        add(f"blk.{b}.attn_norm.weight", (hidden,))
        add(f"blk.{b}.attn_q.weight", (hidden, hidden), qt)
        if b < dense_first:
            add(f"blk.{b}.ffn_gate.weight", (ffn, hidden), qt)
            add(f"blk.{b}.ffn_down.weight", (hidden, ffn), qt)
            continue
        add(f"blk.{b}.ffn_gate_inp.weight", (n_experts, hidden))
        if entry.router_bias:
            add(f"blk.{b}.ffn_gate_inp.bias", (n_experts,))
        if entry.selection_bias:
            add(f"blk.{b}.exp_probs_b.bias", (n_experts,))
        for kind, shape in (("gate", (ffn, hidden)), ("up", (ffn, hidden)), ("down", (hidden, ffn))):
            add(f"blk.{b}.ffn_{kind}_exps.weight", (n_experts, *shape), qt)
            if entry.expert_bias:
                add(f"blk.{b}.ffn_{kind}_exps.bias", (n_experts, shape[0]))
        if arch in ("qwen2moe", "deepseek2", "hunyuan-moe", "glm4moe", "ernie4_5-moe"):
            add(f"blk.{b}.ffn_gate_shexp.weight", (ffn, hidden), qt)
            add(f"blk.{b}.ffn_down_shexp.weight", (hidden, ffn), qt)
        if arch == "qwen2moe":
            add(f"blk.{b}.ffn_gate_inp_shexp.weight", (hidden,))
    add("output_norm.weight", (hidden,))

    w = gguf.GGUFWriter(out, arch, split_max_tensors=-(-len(tensors) // split) if split > 1 else 0)
    if alignment is not None:
        w.data_alignment = alignment
        w.add_uint32("general.alignment", alignment)
    w.add_name(f"synthetic {arch} {qtype}")
    w.add_block_count(n_layers)
    w.add_embedding_length(hidden)
    w.add_expert_count(n_experts)
    w.add_expert_used_count(top_k)
    if dense_first:
        w.add_leading_dense_block_count(dense_first)
    if groups is not None:
        w.add_expert_group_count(groups[0])
        w.add_expert_group_used_count(groups[1])
    w.add_token_list([f"<t{i}>" for i in range(64)])
    w.add_array("synthetic.ints", [1, 2, 3])
    w.add_float32("synthetic.float", 0.1)
    w.add_bool("synthetic.flag", True)
    for name, shape, q, data in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), data.nbytes, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, _, data in tensors:
        w.write_tensor_data(data)
    w.close()
    return out if split == 1 else out.with_name(f"{out.stem}-00001-of-{split:05d}.gguf")
