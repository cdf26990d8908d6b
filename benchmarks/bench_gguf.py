"""Speed and memory of ``moeprune score`` and ``moeprune prune`` on GGUF files against ``cat`` / ``cp``.

Builds (once, under --root) synthetic GGUF files with Qwen3-30B-A3B's MoE geometry (hidden 2048,
expert FFN 768, 128 experts, top-8), written with gguf-py's writer one tensor at a time, of at least
4 GB each: Q8_0 (7 MoE blocks, 4.5 GB) and F16 (4 MoE blocks, 4.8 GB). Expert bytes are random
(fp16 scale fields finite), taken from a 64 MiB pool at varying offsets.

For each file, every command a fresh process (best of --repeat), page cache warm (the file is read
with ``cat`` first, as moeprune would find a file it just downloaded or wrote):

- ``moeprune --version`` (interpreter start and imports, included in every figure below);
- ``cat FILE > /dev/null`` (read limit) and ``cp FILE copy`` (copy limit);
- ``moeprune -q score FILE -c aimer -o scores.json`` (reads and dequantizes every routed expert;
  for quantized files also with gguf-py's dequantizers instead of llama.cpp's);
- ``moeprune -q prune FILE --scores scores.json --ratio 0.5 -o out.gguf`` (copy only);
- ``moeprune -q prune FILE -c aimer --ratio 0.5 -o out.gguf`` (score, then write);
- peak RSS of each moeprune run (``ru_maxrss`` of that process alone, through bench_weights' launcher;
  the files are built in a child of their own as well).

    python benchmarks/bench_gguf.py                     # both files, 2 repeats
    python benchmarks/bench_gguf.py --types Q8_0 --repeat 3 --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_weights

HIDDEN, FFN, EXPERTS, TOP_K = 2048, 768, 128, 8
LAYERS = {"Q8_0": 7, "F16": 4}
POOL = 64 << 20
NO_GGML = (
    "import sys, moeprune.gguf.moments as m; m.USE_GGML = False; from moeprune.cli import main; "
    "main(['-q', *sys.argv[1:]])"
)
"""moeprune with gguf-py's numpy dequantizers instead of llama.cpp's (when llama-cpp-python is installed)."""


def build(path: Path, qtype: str, layers: int) -> None:
    """A qwen3moe GGUF of ``layers`` MoE blocks, ``qtype`` experts, streamed to disk."""
    import gguf

    qt = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 0x3C, POOL + (16 << 20), dtype=np.uint8)  # any fp16 field finite
    tensors: list[tuple[str, tuple[int, ...], object]] = [("token_embd.weight", (1024, HIDDEN), qt)]
    for b in range(layers):
        tensors += [
            (f"blk.{b}.attn_norm.weight", (HIDDEN,), gguf.GGMLQuantizationType.F32),
            (f"blk.{b}.attn_q.weight", (HIDDEN, HIDDEN), qt),
            (f"blk.{b}.ffn_gate_inp.weight", (EXPERTS, HIDDEN), gguf.GGMLQuantizationType.F32),
            (f"blk.{b}.ffn_gate_exps.weight", (EXPERTS, FFN, HIDDEN), qt),
            (f"blk.{b}.ffn_up_exps.weight", (EXPERTS, FFN, HIDDEN), qt),
            (f"blk.{b}.ffn_down_exps.weight", (EXPERTS, HIDDEN, FFN), qt),
        ]
    tensors.append(("output_norm.weight", (HIDDEN,), gguf.GGMLQuantizationType.F32))
    w = gguf.GGUFWriter(path, "qwen3moe")
    w.add_block_count(layers)
    w.add_embedding_length(HIDDEN)
    w.add_expert_feed_forward_length(FFN)
    w.add_expert_count(EXPERTS)
    w.add_expert_used_count(TOP_K)

    def nbytes(shape: tuple[int, ...], q: object) -> int:
        b, s = gguf.GGML_QUANT_SIZES[q]  # type: ignore[index]
        return int(np.prod(shape)) // b * s

    for name, shape, q in tensors:
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    at = 0
    for _, shape, q in tensors:
        n = nbytes(shape, q)
        done = 0
        parts = []
        while done < n:  # expert tensors exceed the pool: concatenate pieces at moving offsets
            k = min(n - done, POOL)
            parts.append(pool[at % (16 << 20) : at % (16 << 20) + k])
            at += 4099
            done += k
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if q == gguf.GGMLQuantizationType.F32:
            data = (data.view(np.uint8)[:n]).copy()
            data.view(np.uint8)[3::4] &= 0x3F  # finite float32
        w.write_tensor_data(data)
        del data, parts
    w.close()


def run(cmd: list[str] | str, shell: bool = False) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one fresh process, through `bench_weights.run`'s launcher
    (a child started straight from this driver would inherit its high-water mark)."""
    r = bench_weights.run(["/bin/sh", "-c", cmd] if shell else cmd)  # type: ignore[list-item]
    return r.wall, r.rss_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/moeprune-bench-gguf"))
    ap.add_argument("--types", default="Q8_0,F16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="Keep the GGUF files for the next run.")
    ap.add_argument("--layers", type=int, help="MoE blocks per file (default: Q8_0 7, F16 4: over 4 GB each).")
    ap.add_argument("--build", nargs=3, metavar=("PATH", "TYPE", "LAYERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(Path(args.build[0]), args.build[1], int(args.build[2]))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    moeprune = [sys.executable, "-m", "moeprune", "-q"]
    head = ("file", "GB", "experts GB", "step", "best s", "GB/s", "x limit", "RSS MiB")
    print("{:<12} {:>5} {:>10} {:<28} {:>7} {:>6} {:>7} {:>8}".format(*head))
    for qtype in args.types.split(","):
        src = args.root / f"qwen3moe-{qtype}-{args.layers or LAYERS[qtype]}.gguf"
        if not src.exists():
            t = time.perf_counter()  # built in a child: a forked child's ru_maxrss includes its parent's
            layers = str(args.layers or LAYERS[qtype])
            subprocess.run([sys.executable, __file__, "--build", str(src), qtype, layers], check=True)
            print(f"built {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        size = src.stat().st_size
        info = json.loads(subprocess.run([*moeprune, "inspect", "--json", str(src)], capture_output=True).stdout)
        expert = info["routed_expert_bytes"]
        out, copy, scores = args.root / "out.gguf", args.root / "copy.gguf", args.root / "scores.json"
        f, o, sc = str(src), str(out), str(scores)
        steps = {
            "startup (moeprune --version)": ([*moeprune, "--version"], False),
            "cat (read limit)": (f"cat {f} > /dev/null", True),
            "cp (copy limit)": (f"cp {f} {copy}", True),
            "moeprune score aimer": ([*moeprune, "score", f, "-c", "aimer", "-o", sc, "--overwrite"], False),
            **(
                {
                    "score, gguf-py dequantizers": (
                        [sys.executable, "-c", NO_GGML, "score", f, "-c", "aimer", "-o", sc, "--overwrite"],
                        False,
                    )
                }
                if qtype not in ("F16", "F32", "BF16")
                else {}
            ),
            "prune --scores (copy only)": (
                [*moeprune, "prune", f, "--scores", sc, "--ratio", "0.5", "-o", o, "--overwrite"],
                False,
            ),
            "prune -c aimer (score+write)": (
                [*moeprune, "prune", f, "-c", "aimer", "--ratio", "0.5", "-o", o, "--overwrite"],
                False,
            ),
        }
        best: dict[str, tuple[float, float]] = {}
        run(f"cat {src} > /dev/null", shell=True)
        for _ in range(args.repeat):
            for name, (cmd, shell) in steps.items():
                copy.unlink(missing_ok=True)
                run("sync", shell=True)
                wall, rss = run(cmd, shell=shell)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, rss if not shell else 0.0)
        out_size = out.stat().st_size
        for name, (wall, rss) in best.items():
            if "score" in name and not name.startswith("prune"):  # reads the experts: limit = cat of those bytes
                moved, limit = expert, best["cat (read limit)"][0] * expert / size
            elif name.startswith("prune"):  # writes the output: limit = cp of that many bytes
                moved, limit = out_size, best["cp (copy limit)"][0] * out_size / size
            elif name.startswith("startup"):
                moved, limit = 0, wall
            else:
                moved, limit = size, wall
            print(
                f"{qtype:<12} {size / 1e9:>5.2f} {expert / 1e9:>10.2f} {name:<28} {wall:>7.2f} "
                f"{moved / wall / 1e9:>6.2f} {wall / limit:>7.2f} {rss if rss else float('nan'):>8.0f}"
            )
        for path in (out, copy):
            path.unlink(missing_ok=True)
        if not args.keep:
            src.unlink()
    if not args.keep:
        shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
