"""Speed and memory of calibration (``moeprune calibrate``) against a plain forward and a dense observer.

**Throughput** on a model that fits in RAM (a synthetic OLMoE-like bf16 checkpoint built with
``moeprune.tiny.make_tiny``: hidden 1024, 64 experts of intermediate 512, top-8, 8 layers, vocab
50304), over the same token windows (``tokens.npy``, random ids, 8 x 512 by default, batches of 4):

- **calibrate**: ``moeprune.calib.engine.calibrate()`` in memory (no STATS folder), and with a STATS
  folder (the CLI's path: the activation cache goes to disk). Its own layer-by-layer loading is
  inside the measured time; the part spent outside the per-layer batch loops is reported as load;
- **plain**: ``AutoModelForCausalLM.from_pretrained(MODEL)`` then ``model(input_ids, attention_mask)``
  per batch (logits included), the whole model loaded; load time reported apart;
- **base**: the same, through ``model.model`` (the decoder stack without the LM head, which
  calibration never runs), for reference;
- **dense**: the same whole-model forward plus the peers' observer (REAP): a forward hook on every
  experts module that runs **every** expert on **every** token and accumulates the same float64
  moments over the routed tokens (one expert at a time, no E x T x H buffer, so kinder than REAP).

Every mode runs in a fresh process (``torch.set_num_threads(2)``), first on 64 tokens to warm up,
then ``--repeat`` times over all batches; the best time counts. The process CPU time of each pass
is recorded too: other jobs on a shared machine inflate wall time more than CPU time.

**Memory**: ``moeprune -q calibrate`` on a synthetic OLMoE-shaped checkpoint >= 4 GB
(make_synthetic.py, 8 layers by default: 7.1 GB) with a modest token count, compared with the
checkpoint's bytes.

**Peak RSS** of every run is ``ru_maxrss`` of the measured process, taken by a small launcher
process between this driver and it (`bench_weights.PEAK`). Linux carries a process's high-water mark across
``exec`` into the new program's ``ru_maxrss``, so a child started straight from this driver
reports at least the driver's own peak: writing the throughput model (``make_tiny``, ~4.5 GB) in
the driver made every later child "peak" at 4.71 GB (issue 16). The workers also report their own
``VmHWM`` (``rss_self``), which a fresh ``exec`` does reset, as a cross-check.

``--check`` compares calibrate's peak RSS (the calib modes and the memory run) with its bound
(`calib_bound`: the runtime, twice the largest decoder layer in the compute dtype — a layer load
holds the per-expert tensors and their fused copy for a moment —, and the activation cache; the
memory run also at most half the checkpoint) and exits 1 naming every run over it.

    python benchmarks/bench_calibrate.py                          # throughput (bf16) and memory
    python benchmarks/bench_calibrate.py --dtype bfloat16 float32 --repeat 3
    python benchmarks/bench_calibrate.py --skip-throughput --mem-layers 8
    python benchmarks/bench_calibrate.py --check --dtype float32 --repeat 1 --modes calib calib-disk  # make target
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_weights  # noqa: E402
import make_synthetic  # noqa: E402

ROOT = bench_weights.ROOT
SHAPE = {
    "hidden_size": 1024,
    "intermediate_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 64,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "vocab_size": 50304,
    "max_position_embeddings": 4096,
    "norm_topk_prob": False,
}
MODES = ("calib", "calib-disk", "plain", "base", "dense")
RUNTIME_BYTES = 600_000_000
"""Calibrate's allowance beyond the layer and the cache: the interpreter with torch and
transformers, the meta skeleton, the per-batch layer arguments (~0.4 GB measured)."""
LAYER_FACTOR = 2.0
"""Layers' worth of memory a layer load may take: its per-expert tensors and their fused copy
exist together for a moment (1.6x measured with transformers 5.25)."""
DEVICE_ENV = "MOEPRUNE_BENCH_DEVICE"
"""The throughput workers' device (cpu or cuda), passed from the driver through the environment."""


