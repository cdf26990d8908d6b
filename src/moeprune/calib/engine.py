"""The layer-wise calibration run: real tokens through the model one decoder layer at a time,
the routed-token observer on every MoE layer, the activation cache, resume and torchrun.

1. Build the model skeleton on the meta device (no weights; `calib.skeleton`) and load only what
   lies outside the decoder layers (embeddings...) with transformers' own loading and key conversion.
2. Capture, for every batch, the first decoder layer's input and the keyword arguments the model
   passes to each layer (attention masks per layer type, position embeddings), by running the
   model's own forward with every layer stubbed out.
3. For each decoder layer: load its weights from the checkpoint (fused or per-expert on disk,
   converted by transformers), run every cached batch through it with the routed-token observer
   on its experts, replace the cache with the outputs, and free the layer.

Peak memory is one layer (as loaded and converted; `calib.memory` gives it back to the OS after
each layer) plus the activation cache, which lives on disk (``offload_dir``, or the
STATS folder) whenever a STATS folder is written, so an interrupted run resumes from the last
finished layer. Under torch.distributed (torchrun), each rank takes a disjoint share of the
samples and the moments are all-reduced after every layer: the result equals one process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from moeprune.calib import carry
from moeprune.calib.data import TokenBatch
from moeprune.calib.hooks import Observer
from moeprune.calib.memory import limit_kernel_cache
from moeprune.calib.skeleton import Skeleton
from moeprune.errors import InputError
from moeprune.loading import open_model
from moeprune.progress import Progress
from moeprune.provenance import fingerprint
from moeprune.scoring.stats import RoutingStats

CACHE = ".activations"


def distributed_rank() -> int:
    """This process's rank under torchrun (0 otherwise), without starting anything."""
    return int(os.environ.get("RANK", "0"))


