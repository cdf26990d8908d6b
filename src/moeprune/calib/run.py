"""`moeprune calibrate` as one library call: a data source (or tokens) and a model in, a STATS
folder out, under the rules every writing command follows.

The output may not be, contain or sit inside the model or the data (nor may ``offload_dir``); an
existing STATS folder is continued only with ``resume`` and replaced only with ``overwrite``, and
then by a new one built beside it and swapped in at the end, so an interrupted replacement keeps the
old statistics. An interrupted new run keeps what it finished (resumable) and says how to continue;
interrupted before its first layer finished, it leaves nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from moeprune.arch.config import load_config
from moeprune.arch.families import family_for_config
from moeprune.calib.data import TOKEN_SUFFIXES, TokenBatch, load_tokens
from moeprune.errors import InputError, Interrupted, OutputError
from moeprune.io.jsonfile import loads
from moeprune.io.paths import atomic_dir, check_output, deferred_signals
from moeprune.io.reader import resolve
from moeprune.loading import load_tokenizer, text_limits
from moeprune.progress import Progress
from moeprune.scoring.stats import RoutingStats


def calibrate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str] | TokenBatch,
    *,
    output: str | os.PathLike[str] | None = None,
    samples: int = 1024,
    seq_len: int = 2048,
    seed: int = 0,
    text_field: str = "text",
    data_config: str | None = None,
    split: str = "train",
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 4,
    offload_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_tokens: Callable[[TokenBatch], None] | None = None,
) -> RoutingStats:
    """Routing statistics of ``model`` on ``data`` (any source `calib.data.load_tokens` reads, or
    a `TokenBatch`), written to the STATS folder ``output`` when given. ``on_tokens`` is called
    with the packed tokens before the run (the CLI prints what was read)."""
    from moeprune.calib.engine import calibrate as run
    from moeprune.calib.engine import distributed_rank

    path = resolve(model)
    family = family_for_config(load_config(path))
    if family.calibration_blocker:
        raise InputError(f"calibration cannot run {family.model_type} yet: {family.calibration_blocker}")
    if text_limits(path)[0] is None:
        raise InputError(f"{path / 'config.json'}: has no vocab_size; calibration needs it to build the model")
    inputs: list[str | os.PathLike[str]] = [path]
    if not isinstance(data, TokenBatch) and Path(data).exists():
        inputs.append(data)
    out = Path(output) if output is not None else None
    if out is not None:
        check_output(out, inputs)
        if (out.exists() or out.is_symlink()) and not (resume or overwrite):
            raise OutputError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
        if resume and overwrite:
            raise InputError("give --resume or --overwrite, not both")
    if offload_dir is not None:
        check_output(offload_dir, inputs)
    if isinstance(data, TokenBatch):
        tokens = data
    else:
        tokens = _tokens(path, data, samples, seq_len, seed, text_field, data_config, split)
    if on_tokens is not None:
        on_tokens(tokens)

    def go(folder: Path | None) -> RoutingStats:
        return run(path, tokens, out=folder, device=device, dtype=dtype, batch_size=batch_size, resume=resume,
                   offload_dir=offload_dir, progress=progress)  # fmt: skip

    if out is None or resume or distributed_rank() != 0:
        return go(out)
    cache = Path(offload_dir) / "rank0" if offload_dir is not None else None  # the engine's, outside the STATS
    if out.exists():  # --overwrite: the old statistics stay until the new ones are complete
        try:
            with atomic_dir(out, overwrite=True) as tmp:
                return go(tmp)
        except BaseException:  # nothing of the new run can be resumed: no cache may stay either
            _remove(cache)
            raise
    try:
        return go(out)
    except KeyboardInterrupt:
        raise _interrupted(out, cache) from None


def _tokens(
    path: Path, data: str | os.PathLike[str], samples: int, seq_len: int, seed: int, text_field: str,
    data_config: str | None, split: str,
) -> TokenBatch:  # fmt: skip
    source = str(data)
    tokenizer = None
    if not source.endswith(TOKEN_SUFFIXES):
        tokenizer = load_tokenizer(path)
        if tokenizer is None:
            raise InputError(f"{path}: has no tokenizer files; pass token ids instead (.npy/.safetensors)")
    vocab, _ = text_limits(path)
    return load_tokens(
        source, tokenizer, samples=samples, seq_len=seq_len, seed=seed, text_field=text_field,
        dataset_config=data_config, split=split, vocab_size=vocab,
    )  # fmt: skip


def _remove(folder: Path | None) -> None:
    if folder is not None:
        with deferred_signals():
            shutil.rmtree(folder, ignore_errors=True)


def _interrupted(out: Path, cache: Path | None) -> Interrupted:
    """What an interrupt of a new run leaves: the finished layers (resumable), or nothing."""
    finished: list[object] = []
    try:
        meta = loads((out / "stats.json").read_bytes(), str(out / "stats.json"))
        finished = list(meta.get("finished_layers") or []) if isinstance(meta, dict) else []
    except (OSError, InputError):
        pass
    if not finished:
        _remove(out)
        _remove(cache)
        return Interrupted("interrupted before the first layer finished; nothing was written")
    return Interrupted(
        f"interrupted; the {len(finished)} finished MoE layer(s) are kept in {out}; continue with --resume"
    )
