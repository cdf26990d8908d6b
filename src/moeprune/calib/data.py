"""Token data for calibration and perplexity: any SOURCE -> one deterministic `TokenBatch` (the
sources are read by `calib.sources` and `calib.tokenfiles`; this module chooses and packs).

`load_tokens(source, tokenizer, samples=, seq_len=, seed=)` owns the whole path from a source to
packed fixed-length token windows with attention masks. Same arguments and same files give the same
tensors bit for bit, and `TokenBatch.sha256()` names them (the STATS metadata records it).

Sources, tried in this order:

* **Pre-tokenized file** (``.npy``: an integer array [N, L]; ``.safetensors``: ``input_ids`` [N, L]
  and optionally ``attention_mask`` [N, L] of 0/1). Used exactly as given: ``samples``, ``seq_len``,
  ``seed`` and ``shuffle`` neither resample nor repack it; the file wins and the batch reports its
  real shape. Checked: integer dtype, 2-D, non-empty, ids >= 0 and < ``vocab_size`` (the argument,
  or ``len(tokenizer)`` when only a tokenizer is given; text sources are checked against the
  argument too). Without a mask every position counts.
  `TokenBatch.save` writes this format, so the tokens of any run can be reused or given to another
  tool, and load back with the same hash.
* **Folder**: every ``.txt``/``.md``/``.rst``/``.py`` file below it (recursive, hidden files and
  folders skipped), one document per file, ordered by relative path before shuffling.
* **Single text file** (``.txt``/``.md``/``.rst``/``.py``): one document per block of lines separated
  by blank lines (lines holding only whitespace count as blank); a block keeps its inner newlines and
  indentation, leading/trailing newlines are dropped. A file with no blank line is one document.
* **Records**: ``.jsonl`` (one JSON object per line), ``.json`` (a list of objects, one object, or
  JSON lines), ``.parquet`` (needs ``pyarrow``); the document is the ``text_field`` value. A missing
  field is an error naming the fields that exist; a null value is an empty document; any other
  non-string value is an error. JSON lines are indexed by byte offset: only the rows used are parsed.
* **Hugging Face dataset id** (anything else shaped like ``name`` or ``org/name`` without a file
  suffix): ``datasets.load_dataset(id, dataset_config, split=split, streaming=True)``, shuffled with
  ``shuffle(seed=seed, buffer_size=shuffle_buffer)`` and read in stream order only as far as needed.
  A failure to load (offline, unknown id, bad config or split) is one `InputError` line.

Text files are decoded as UTF-8 with invalid bytes replaced. Empty and whitespace-only documents are
skipped everywhere.

Packing (text sources): the documents are taken in the order
``numpy.random.default_rng(seed).permutation(n_documents)`` (in source order when
``shuffle=False``, e.g. for perplexity on a fixed text), each is tokenized with
``add_special_tokens=False``, followed by the tokenizer's EOS id (or preceded by its BOS id when it
has no EOS; no separator when it has neither), and concatenated. The stream is cut after exactly
``samples * seq_len`` tokens into ``samples`` windows of ``seq_len`` (documents run across window
boundaries; reading stops at the document that completes the last window). If the source runs out
first, fewer windows come back: the last one is padded with ``pad_token_id`` (else EOS, else 0) under
``attention_mask`` 0, and ``TokenBatch.short`` / ``requested_samples`` say so — the library never
prints, the caller reports it. A source that yields no token at all is an `InputError`.

Identity: `TokenBatch.sha256` hashes a version tag, the shape and the ids and mask as little-endian
int64, so it does not depend on the machine, the source or the file format the tokens came from.
The shuffle relies on numpy's PCG64 ``Generator.permutation`` and on the tokenizer files, which are
stable in practice; the hash in the statistics metadata is what proves two runs saw the same tokens.
`TokenBatch.shard(rank, world)` deals windows round-robin to data-parallel ranks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moeprune.calib.sources import (
    RECORD_SUFFIXES,
    TEXT_SUFFIXES,
    TOKEN_SUFFIXES,
    folder_documents,
    hub_documents,
    json_documents,
    looks_like_hub_id,
    parquet_documents,
    split_paragraphs,
    text_file_documents,
)
from moeprune.calib.tokenfiles import load_pretokenized
from moeprune.calib.tokens import TokenBatch
from moeprune.errors import InputError

_END = object()

__all__ = ["TOKEN_SUFFIXES", "TokenBatch", "load_tokens", "split_paragraphs"]


def load_tokens(
    source: str | os.PathLike[str],
    tokenizer: Any,
    *,
    samples: int = 1024,
    seq_len: int = 2048,
    seed: int = 0,
    text_field: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
    vocab_size: int | None = None,
    shuffle: bool = True,
    shuffle_buffer: int = 10_000,
) -> TokenBatch:
    """``samples`` windows of ``seq_len`` tokens from ``source`` (see the module docstring).

    ``tokenizer`` is a transformers tokenizer (needed for text sources; may be None for pre-tokenized
    files). ``vocab_size`` (the model's vocabulary) bounds every token id: a pre-tokenized file's
    (default ``len(tokenizer)``) and a text source's (a tokenizer larger than the model's vocabulary
    is refused).
    """
    if samples < 1 or seq_len < 1:
        raise InputError(f"samples and seq_len must be >= 1, got samples={samples}, seq_len={seq_len}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    exists = path.exists()
    if not exists and not looks_like_hub_id(text):
        raise InputError(f"{text}: no such file or folder (and not a Hugging Face dataset id like org/name)")
    if exists and not path.is_dir():
        from moeprune.io.jsonfile import regular_file

        regular_file(path, "data file")  # a FIFO or a device would block the reader or never end
    path = path.resolve() if exists else path
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TOKEN_SUFFIXES:
        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)
        return load_pretokenized(path, seed=seed, vocab_size=vocab_size)
    if tokenizer is None:
        raise InputError(f"{text}: text sources need the model's tokenizer (none was given)")
    if exists:
        if path.is_dir():
            docs, count, where = folder_documents(path)
        elif suffix in TEXT_SUFFIXES:
            docs, count, where = text_file_documents(path)
        elif suffix in (".jsonl", ".json"):
            docs, count, where = json_documents(path, text_field)
        elif suffix == ".parquet":
            docs, count, where = parquet_documents(path, text_field)
        else:
            known = ", ".join(TEXT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES)
            raise InputError(f"{path}: unsupported calibration file type {suffix or '(none)'!r}; use one of {known}")
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        stream: Iterable[str | None] = docs(order.tolist())
        if not shuffle:
            where += ", in file order"
    else:
        stream, where = hub_documents(text, dataset_config, split, text_field, seed, shuffle, shuffle_buffer)
    batch = _pack(stream, tokenizer, samples=samples, seq_len=seq_len, seed=seed, where=where)
    high = int(batch.input_ids.max())
    if vocab_size is not None and high >= vocab_size:
        raise InputError(f"{where}: token id {high} is outside the vocabulary of {vocab_size} ids (wrong tokenizer?)")
    return batch


# --- packing -----------------------------------------------------------------------------------


def _pack(
    documents: Iterable[str | None], tokenizer: Any, *, samples: int, seq_len: int, seed: int, where: str
) -> TokenBatch:
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    need = samples * seq_len
    parts: list[np.ndarray] = []
    total = used_docs = seen_docs = 0
    pending: list[str] = []
    it = iter(documents)
    exhausted = False
    while total < need and not exhausted:
        # Tokenize a few documents at a time, about as many as the remaining tokens call for.
        avg = total / used_docs if used_docs else 0.0
        want = 1 if not avg else min(64, max(1, math.ceil((need - total) / avg)))
        pending.clear()
        while len(pending) < want:
            doc = next(it, _END)
            if doc is _END:
                exhausted = True
                break
            if isinstance(doc, str) and doc.strip():
                pending.append(doc)
        if not pending:
            break
        seen_docs += len(pending)
        encoded = tokenizer(pending, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            if eos is not None:
                ids = [*ids, eos]
            elif bos is not None:
                ids = [bos, *ids]
            parts.append(np.asarray(ids, dtype=np.int64))
            total += len(ids)
            used_docs += 1
            if total >= need:
                break
    if total == 0 and seen_docs:
        raise InputError(f"{where}: the tokenizer turns its text into no tokens (is it the model's tokenizer?)")
    if total == 0:
        raise InputError(f"{where}: yields no tokens (no non-empty document)")
    flat = np.concatenate(parts)[:need]  # (T,)
    n = math.ceil(flat.size / seq_len)
    ids_np = np.full(n * seq_len, pad, dtype=np.int64)
    mask_np = np.zeros(n * seq_len, dtype=np.int64)
    ids_np[: flat.size] = flat
    mask_np[: flat.size] = 1
    return TokenBatch(
        input_ids=torch.from_numpy(ids_np.reshape(n, seq_len)),  # (N, L)
        attention_mask=torch.from_numpy(mask_np.reshape(n, seq_len)),  # (N, L)
        source=where,
        seed=seed,
        seq_len=seq_len,
        requested_samples=samples,
        n_documents=used_docs,
    )
