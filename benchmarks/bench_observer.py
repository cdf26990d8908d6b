"""One decoder layer, three ways: the process CPU time of its plain forward, of the same forward with
calibrate's routed-token observer (`moeprune.calib.hooks.Observer`), and with the peers' dense
observer (`bench_calibrate.DenseObserver`: every expert on every token), at several token counts.

The ratio dense / routed is calibrate's lead over the dense observer in the layer loops, without the
per-layer weight loading (a fixed cost per layer, amortised over the tokens). CPU time, best of
``--repeat``, is used because a shared machine inflates wall time far more.

    python benchmarks/bench_observer.py /tmp/moeprune-bench/olmoe-h1024-e64-8L 2048 8192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_calibrate


def cpu_time(run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="a checkpoint (e.g. one of bench_calibrate.py's throughput models)")
    ap.add_argument("tokens", type=int, nargs="+", help="token counts (multiples of --seq-len)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from moeprune.calib.hooks import Moments, Observer
    from moeprune.calib.skeleton import Skeleton
    from moeprune.loading import open_model

    ckpt, moe = open_model(args.model)
    skel = Skeleton(ckpt, moe, torch.float32, torch.device("cpu"))
    layer = skel.load_layer(0)
    experts = layer.get_submodule(moe.family.mem_experts)
    vocab = int(ckpt.config["vocab_size"])
    for n in args.tokens:
        ids = torch.randint(0, vocab, (n // args.seq_len, args.seq_len))  # (N, L)
        mask = torch.ones_like(ids)
        batches = []
        for b in range(0, ids.shape[0], args.batch_size):
            hidden, found = skel.capture(ids[b : b + args.batch_size], mask[b : b + args.batch_size])
            batches.append((hidden, found[0]))

        def run(batches: list[tuple[torch.Tensor, dict]] = batches) -> None:
            with torch.no_grad():
                for hidden, kwargs in batches:
                    layer(hidden, **kwargs)

        run()  # warm-up
        plain = cpu_time(run, args.repeat)
        family = moe.family
        observer = Observer(layer, family.mem_experts, family.mem_router, moe.n_experts, family.scaled_input)
        routed = cpu_time(run, args.repeat)
        observer.detach()
        dense_hook = experts.register_forward_hook(bench_calibrate.DenseObserver._hook(Moments(moe.n_experts)))
        dense = cpu_time(run, args.repeat)
        dense_hook.remove()
        print(
            json.dumps(
                {
                    "model": args.model.name,
                    "tokens": n,
                    "plain_cpu_s": round(plain, 3),
                    "routed_cpu_s": round(routed, 3),
                    "dense_cpu_s": round(dense, 3),
                    "routed_over_plain": round(routed / plain, 3),
                    "dense_over_routed": round(dense / routed, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