def measured(cmd: list[str]) -> tuple[bench_weights.Run, int]:
    """Run ``cmd`` through `bench_weights.run` (its `PEAK` launcher): wall and CPU time, other load,
    and its peak RSS in bytes."""
    r = bench_weights.run(cmd)
    return r, round(r.rss_mb * 1048576)


def calib_bound(model: Path, dtype: str, n_tokens: int, in_memory: bool) -> dict[str, int]:
    """What calibrate's peak RSS may be on ``model`` in ``dtype``: `RUNTIME_BYTES`, `LAYER_FACTOR` x the
    largest decoder layer (or what lies outside the layers, if larger) in ``dtype``, and the activation
    cache (n_tokens x hidden; two generations when it is in memory)."""
    import re

    import torch

    from moeprune.api import open_model

    size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    ckpt, moe = open_model(model)
    with ckpt:
        pattern = re.compile(re.escape(moe.family.layers) + r"\.(\d+)\.")
        layers: dict[int, int] = {}
        outside = 0
        for name, info in ckpt.tensors.items():
            m = pattern.match(name)
            if m:
                layers[int(m.group(1))] = layers.get(int(m.group(1)), 0) + info.numel * size
            elif "lm_head" not in name:
                outside += info.numel * size
        hidden = int(ckpt.config.get("hidden_size") or ckpt.config["text_config"]["hidden_size"])
    layer = max(layers.values())
    cache = n_tokens * hidden * size * (2 if in_memory else 1)
    bound = RUNTIME_BYTES + int(LAYER_FACTOR * max(layer, outside)) + cache
    return {"layer": layer, "outside": outside, "cache": cache, "bound": bound}


def throughput_model(shape: dict[str, Any]) -> Path:
    e, i = shape["num_experts"], shape["intermediate_size"]
    model = ROOT / ("olmoe-h1024-e64-8L" if (e, i) == (64, 512) else f"olmoe-h1024-e{e}-i{i}-8L")
    if not (model / "config.json").exists():
        from moeprune.tiny import make_tiny

        print(f"writing {model} ...", file=sys.stderr)
        shutil.rmtree(model, ignore_errors=True)
        make_tiny("olmoe", model, overrides=shape, dtype="bfloat16", noise=0.02)
    return model


def token_file(n: int, seq_len: int, vocab: int, seed: int = 0) -> Path:
    import numpy as np

    path = ROOT / f"tokens-{n}x{seq_len}.npy"
    if not path.exists():
        ids = np.random.default_rng(seed).integers(0, vocab, size=(n, seq_len), dtype=np.int64)  # (N, L)
        np.save(path, ids)
    return path


# -- worker (one mode, in a fresh process) ------------------------------------------------------------


class DenseObserver:
    """The peers' method: every expert on every token; moments over the routed tokens only."""

    def __init__(self, model: Any):
        from moeprune.calib.hooks import Moments

        self.moments: list[Any] = []
        self.handles = []
        for layer in model.model.layers:
            experts = layer.mlp.experts
            m = Moments(experts.num_experts, device=experts.gate_up_proj.device)
            self.moments.append(m)
            self.handles.append(experts.register_forward_hook(self._hook(m)))

    @staticmethod
    def _hook(m: Any) -> Any:
        import torch.nn.functional as F

        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            hidden, idx, weights = args[:3]  # (T, H), (T, k), (T, k)
            for j in range(module.num_experts):
                gate, up = F.linear(hidden, module.gate_up_proj[j]).chunk(2, dim=-1)  # (T, I) each
                f = F.linear(module.act_fn(gate) * up, module.down_proj[j])  # (T, H): f_j on every token
                norm = f.float().norm(dim=-1)  # (T,)
                rows, slot = (idx == j).nonzero(as_tuple=True)
                m.add(j, weights[rows, slot], norm[rows])

        return hook


