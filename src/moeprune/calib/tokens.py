"""`TokenBatch`: packed token windows with their attention mask, their identity (sha256) and their
file format (``.safetensors`` with ``input_ids`` and ``attention_mask``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moeprune.errors import InputError, OutputError

_HASH_TAG = b"moeprune.TokenBatch.v1"


@dataclass(eq=False)
class TokenBatch:
    """Packed token windows: what the calibration engine and perplexity consume."""

    input_ids: torch.Tensor  # (N, L) int64
    attention_mask: torch.Tensor  # (N, L) int64, 0 = padding (never counted)
    source: str  # where the tokens came from, in words
    seed: int
    seq_len: int
    requested_samples: int | None = None  # windows asked for; None -> N (nothing was short)
    n_documents: int | None = None  # documents the tokens came from (None: unknown, pre-tokenized)

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise ValueError(
                f"input_ids {tuple(self.input_ids.shape)} and attention_mask "
                f"{tuple(self.attention_mask.shape)} must be the same (N, L) shape"
            )
        if self.input_ids.dtype != torch.int64 or self.attention_mask.dtype != torch.int64:
            raise ValueError("input_ids and attention_mask must be int64")
        if self.input_ids.shape[1] != self.seq_len:
            raise ValueError(f"seq_len {self.seq_len} does not match input_ids {tuple(self.input_ids.shape)}")
        if self.requested_samples is None:
            self.requested_samples = self.n_samples

    @property
    def n_samples(self) -> int:
        """Number of windows N."""
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        """Non-padding tokens (attention_mask == 1)."""
        return int(self.attention_mask.sum().item())

    @property
    def short(self) -> bool:
        """True when the source ran out: fewer windows than requested (or a padded last one)."""
        requested = self.n_samples if self.requested_samples is None else self.requested_samples
        return self.n_samples < requested or self.n_tokens < self.input_ids.numel()

    def sha256(self) -> str:
        """Hash of the shape, the ids and the mask as little-endian int64: same tokens, same hash, anywhere."""
        h = hashlib.sha256(_HASH_TAG)
        h.update(np.asarray(self.input_ids.shape, dtype="<i8").tobytes())
        for t in (self.input_ids, self.attention_mask):
            h.update(np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<i8").tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(input_ids, attention_mask)`` slices of at most ``batch_size`` windows, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(0, self.n_samples, batch_size):
            yield self.input_ids[i : i + batch_size], self.attention_mask[i : i + batch_size]  # (b, L)

    def shard(self, rank: int, world: int) -> TokenBatch:
        """Rank ``rank`` of ``world`` data-parallel ranks takes windows rank, rank + world, ...

        The shards of all ranks are disjoint and together hold every window; a rank may get none.
        """
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank}, world {world}")
        return TokenBatch(
            input_ids=self.input_ids[rank::world].clone(),  # (ceil((N - rank) / world), L)
            attention_mask=self.attention_mask[rank::world].clone(),
            source=f"{self.source} [shard {rank}/{world}]",
            seed=self.seed,
            seq_len=self.seq_len,
        )

    def metadata(self) -> dict[str, Any]:
        """What a statistics file records about its tokens (JSON-ready)."""
        return {
            "source": self.source,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "samples": self.n_samples,
            "requested_samples": self.requested_samples,
            "n_tokens": self.n_tokens,
            "n_documents": self.n_documents,
            "sha256": self.sha256(),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokens as ``.safetensors`` (``input_ids``, ``attention_mask``), readable by
        `load_tokens` with the same hash. Written beside the target and renamed into place."""
        from safetensors.torch import save_file

        out = Path(path).expanduser()
        if out.suffix != ".safetensors":
            raise InputError(f"{out}: token files are saved as .safetensors")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        meta = {"source": self.source, "seed": str(self.seed), "sha256": self.sha256()}
        try:
            save_file(
                {"input_ids": self.input_ids.contiguous(), "attention_mask": self.attention_mask.contiguous()},
                str(tmp),
                metadata=meta,
            )
            os.replace(tmp, out)
        except OSError as e:
            raise OutputError(f"{out}: cannot write ({e.strerror or e})") from e
        finally:
            tmp.unlink(missing_ok=True)
        return out
