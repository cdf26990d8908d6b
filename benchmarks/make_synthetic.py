"""Write a synthetic OLMoE-shaped bf16 checkpoint for the benchmarks (real layer shapes, random weights).

Shapes follow OLMoE-1B-7B: 64 experts per layer, top-8, hidden 2048, expert intermediate 1024,
vocab 50304. Every per-expert matrix is 4 MiB of bf16 (12 MiB per expert, 768 MiB per layer), so
4 MoE layers give a ~3.8 GB checkpoint (3.2 GB of routed experts) and 8 layers twice that.

Weights are realistic, not zeros: two pools of random bf16 values (a Gaussian and a heavier-tailed
Laplace, both with std 0.02) are drawn once, and every tensor is a concatenation of 256K-element
blocks taken from random offsets of either pool. Each expert gets its own share of heavy-tailed
blocks, so weight criteria (AIMER, magnitude) give every expert a different score. Writing is
bounded by the disk, not by random number generation.

    python benchmarks/make_synthetic.py --layers 4 /tmp/moeprune-bench/olmoe-4L
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np

HIDDEN = 2048
INTER = 1024
EXPERTS = 64
TOPK = 8
VOCAB = 50304
BLOCK = 1 << 18
"""Elements per random block copied from a pool."""
POOL = 1 << 24
"""Elements per pool (32 MiB of bf16 each)."""
SHARD_BYTES = 5_000_000_000


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    u = u + (0x7FFF + ((u >> 16) & 1))
    return (u >> 16).astype(np.uint16)


def config(layers: int) -> dict[str, object]:
    return {
        "architectures": ["OlmoeForCausalLM"],
        "model_type": "olmoe",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": EXPERTS,
        "num_experts_per_tok": TOPK,
        "norm_topk_prob": False,
        "vocab_size": VOCAB,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-05,
        "hidden_act": "silu",
        "attention_bias": False,
        "clip_qkv": None,
        "router_aux_loss_coef": 0.01,
        "output_router_logits": False,
        "tie_word_embeddings": False,
        "pad_token_id": 1,
        "eos_token_id": 50279,
        "torch_dtype": "bfloat16",
    }


def tensor_list(layers: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) in the order written; kind picks how values are drawn."""
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "dense")]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (HIDDEN,), "norm"),
            (p + "post_attention_layernorm.weight", (HIDDEN,), "norm"),
        ]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.append((p + f"self_attn.{proj}.weight", (HIDDEN, HIDDEN), "dense"))
        out += [
            (p + "self_attn.q_norm.weight", (HIDDEN,), "norm"),
            (p + "self_attn.k_norm.weight", (HIDDEN,), "norm"),
            (p + "mlp.gate.weight", (EXPERTS, HIDDEN), "dense"),
        ]
        for j in range(EXPERTS):
            e = p + f"mlp.experts.{j}."
            out += [
                (e + "gate_proj.weight", (INTER, HIDDEN), f"expert:{i}:{j}"),
                (e + "up_proj.weight", (INTER, HIDDEN), f"expert:{i}:{j}"),
                (e + "down_proj.weight", (HIDDEN, INTER), f"expert:{i}:{j}"),
            ]
    out += [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (VOCAB, HIDDEN), "dense")]
    return out


class Source:
    """Random bf16 data, served as blocks from two pools."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        std = 0.02
        self.gauss = bf16_bits(self.rng.standard_normal(POOL, dtype=np.float32) * std)
        self.laplace = bf16_bits(self.rng.laplace(0.0, std / np.sqrt(2), POOL).astype(np.float32))
        self.heavy: dict[tuple[int, int], float] = {}

    def data(self, shape: tuple[int, ...], kind: str) -> np.ndarray:
        n = int(np.prod(shape))
        if kind == "norm":
            return bf16_bits(1.0 + 0.05 * self.rng.standard_normal(n, dtype=np.float32))
        share = 0.0
        if kind.startswith("expert:"):
            _, i, j = kind.split(":")
            key = (int(i), int(j))
            if key not in self.heavy:
                self.heavy[key] = float(self.rng.random())
            share = self.heavy[key]
        out = np.empty(n, dtype=np.uint16)
        for lo in range(0, n, BLOCK):
            k = min(BLOCK, n - lo)
            pool = self.laplace if self.rng.random() < share else self.gauss
            start = int(self.rng.integers(0, POOL - k))
            out[lo : lo + k] = pool[start : start + k]
        return out


def write(folder: Path, layers: int, seed: int = 0, shard_bytes: int = SHARD_BYTES) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensor_list(layers)
    shards: list[list[tuple[str, tuple[int, ...], str]]] = [[]]
    size = 0
    for t in tensors:
        nbytes = int(np.prod(t[1])) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    src = Source(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for fname, shard in zip(names, shards, strict=True):
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, _ in shard:
            nbytes = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        body = json.dumps(header, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(body)) + body)
            for _, shape, kind in shard:
                f.write(src.data(shape, kind).tobytes())
        total += offset
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(config(layers), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 50279, "pad_token_id": 1}) + "\n")
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--layers", type=int, default=4, help="MoE layers (4 -> ~3.8 GB, 8 -> ~7.5 GB)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite even if the folder holds a checkpoint")
    args = ap.parse_args(argv)
    if (args.folder / "config.json").exists() and not args.force:
        cfg = json.loads((args.folder / "config.json").read_text())
        if cfg.get("num_hidden_layers") == args.layers:
            print(f"{args.folder}: already there (use --force to rewrite)", file=sys.stderr)
            return
    t0 = time.perf_counter()
    total = write(args.folder, args.layers, args.seed)
    dt = time.perf_counter() - t0
    print(f"wrote {args.folder}: {args.layers} MoE layers, {total / 1e9:.2f} GB in {dt:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