def worker(mode: str, model: str, tokens: str, dtype: str, batch_size: int, repeat: int, out: str) -> None:
    import torch

    torch.set_num_threads(2)
    device = os.environ.get(DEVICE_ENV, "cpu")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    from moeprune.calib.data import load_tokens
    from moeprune.calib.engine import calibrate

    tok = load_tokens(tokens, None, vocab_size=SHAPE["vocab_size"])
    batches = list(tok.batches(batch_size))
    n_tok = tok.n_tokens
    res: dict[str, Any] = {"mode": mode, "n_tokens": n_tok, "dtype": dtype, "batch_size": batch_size}
    torch_dtype = getattr(torch, dtype)
    times: list[float] = []
    cpus: list[float] = []  # process CPU seconds of each pass (less sensitive to other processes than wall time)
    if mode.startswith("calib"):
        stats_dir = Path(out).with_suffix(".stats")
        first = type(tok)(tok.input_ids[:1, :64], tok.attention_mask[:1, :64], "warm-up", 0, 64)
        calibrate(model, first, dtype=dtype, batch_size=batch_size, device=device)  # warm-up: imports, kernels
        loops: list[float] = []
        for _ in range(repeat):
            shutil.rmtree(stats_dir, ignore_errors=True)
            t0, c0 = time.perf_counter(), time.process_time()
            stats = calibrate(
                model,
                tok,
                dtype=dtype,
                batch_size=batch_size,
                device=device,
                out=stats_dir if mode == "calib-disk" else None,
            )
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            loops.append(sum(stats.meta["seconds_per_layer"].values()))
        shutil.rmtree(stats_dir, ignore_errors=True)
        best = min(range(repeat), key=lambda r: times[r])
        res["pass_s"], res["loop_s"] = times[best], loops[best]
        res["load_s"] = times[best] - loops[best]
        res["counts0"] = stats.moments[0][:, 0, 0].tolist()
    else:
        from transformers import AutoModelForCausalLM

        t0 = time.perf_counter()
        net = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, device_map={"": device})
        net.eval()
        batches = [(ids.to(device), mask.to(device)) for ids, mask in batches]
        res["load_s"] = time.perf_counter() - t0
        obs = DenseObserver(net) if mode == "dense" else None
        fwd = net.model if mode == "base" else net  # base: the decoder stack without the LM head
        with torch.no_grad():
            ids, mask = batches[0]
            fwd(input_ids=ids[:1, :64], attention_mask=mask[:1, :64], use_cache=False)  # warm-up
            for _ in range(repeat):
                if obs is not None:
                    for m in obs.moments:
                        m.a.zero_()
                t0, c0 = time.perf_counter(), time.process_time()
                for ids, mask in batches:
                    fwd(input_ids=ids, attention_mask=mask, use_cache=False)
                sync()
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
        res["pass_s"] = min(times)
        if obs is not None:
            res["counts0"] = obs.moments[0].a[:, 0, 0].cpu().tolist()
    res["times"], res["cpus"] = times, cpus
    with open("/proc/self/status") as f:  # VmHWM: this program's own peak (a fresh exec resets it)
        res["rss_self"] = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    res["cpu_s"] = cpus[times.index(min(times))]
    res["tok_s"] = n_tok / res["pass_s"]
    Path(out).write_text(json.dumps(res))


# -- driver -------------------------------------------------------------------------------------------