def _dist() -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun."""
    import torch.distributed as dist

    if not dist.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def auto_dtype(device: torch.device) -> str:
    """The compute dtype ``auto`` stands for: float32 on CPU (bfloat16 matrix products are several
    times slower without CPU support for them), bfloat16 on CUDA."""
    return "bfloat16" if device.type == "cuda" else "float32"


class Cache:
    """Hidden states of every batch, by the layer they are the input of, with the state earlier
    layers pass on to later ones (`carry`): in memory, or one safetensors file per batch in
    ``folder/input-{layer}`` (the state's tensors beside ``h``, its structure in the metadata). A
    layer's outputs go to the next layer's generation, which replaces the current one only once the
    layer is finished, so an interruption never leaves a half-advanced cache."""

    def __init__(self, folder: Path | None, layer: int):
        self.folder, self.layer = folder, layer
        self.mem: dict[int, dict[int, tuple[torch.Tensor, dict[str, Any]]]] = {}

    def _dir(self, layer: int) -> Path:
        assert self.folder is not None
        return self.folder / f"input-{layer}"

    def get(self, b: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Batch ``b``'s input to the current layer and the state carried to it."""
        if self.folder is None:
            return self.mem[self.layer][b]
        from safetensors import safe_open

        with safe_open(str(self._dir(self.layer) / f"{b}.safetensors"), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            structure = json.loads((f.metadata() or {}).get("state", "{}"))
        return tensors["h"], carry.unflatten(structure, tensors)

    def put(self, b: int, h: torch.Tensor, state: dict[str, Any] | None = None) -> None:
        """Store batch ``b``'s input to the next layer and the state carried to it."""
        if self.folder is None:
            self.mem.setdefault(self.layer + 1, {})[b] = (h, state or {})
            return
        from safetensors.torch import save_file

        folder = self._dir(self.layer + 1)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{b}.tmp"
        tensors = {"h": h.detach().to("cpu").contiguous()}
        structure = carry.flatten(state or {}, tensors)
        save_file(tensors, str(tmp), metadata={"state": json.dumps(structure)} if structure else None)
        os.replace(tmp, folder / f"{b}.safetensors")

    def advance(self) -> None:
        if self.folder is None:
            self.mem.pop(self.layer, None)
        else:
            shutil.rmtree(self._dir(self.layer), ignore_errors=True)
        self.layer += 1


def calibrate(
    model: str | os.PathLike[str],
    tokens: TokenBatch,
    *,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 4,
    resume: bool = False,
    offload_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> RoutingStats:
    """Routing statistics of ``model`` on ``tokens``; written to the STATS folder ``out`` if given.
    ``dtype`` ``auto``: see `auto_dtype`."""
    limit_kernel_cache()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    dtype = auto_dtype(dev) if dtype == "auto" else dtype
    torch_dtype = getattr(torch, dtype)
    rank, world = _dist()
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", rank % torch.cuda.device_count())
    ckpt, moe = open_model(model)
    with ckpt:
        stats_layers = [layer.index for layer in moe.layers if layer.index < moe.n_layers]
        meta = {
            "model": str(model),
            "family": moe.family.model_type,
            "model_fingerprint": fingerprint(ckpt, moe),
            "data": tokens.metadata(),
            "dtype": dtype,
            "batch_size": batch_size,
            "world_size": world,
        }
        folder = Path(out) if out is not None else None
        stats = RoutingStats.zeros(stats_layers, moe.n_experts, meta | {"finished_layers": []})
        start = 0
        cache_dir = Path(offload_dir) / f"rank{rank}" if offload_dir else None
        if cache_dir is None and folder is not None:
            cache_dir = folder / CACHE / f"rank{rank}"
        if resume:
            stats, start = _resume(folder, meta, stats_layers, cache_dir)
        shard = tokens.shard(rank, world) if world > 1 else tokens
        batches = list(shard.batches(batch_size))
        cache = Cache(cache_dir, start - 1)
        skel = Skeleton(ckpt, moe, torch_dtype, dev)
        kwargs = []
        for b, (ids, mask) in enumerate(batches):
            hidden, found = skel.capture(ids, mask)
            kwargs.append(found)
            if start == 0:
                cache.put(b, hidden)
        cache.advance()
        skel.free_embeddings()
        n_tok = int(sum(int(m.sum()) for _, m in batches))
        for i in range(start, len(skel.layers)):
            layer = skel.load_layer(i)
            observer = (
                Observer(
                    layer,
                    moe.family.mem_experts,
                    moe.family.mem_router,
                    moe.n_experts,
                    moe.family.scaled_input,
                    moe.family.router_rows.zero_weight_slots,
                    moe.family.sorted_groups,
                )
                if i in stats_layers
                else None
            )
            t0 = time.perf_counter()
            try:
                for b, (_, mask) in enumerate(batches):
                    if observer is not None:
                        observer.valid = mask.reshape(-1).bool()
                        observer.shard = observer.shards_of(mask, b * batch_size, rank, world, tokens.n_samples)
                    h, state = cache.get(b)
                    with torch.no_grad():
                        out = layer(h.to(dev), **_to(carry.resolve(kwargs[b][i], state, i), dev))
                    cache.put(b, *carry.passed_on(out, skel.arity[i], kwargs[b], i, state, h))
                    if progress is not None:
                        progress(f"layer {i + 1}/{len(skel.layers)}", int(mask.sum()), n_tok)
            finally:
                if observer is not None:
                    observer.detach()
                skel.free_layer(i)
            if observer is not None:
                moments = observer.moments.a
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(moments)
                stats.moments[stats_layers.index(i)] = moments.cpu()
                stats.set_shards(i, observer.shard_moments(world))
            stats.meta["finished_layers"] = [j for j in stats_layers if j <= i]
            stats.meta.setdefault("seconds_per_layer", {})[str(i)] = round(time.perf_counter() - t0, 3)
            if folder is not None and rank == 0:
                stats.meta["last_layer"] = i
                stats.save(folder)
            if world > 1 and folder is not None:
                import torch.distributed as dist

                dist.barrier()  # no rank drops layer i's inputs before rank 0 has recorded layer i
            cache.advance()  # only now: until layer i is recorded, a resumed run restarts from its inputs
        stats.meta["finished_layers"] = stats_layers
        stats.meta["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        stats.meta["n_tokens"] = tokens.n_tokens
        stats.meta.pop("last_layer", None)
        if folder is not None and rank == 0:
            stats.save(folder)
            shutil.rmtree(folder / CACHE, ignore_errors=True)
        if offload_dir is not None and cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return stats


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


def _resume(
    folder: Path | None, meta: dict[str, Any], layers: list[int], cache_dir: Path | None
) -> tuple[RoutingStats, int]:
    """The statistics and first unfinished layer of an interrupted run in ``folder``."""
    if folder is None or not (folder / "stats.json").is_file():
        raise InputError("--resume needs the STATS folder of an interrupted run (-o)")
    stats = RoutingStats.load(folder)
    for key in ("family", "model_fingerprint", "data", "dtype", "batch_size", "world_size"):
        if stats.meta.get(key) != meta[key]:
            raise InputError(f"{folder}: cannot resume: the run used another {key.replace('_', ' ')}")
    if "last_layer" not in stats.meta:
        raise InputError(f"{folder}: calibration already finished; nothing to resume")
    last = stats.meta["last_layer"]
    if stats.meta.get("finished_layers") != [j for j in layers if j <= last]:
        raise InputError(
            f"{folder}: cannot resume: its last_layer ({last}) and finished_layers disagree; run calibrate again "
            "with --overwrite"
        )
    if cache_dir is None or not cache_dir.is_dir():
        raise InputError(
            f"{folder}: cannot resume: its activation cache ({cache_dir}) is gone; "
            "give the --offload-dir of the interrupted run, if it had one"
        )
    return stats, int(stats.meta["last_layer"]) + 1
