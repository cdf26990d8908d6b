"""Train the bundled demo model: a small Qwen3-MoE on the Python standard library's own sources.

    python scripts/train_tiny_moe.py                     # ~20 min on 2 CPU cores
    python scripts/train_tiny_moe.py --steps 20 -o /tmp/x   # a quick smoke run

Everything comes from the running interpreter, so it works offline:

* **Corpus**: every ``*.py`` file of the standard library (``sysconfig`` ``stdlib`` path) outside
  ``site-packages``, the test suites (``test``/``tests``/``idle_test`` folders) and ``idlelib``.
  Files are split by a hash of their relative path: 1 in 20 is **held out** (evaluation), 1 in 20
  is **calibration**, the rest is **training**; the three sets are disjoint.
* **Tokenizer**: byte-level BPE (Hugging Face ``tokenizers``), ``--vocab`` tokens, trained on the
  training files only; ``<|endoftext|>`` separates files.
* **Model**: ``Qwen3MoeForCausalLM`` from its transformers Config class: every layer MoE with
  ``--experts`` routed experts, top-2, ``norm_topk_prob``, tied embeddings, and a load-balancing
  loss **per layer** (``--aux`` x the Switch-Transformer loss of each layer, averaged over layers;
  1 when balanced). transformers' own ``router_aux_loss_coef`` loss concatenates the router logits
  of all layers, so expert i of one layer and expert i of another count as one expert and a layer
  can leave experts dead (a first run with it left 5-6 of 16 experts per layer under a quarter of
  their share). AdamW, linear warm-up then cosine decay, gradient clipping, fixed seed; random
  training windows of ``--seq-len`` tokens.
* **Outputs** (``-o``, default the package's bundled folder): the checkpoint in bfloat16 with its
  tokenizer, ``calib.jsonl`` and ``heldout.jsonl`` (the calibration and held-out files, one record
  each, capped),
  and ``training.json`` (settings, corpus sizes, loss curve, held-out perplexity, per-layer routing
  load measured on the held-out text) plus a readable ``TRAINING.md``.

Numbers depend on the interpreter's version (its standard library is the corpus) and on the torch
build; the committed log says which were used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM

EOS = "<|endoftext|>"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "moeprune" / "data" / "tiny-moe"
SKIP_PARTS = {"site-packages", "test", "tests", "idle_test", "idlelib", "__pycache__"}


def corpus(root: Path) -> dict[str, list[Path]]:
    """The stdlib ``.py`` files split into train / calib / heldout by a hash of the relative path."""
    split: dict[str, list[Path]] = {"train": [], "calib": [], "heldout": []}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts[:-1]) or rel.parts[0].startswith("test"):
            continue
        bucket = int(hashlib.sha256(rel.as_posix().encode()).hexdigest(), 16) % 20
        split["heldout" if bucket == 0 else "calib" if bucket == 1 else "train"].append(path)
    return split


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(files: list[Path], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((read(f) for f in files), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)


def encode(tok: PreTrainedTokenizerFast, files: list[Path]) -> np.ndarray:
    ids: list[int] = []
    for f in files:
        ids.extend(tok(read(f), add_special_tokens=False)["input_ids"])
        ids.append(tok.eos_token_id)
    return np.asarray(ids, dtype=np.int64)


def windows(ids: np.ndarray, seq_len: int, limit: int) -> torch.Tensor:
    """Consecutive non-overlapping windows from the start (held-out evaluation)."""
    n = min(len(ids) // seq_len, limit)
    return torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len).copy())


@torch.no_grad()
def evaluate(model: Qwen3MoeForCausalLM, data: torch.Tensor, batch: int) -> tuple[float, list[list[float]]]:
    """Held-out perplexity and, per layer, the fraction of routed slots each expert received."""
    model.eval()
    nll, count = 0.0, 0
    cfg = model.config
    load = torch.zeros(cfg.num_hidden_layers, cfg.num_experts, dtype=torch.float64)
    for i in range(0, len(data), batch):
        ids = data[i : i + batch]
        out = model(input_ids=ids, labels=ids, output_router_logits=True)
        n = ids[:, 1:].numel()
        nll += out.loss.item() * n  # router_aux_loss_coef is 0 while training: the LM loss alone
        count += n
        for layer, logits in enumerate(out.router_logits):
            top = logits.topk(cfg.num_experts_per_tok, dim=-1).indices.flatten()
            load[layer] += torch.bincount(top, minlength=cfg.num_experts).double()
    model.train()
    load /= load.sum(dim=1, keepdim=True)
    return math.exp(nll / count), [[round(x, 4) for x in row] for row in load.tolist()]


def balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Mean over layers of E * sum_i f_i * P_i / top_k (f_i: share of the layer's routed slots that
    expert i got, P_i: its mean router probability); 1 when the layer is balanced."""
    losses = []
    for logits in router_logits:  # (tokens, E) per layer
        probs = logits.float().softmax(dim=-1)
        top = logits.topk(top_k, dim=-1).indices
        share = torch.zeros_like(probs).scatter_(1, top, 1.0).mean(dim=0) / top_k  # (E,), sums to 1
        losses.append(probs.shape[1] * (share * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def underused(load: list[list[float]]) -> list[int]:
    """Per layer, the experts that received less than a quarter of the uniform share."""
    return [sum(x < 0.25 / len(row) for x in row) for row in load]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def write_jsonl(files: list[Path], root: Path, path: Path, max_chars: int) -> int:
    """Whole files, one JSON record each (``{"file": relative path, "text": source}``), up to
    ``max_chars`` characters of text; returns the characters written."""
    lines, size = [], 0
    for f in files:
        text = read(f)
        if size + len(text) > max_chars and lines:
            break
        lines.append(json.dumps({"file": f.relative_to(root).as_posix(), "text": text}))
        size += len(text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return size


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--expert-size", type=int, default=128)
    ap.add_argument("--aux", type=float, default=0.02, help="weight of the per-layer load-balancing loss")
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--text-chars", type=int, default=300_000, help="cap on calib.jsonl / heldout.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    root = Path(sysconfig.get_paths()["stdlib"])
    split = corpus(root)
    print({k: len(v) for k, v in split.items()}, "files from", root, flush=True)

    tok = train_tokenizer(split["train"], args.vocab)
    train_ids = encode(tok, split["train"])
    held_ids = encode(tok, split["heldout"])
    held = windows(held_ids, args.seq_len, args.eval_windows)
    print(f"tokenizer {len(tok)} tokens; train {len(train_ids):,} tokens, held-out {len(held_ids):,}", flush=True)

    config = Qwen3MoeConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        moe_intermediate_size=args.expert_size,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden // 4,
        num_experts=args.experts,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=0.0,  # the per-layer balance loss below replaces transformers' pooled one
        output_router_logits=True,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen3MoeForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = np.random.default_rng(args.seed)
    curve: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    model.train()
    t_train = time.perf_counter()
    for step in range(args.steps):
        starts = gen.integers(0, len(train_ids) - args.seq_len, size=args.batch)
        ids = torch.from_numpy(np.stack([train_ids[s : s + args.seq_len] for s in starts]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        out = model(input_ids=ids, labels=ids, output_router_logits=True)
        aux = balance_loss(out.router_logits, config.num_experts_per_tok)
        (out.loss + args.aux * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append({"step": step + 1, "loss": round(out.loss.item(), 4), "balance": round(aux.item(), 4)})
        if (step + 1) % 25 == 0:
            rate = (step + 1) * args.batch * args.seq_len / (time.perf_counter() - t_train)
            print(
                f"step {step + 1}/{args.steps} loss {curve[-1]['loss']:.3f} balance {aux.item():.3f}"
                f" ({rate:,.0f} tok/s)",
                flush=True,
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            ppl, load = evaluate(model, held, args.batch)
            evals.append(
                {
                    "step": step + 1,
                    "heldout_ppl": round(ppl, 3),
                    "minutes": round((time.perf_counter() - t_start) / 60, 2),
                    "underused": underused(load),
                }
            )
            print(f"  held-out perplexity {ppl:.2f}; experts under 1/4 of uniform load: {underused(load)}", flush=True)
    train_s = time.perf_counter() - t_train

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    reloaded = Qwen3MoeForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    ppl_saved, load = evaluate(reloaded, held, args.batch)
    calib_chars = write_jsonl(split["calib"], root, out_dir / "calib.jsonl", args.text_chars)
    held_chars = write_jsonl(split["heldout"], root, out_dir / "heldout.jsonl", args.text_chars)
    log = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "threads": args.threads,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "parameters": n_params,
        "files": {k: len(v) for k, v in split.items()},
        "tokens": {
            "train": len(train_ids),
            "heldout": len(held_ids),
            "trained_on": args.steps * args.batch * args.seq_len,
        },
        "text_chars": {"calib": calib_chars, "heldout": held_chars},
        "train_minutes": round(train_s / 60, 2),
        "total_minutes": round((time.perf_counter() - t_start) / 60, 2),
        "evals": evals,
        "heldout_ppl_bf16_checkpoint": round(ppl_saved, 3),
        "expert_load": load,
        "loss_curve": curve[::10] + ([curve[-1]] if len(curve) % 10 != 1 else []),
    }
    (out_dir / "training.json").write_text(json.dumps(log, indent=1) + "\n")
    (out_dir / "TRAINING.md").write_text(summary(log))
    print(summary(log))


def summary(log: dict[str, Any]) -> str:
    a = log["args"]
    lines = [
        "# Training log of the bundled demo model",
        "",
        f"Written by `scripts/train_tiny_moe.py`: Python {log['python']}, torch {log['torch']},"
        f" {log['threads']} threads",
        f"on {log['cores']} cores of {log['cpu']} ({log['platform']}).",
        "",
        f"- Qwen3-MoE, {a['layers']} layers, hidden {a['hidden']}, {a['experts']} routed experts of width"
        f" {a['expert_size']}, top-2, {log['parameters']:,} parameters; vocab {a['vocab']} (byte-level BPE).",
        f"- Files: {log['files']['train']} train / {log['files']['calib']} calibration /"
        f" {log['files']['heldout']} held-out ({log['tokens']['train']:,} / - / {log['tokens']['heldout']:,} tokens).",
        f"- {a['steps']} steps x {a['batch']} x {a['seq_len']} tokens = {log['tokens']['trained_on']:,} tokens seen,"
        f" {log['train_minutes']} min training, {log['total_minutes']} min in all.",
        f"- Held-out perplexity of the saved bfloat16 checkpoint: **{log['heldout_ppl_bf16_checkpoint']}**.",
        "",
        "| step | held-out perplexity | minutes | underused experts per layer |",
        "|---:|---:|---:|---|",
        *[f"| {e['step']} | {e['heldout_ppl']} | {e['minutes']} | {e.get('underused', '-')} |" for e in log["evals"]],
        "",
        "Loss curve (language-model loss without the balance term, every 10th step):",
        "",
        "```",
        *_sparkline(log["loss_curve"]),
        "```",
        "",
        f"Routing load on the held-out text (share of routed slots per expert, uniform = {1 / int(a['experts']):.4f}):",
        "",
        "| layer | min | max | experts with < 1/4 of uniform |",
        "|---:|---:|---:|---:|",
    ]
    uniform = 1 / int(a["experts"])
    for i, row in enumerate(log["expert_load"]):
        lines.append(f"| {i} | {min(row):.4f} | {max(row):.4f} | {sum(x < uniform / 4 for x in row)} |")
    return "\n".join(lines) + "\n"


def _sparkline(curve: list[dict[str, float]]) -> list[str]:
    out = []
    for i in range(0, len(curve), max(1, len(curve) // 20)):
        c = curve[i]
        out.append(f"step {int(c['step']):5d}  loss {c['loss']:6.3f}  " + "#" * round(c["loss"] * 6))
    return out


if __name__ == "__main__":
    main()