def run_mode(mode: str, model: Path, tokens: Path, dtype: str, batch_size: int, repeat: int) -> dict[str, Any]:
    out = ROOT / f"calib-{mode}-{dtype}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, str(model), str(tokens), dtype]
    cmd += [str(batch_size), str(repeat), str(out)]
    r, rss = measured(cmd)
    res: dict[str, Any] = json.loads(out.read_text())
    res.update(rss_mb=rss / 1048576, others=r.others, process_wall_s=r.wall)
    print(
        f"  {dtype} {mode:<10} {res['tok_s']:8.1f} tokens/s  pass {res['pass_s']:6.2f} s  load {res['load_s']:5.2f} s  "
        f"rss {rss / 1e9:5.2f} GB (own VmHWM {res['rss_self'] / 1e9:5.2f})  others {100 * r.others:3.0f}%",
        file=sys.stderr,
    )
    if mode.startswith("calib"):
        res["bound"] = calib_bound(model, dtype, res["n_tokens"], mode == "calib")
        res["rss_bytes"] = rss
    return res


def throughput(
    dtypes: list[str],
    n: int,
    seq_len: int,
    batch_size: int,
    repeat: int,
    modes: list[str],
    dense_n: int | None,
    shape: dict[str, Any],
) -> dict[str, Any]:
    """``dense_n``: windows for the dense mode (default ``n``). Tokens/s is a steady-state rate for the
    whole-model modes (their load is timed apart), so the slow dense observer may run on fewer windows."""
    model = throughput_model(shape)
    tokens = token_file(n, seq_len, shape["vocab_size"])
    dense_tokens = token_file(dense_n or n, seq_len, shape["vocab_size"])
    size = sum(f.stat().st_size for f in bench_weights.shards(model))
    out: dict[str, Any] = {
        "model": str(model),
        "shape": shape,
        "bytes": size,
        "tokens": str(tokens),
        "dense_tokens": str(dense_tokens),
    }
    subprocess.run(["sh", "-c", f"cat {model}/*.safetensors > /dev/null"], check=True)  # warm page cache
    for dtype in dtypes:
        res = {
            mode: run_mode(mode, model, dense_tokens if mode == "dense" else tokens, dtype, batch_size, repeat)
            for mode in modes
        }
        out[dtype] = res
        if not {"calib", "calib-disk", "plain", "dense"} <= set(res):
            continue
        a, b, c = res["calib"], res["plain"], res["dense"]
        agree = None  # layer-0 routing counts of calibrate and dense, when both saw the same tokens
        if a["n_tokens"] == c["n_tokens"]:
            agree = sum(x == y for x, y in zip(a["counts0"], c["counts0"], strict=True)) / len(a["counts0"])
        for r in res.values():
            r.pop("counts0", None)
        res["ratio_calib_plain"] = a["tok_s"] / b["tok_s"]
        res["ratio_calib_dense"] = a["tok_s"] / c["tok_s"]
        res["ratio_disk_plain"] = res["calib-disk"]["tok_s"] / b["tok_s"]
        res["ratio_disk_dense"] = res["calib-disk"]["tok_s"] / c["tok_s"]
        res["ratio_loop_plain"] = a["n_tokens"] / a["loop_s"] / b["tok_s"]
        if "base" in res:
            res["ratio_calib_base"] = a["tok_s"] / res["base"]["tok_s"]
        res["ratio_cpu_calib_plain"] = (b["cpu_s"] / b["n_tokens"]) / (a["cpu_s"] / a["n_tokens"])
        res["ratio_cpu_calib_dense"] = (c["cpu_s"] / c["n_tokens"]) / (a["cpu_s"] / a["n_tokens"])
        res["layer0_counts_equal"] = agree
        print(
            f"  {dtype}: calib/plain {res['ratio_calib_plain']:.2f}  calib/dense {res['ratio_calib_dense']:.2f}  "
            f"(disk cache: {res['ratio_disk_plain']:.2f}, {res['ratio_disk_dense']:.2f}); "
            "layer-0 counts " + ("not compared" if agree is None else f"equal for {100 * agree:.0f}% of experts"),
            file=sys.stderr,
        )
    return out


