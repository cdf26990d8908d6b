"""Pre-tokenized calibration data (``.npy`` integer arrays [N, L]; ``.safetensors`` with
``input_ids`` [N, L] and optionally ``attention_mask``), checked against the file before anything is
read into memory (a header that claims more than the file holds is refused) and used as given."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from moeprune.calib.tokens import TokenBatch
from moeprune.errors import InputError

# --- pre-tokenized files -----------------------------------------------------------------------


def _integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


_ST_IDS = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8")
"""safetensors dtypes a token-id tensor may have."""


def _npy_ids(path: Path) -> torch.Tensor:
    """The [N, L] integer ids of a .npy file as int64. Its header (dtype, rank, shape) is checked,
    and the size it claims against the file's length, before any data is read: a header that lies
    cannot make numpy allocate what the file does not hold."""
    fmt = np.lib.format
    try:
        with path.open("rb") as f:
            version = fmt.read_magic(f)  # type: ignore[no-untyped-call]
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)  # type: ignore[no-untyped-call]
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = fmt.read_array_header_2_0(f)  # type: ignore[no-untyped-call]
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{path}: cannot read as .npy ({e})") from None
    if dtype.hasobject or dtype.kind not in "iu":
        raise InputError(f"{path}: token ids must be integers, found dtype {dtype}")
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"{path}: input_ids must be a non-empty [N, L] array, found shape {tuple(shape)}")
    need = math.prod(shape) * dtype.itemsize
    if need != data_bytes:
        raise InputError(
            f"{path}: its header claims {shape[0]} x {shape[1]} {dtype} ids ({need} bytes) but the file holds "
            f"{data_bytes} bytes of data (truncated or not a token file)"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return torch.from_numpy(np.array(array, dtype=np.int64, order="C"))  # uint64 beyond int64 wraps negative
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read as .npy ({e})") from None


def _safetensors_ids(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``input_ids`` (int64) and the optional ``attention_mask`` of a .safetensors token file; the
    header is checked (dtypes, ranks, every byte range within the file) before any data is read."""
    from safetensors import SafetensorError, safe_open

    from moeprune.io.format import read_header

    try:
        tensors, _ = read_header(path)
    except InputError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise InputError(f"{path}: cannot read as .safetensors ({reason})") from None
    ids_info, mask_info = tensors.get("input_ids"), tensors.get("attention_mask")
    if ids_info is None:
        raise InputError(f"{path}: no 'input_ids' tensor (tensors: {', '.join(tensors) or '(none)'})")
    if ids_info.dtype not in _ST_IDS:
        raise InputError(f"{path}: input_ids must be integers, found dtype {ids_info.dtype}")
    if len(ids_info.shape) != 2 or 0 in ids_info.shape:
        raise InputError(f"{path}: input_ids must be a non-empty [N, L] array, found shape {ids_info.shape}")
    if mask_info is not None:
        if mask_info.shape != ids_info.shape:
            raise InputError(f"{path}: attention_mask {mask_info.shape} must match input_ids {ids_info.shape}")
        if mask_info.dtype not in (*_ST_IDS, "BOOL"):
            raise InputError(f"{path}: attention_mask must be 0/1 integers, found dtype {mask_info.dtype}")
    try:
        with safe_open(str(path), framework="pt") as f:
            ids = f.get_tensor("input_ids")
            mask = f.get_tensor("attention_mask") if mask_info is not None else None
    except (SafetensorError, OSError) as e:
        raise InputError(f"{path}: cannot read as .safetensors ({e})") from None
    return ids.to(torch.int64), mask  # uint64 beyond int64 wraps negative and fails below


def load_pretokenized(path: Path, *, seed: int, vocab_size: int | None) -> TokenBatch:
    mask: torch.Tensor | None = None
    if path.suffix.lower() == ".npy":
        ids = _npy_ids(path)
    else:
        ids, mask = _safetensors_ids(path)
    if ids.ndim != 2 or ids.numel() == 0:
        raise InputError(f"{path}: input_ids must be a non-empty [N, L] array, found shape {tuple(ids.shape)}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise InputError(f"{path}: negative token id {low}")
    if vocab_size is not None and high >= vocab_size:
        raise InputError(f"{path}: token id {high} is outside the vocabulary of {vocab_size} ids (wrong tokenizer?)")
    if mask is None:
        mask = torch.ones_like(ids)
    else:
        if mask.shape != ids.shape:
            raise InputError(f"{path}: attention_mask {tuple(mask.shape)} must match input_ids {tuple(ids.shape)}")
        if not (_integer(mask) or mask.dtype == torch.bool):
            raise InputError(f"{path}: attention_mask must be 0/1 integers, found dtype {mask.dtype}")
        mask = mask.to(torch.int64)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError(f"{path}: attention_mask must hold only 0 and 1")
        if int(mask.sum()) == 0:
            raise InputError(f"{path}: yields no tokens (attention_mask is all 0)")
    return TokenBatch(
        input_ids=ids.contiguous(),  # (N, L)
        attention_mask=mask.contiguous(),  # (N, L)
        source=f"{path} (pre-tokenized)",
        seed=seed,
        seq_len=int(ids.shape[1]),
    )
