"""Token data for calibration and perplexity: any SOURCE -> one deterministic `TokenBatch`.

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

import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moeprune.errors import InputError, OutputError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
TOKEN_SUFFIXES = (".npy", ".safetensors")
_HASH_TAG = b"moeprune.TokenBatch.v1"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # one or more blank (or whitespace-only) lines
_INSTALL_HINT = "pip install 'moeprune[calib]'"
_END = object()


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
    if not exists and not _looks_like_hub_id(text):
        raise InputError(f"{text}: no such file or folder (and not a Hugging Face dataset id like org/name)")
    if exists and not path.is_dir():
        from moeprune.io.jsonfile import regular_file

        regular_file(path, "data file")  # a FIFO or a device would block the reader or never end
    path = path.resolve() if exists else path
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TOKEN_SUFFIXES:
        if vocab_size is None and tokenizer is not None:
            vocab_size = len(tokenizer)
        return _load_pretokenized(path, seed=seed, vocab_size=vocab_size)
    if tokenizer is None:
        raise InputError(f"{text}: text sources need the model's tokenizer (none was given)")
    if exists:
        if path.is_dir():
            docs, count, where = _folder_documents(path)
        elif suffix in TEXT_SUFFIXES:
            docs, count, where = _text_file_documents(path)
        elif suffix in (".jsonl", ".json"):
            docs, count, where = _json_documents(path, text_field)
        elif suffix == ".parquet":
            docs, count, where = _parquet_documents(path, text_field)
        else:
            known = ", ".join(TEXT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES)
            raise InputError(f"{path}: unsupported calibration file type {suffix or '(none)'!r}; use one of {known}")
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        stream: Iterable[str | None] = docs(order.tolist())
        if not shuffle:
            where += ", in file order"
    else:
        stream, where = _hub_documents(text, dataset_config, split, text_field, seed, shuffle, shuffle_buffer)
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


# --- document sources: (fetch(order) -> documents in that order, count, description) ------------

DocumentFetch = Callable[[Sequence[int]], Iterator[str | None]]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


def _folder_documents(folder: Path) -> tuple[DocumentFetch, int, str]:
    found: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):  # symlinked folders are not followed
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in TEXT_SUFFIXES:
                file = Path(root, name)
                if file.is_file():
                    found.append((file.relative_to(folder).as_posix(), file))
    files = [file for _, file in sorted(found)]
    if not files:
        raise InputError(f"{folder}: no text files ({', '.join(TEXT_SUFFIXES)}) in this folder")

    def fetch(order: Sequence[int]) -> Iterator[str | None]:
        for i in order:
            yield _read_text(files[i])

    return fetch, len(files), f"{folder} ({len(files)} files)"


def split_paragraphs(text: str) -> list[str]:
    """The documents of a single text file: blocks separated by blank lines, empty ones dropped."""
    blocks = (b.strip("\r\n") for b in _BLANK_LINES.split(text.replace("\r\n", "\n")))
    return [b for b in blocks if b.strip()]


def _text_file_documents(path: Path) -> tuple[DocumentFetch, int, str]:
    docs = split_paragraphs(_read_text(path))
    if not docs:
        raise InputError(f"{path}: yields no tokens (the file holds no text)")

    def fetch(order: Sequence[int]) -> Iterator[str | None]:
        for i in order:
            yield docs[i]

    return fetch, len(docs), str(path)


def _field(row: Any, field: str, where: str) -> str | None:
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, found {type(row).__name__}")
    if field not in row:
        names = ", ".join(map(str, row)) or "(none)"
        raise InputError(f"{where}: no field {field!r} (fields: {names}); choose one with --text-field")
    value = row[field]
    if value is None or isinstance(value, str):
        return value
    raise InputError(f"{where}: field {field!r} holds {type(value).__name__}, not text")


def _json_documents(path: Path, field: str) -> tuple[DocumentFetch, int, str]:
    where = f"{path} [{field}]"
    try:
        with path.open("rb") as f:
            if path.suffix.lower() == ".json":
                head = f.read(4096).lstrip()
                f.seek(0)
                try:
                    loaded = json.load(f)
                except json.JSONDecodeError:
                    if head.startswith(b"["):
                        raise
                    loaded = None  # not one JSON value: read it as JSON lines below
                if loaded is not None:
                    rows = loaded if isinstance(loaded, list) else [loaded]

                    def fetch_list(order: Sequence[int]) -> Iterator[str | None]:
                        for i in order:
                            yield _field(rows[i], field, f"{path} item {i}")

                    return fetch_list, len(rows), where
            f.seek(0)
            offsets: list[int] = []  # byte offset of each non-blank line
            lines: list[int] = []  # its 1-based line number
            pos = 0
            for number, line in enumerate(f, 1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(number)
                pos += len(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: invalid JSON ({e})") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e

    def fetch_lines(order: Sequence[int]) -> Iterator[str | None]:
        with path.open("rb") as f:
            for i in order:
                f.seek(offsets[i])
                try:
                    row = json.loads(f.readline())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise InputError(f"{path} line {lines[i]}: invalid JSON ({e})") from e
                yield _field(row, field, f"{path} line {lines[i]}")

    return fetch_lines, len(offsets), where


def _parquet_documents(path: Path, field: str) -> tuple[DocumentFetch, int, str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InputError(f"{path}: reading .parquet needs pyarrow ({_INSTALL_HINT})") from e
    try:
        names = pq.read_schema(path).names
        if field not in names:
            raise InputError(f"{path}: no column {field!r} (columns: {', '.join(names)}); choose one with --text-field")
        column = pq.read_table(path, columns=[field]).column(field)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: cannot read as parquet ({e})") from e
    string_view = getattr(pa.types, "is_string_view", lambda _: False)
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or string_view(kind) or pa.types.is_null(kind)):
        raise InputError(f"{path}: column {field!r} holds {column.type}, not text")

    def fetch(order: Sequence[int]) -> Iterator[str | None]:
        for start in range(0, len(order), 256):
            yield from column.take(pa.array(order[start : start + 256], type=pa.int64())).to_pylist()

    return fetch, len(column), f"{path} [{field}]"


def _looks_like_hub_id(text: str) -> bool:
    suffix = Path(text).suffix.lower()
    return bool(_HUB_ID.fullmatch(text)) and suffix not in TEXT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES


def _hub_documents(
    name: str, config: str | None, split: str, field: str, seed: int, shuffle: bool, buffer: int
) -> tuple[Iterator[str | None], str]:
    where = f"{name} ({', '.join(x for x in (config, split) if x)}) [{field}]"
    try:
        import datasets
    except ImportError as e:
        raise InputError(f"{name}: loading a Hugging Face dataset needs the datasets package ({_INSTALL_HINT})") from e

    def unreachable(e: BaseException) -> InputError:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return InputError(
            f"{where}: could not load the Hugging Face dataset ({first}); check the id, config and split, "
            "the network and HF_HUB_OFFLINE/HF_DATASETS_OFFLINE, or give a local file"
        )

    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        if shuffle:
            ds = ds.shuffle(seed=seed, buffer_size=buffer)
    except Exception as e:
        raise unreachable(e) from e
    if shuffle:
        where += f", streamed, shuffle buffer {buffer}"
    else:
        where += ", streamed in order"

    def stream() -> Iterator[str | None]:
        rows = iter(ds)
        for number in itertools.count():
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:
                raise unreachable(e) from e
            yield _field(row, field, f"{where} row {number}")

    return stream(), where


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


def _load_pretokenized(path: Path, *, seed: int, vocab_size: int | None) -> TokenBatch:
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