def memory(layers: int, n: int, seq_len: int, batch_size: int, dtype: str) -> dict[str, Any]:
    model = ROOT / f"olmoe-{layers}L"
    if not (model / "config.json").exists():
        print(f"writing {model} ...", file=sys.stderr)
        make_synthetic.write(model, layers)
    size = sum(f.stat().st_size for f in bench_weights.shards(model))
    tokens = token_file(n, seq_len, make_synthetic.VOCAB)
    stats = ROOT / "work" / f"calib-stats-{layers}L"
    shutil.rmtree(stats, ignore_errors=True)
    cmd = [*bench_weights.moeprune(), "-q", "calibrate", str(model), "--data", str(tokens), "--dtype", dtype]
    cmd += ["--batch-size", str(batch_size), "-o", str(stats)]
    print("  " + " ".join(cmd), file=sys.stderr)
    r, rss = measured(cmd)
    meta = json.loads((stats / "stats.json").read_text()) if (stats / "stats.json").exists() else {}
    shutil.rmtree(stats, ignore_errors=True)
    res = {
        "model": str(model),
        "bytes": size,
        "cmd": " ".join(cmd),
        "wall_s": r.wall,
        "cpu_s": r.cpu,
        "rss_bytes": rss,
        "rss_ratio": rss / size,
        "bound": calib_bound(model, dtype, n * seq_len, False),
        "others": r.others,
        "n_tokens": n * seq_len,
        "seconds_per_layer": meta.get("meta", meta).get("seconds_per_layer"),
    }
    print(
        f"  calibrate {layers}L ({size / 1e9:.2f} GB): {r.wall:.1f} s, peak RSS {rss / 1e9:.2f} GB "
        f"= {res['rss_ratio']:.3f} x checkpoint, others {100 * r.others:.0f}%",
        file=sys.stderr,
    )
    return res


def table(res: dict[str, Any]) -> str:
    lines = []
    if "throughput" in res:
        t = res["throughput"]
        lines += [
            f"Throughput model: `{t['model']}` ({t['bytes'] / 1e9:.2f} GB), tokens `{t['tokens']}`.",
            "",
            "| dtype | mode | tokens/s | pass (s) | pass CPU (s) | load (s) | peak RSS (GB) | own VmHWM (GB) "
            "| other load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for dtype in (k for k in t if k in ("bfloat16", "float32", "float16")):
            for mode in (m for m in MODES if m in t[dtype]):
                r = t[dtype][mode]
                lines.append(
                    f"| {dtype} | {mode} | {r['tok_s']:.1f} | {r['pass_s']:.1f} | {r['cpu_s']:.1f} | "
                    f"{r['load_s']:.1f} | {r['rss_mb'] * 1048576 / 1e9:.2f} | {r['rss_self'] / 1e9:.2f} | "
                    f"{100 * r['others']:.0f}% |"
                )
        lines.append("")
        for dtype in (k for k in t if k in ("bfloat16", "float32", "float16") and "ratio_calib_plain" in t[k]):
            r = t[dtype]
            lines.append(
                f"{dtype}: calibrate / plain = {r['ratio_calib_plain']:.2f} "
                f"(STATS folder: {r['ratio_disk_plain']:.2f}; "
                f"layer loops only: {r['ratio_loop_plain']:.2f}); calibrate / dense = {r['ratio_calib_dense']:.2f} "
                f"(STATS folder: {r['ratio_disk_dense']:.2f}); by CPU time: {r['ratio_cpu_calib_plain']:.2f} and "
                f"{r['ratio_cpu_calib_dense']:.2f} (per token)"
                + (
                    ""
                    if r["layer0_counts_equal"] is None
                    else f"; layer-0 counts equal for {100 * r['layer0_counts_equal']:.0f}% of experts"
                )
                + (f"; calibrate / base = {r['ratio_calib_base']:.2f}" if "ratio_calib_base" in r else "")
            )
    if "memory" in res:
        m = res["memory"]
        lines += [
            "",
            f"Memory: `{m['cmd']}`: checkpoint {m['bytes'] / 1e9:.2f} GB, peak RSS {m['rss_bytes'] / 1e9:.2f} GB "
            f"= {m['rss_ratio']:.3f} x checkpoint, {m['wall_s']:.1f} s wall, other load {100 * m['others']:.0f}%",
        ]
    return "\n".join(lines)


def check(res: dict[str, Any]) -> list[str]:
    """One line per calibrate run measured, ``FAIL`` first where its peak RSS is over its bound."""
    runs: list[tuple[str, int, dict[str, int], float | None]] = []
    t = res.get("throughput", {})
    for dtype in (k for k in t if k in ("bfloat16", "float32", "float16")):
        for mode in ("calib", "calib-disk"):
            if mode in t[dtype]:
                r = t[dtype][mode]
                runs.append((f"{mode} ({dtype}, {r['n_tokens']} tokens)", r["rss_bytes"], r["bound"], None))
    if "memory" in res:
        m = res["memory"]
        runs.append((f"memory run ({m['bytes'] / 1e9:.2f} GB checkpoint)", m["rss_bytes"], m["bound"], m["bytes"] / 2))
    lines = []
    for name, rss, b, half in runs:
        limit = b["bound"] if half is None else min(b["bound"], half)
        parts = f"{RUNTIME_BYTES / 1e9:.2f} + {LAYER_FACTOR:g} x layer {max(b['layer'], b['outside']) / 1e9:.2f}"
        parts += f" + cache {b['cache'] / 1e9:.2f}" + (
            "" if half is None else f"; half the checkpoint {half / 1e9:.2f}"
        )
        verdict = "ok" if rss <= limit else "FAIL"
        lines.append(f"{verdict}: {name}: peak RSS {rss / 1e9:.2f} GB, bound {limit / 1e9:.2f} GB ({parts})")
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        mode, model, tokens, dtype, bs, repeat, out = argv[1:]
        worker(mode, model, tokens, dtype, int(bs), int(repeat), out)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["bfloat16"], help="dtypes of the throughput runs")
    ap.add_argument("--samples", type=int, default=8, help="token windows")
    ap.add_argument("--dense-samples", type=int, help="token windows of the dense mode (default: --samples)")
    ap.add_argument("--experts", type=int, default=SHAPE["num_experts"], help="routed experts of the throughput model")
    ap.add_argument("--expert-size", type=int, default=SHAPE["intermediate_size"], help="their intermediate size")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="measured passes per mode (best counts)")
    ap.add_argument("--mem-layers", type=int, default=8, help="layers of the make_synthetic.py checkpoint")
    ap.add_argument("--mem-samples", type=int, default=4, help="token windows of the memory run")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="throughput modes to run")
    ap.add_argument("--device", default="cpu", help="device of the throughput runs (cpu or cuda)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--check", action="store_true", help="exit 1 when calibrate's peak RSS exceeds its bound")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "calib-results.json")
    args = ap.parse_args(argv)
    os.environ[DEVICE_ENV] = args.device
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "work").mkdir(exist_ok=True)
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": args.device,
    }
    if not args.skip_throughput:
        res["throughput"] = throughput(
            args.dtype,
            args.samples,
            args.seq_len,
            args.batch_size,
            args.repeat,
            args.modes,
            args.dense_samples,
            {**SHAPE, "num_experts": args.experts, "intermediate_size": args.expert_size},
        )
    if not args.skip_memory:
        res["memory"] = memory(args.mem_layers, args.mem_samples, args.seq_len, args.batch_size, "bfloat16")
    args.output.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    if args.check:
        lines = check(res)
        if not lines:
            raise SystemExit("bench_calibrate --check: no calibrate run was measured (modes calib, calib-disk, memory)")
        print("\n".join(["", "Peak RSS check:", *lines]))
        failed = [line for line in lines if line.startswith("FAIL")]
        if failed:
            raise SystemExit("bench_calibrate --check: calibrate's peak RSS is over its bound:\n" + "\n".join(failed))


if __name__ == "__main__":
    main()
