"""Documents from every text source calibration and perplexity read: a folder of text files, one
text file (paragraphs), records (.jsonl/.json/.parquet) and Hugging Face datasets (streamed).

Each source gives ``(fetch, count, description)``: ``fetch(order)`` yields the documents in the
given order (None for a null record), so that the packer can shuffle without reading everything;
see `calib.data` for the rules each source follows.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from moeprune.errors import InputError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
TOKEN_SUFFIXES = (".npy", ".safetensors")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")  # one or more blank (or whitespace-only) lines
INSTALL_HINT = "pip install 'moeprune[calib]'"


# --- document sources: (fetch(order) -> documents in that order, count, description) ------------

DocumentFetch = Callable[[Sequence[int]], Iterator[str | None]]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from e


def folder_documents(folder: Path) -> tuple[DocumentFetch, int, str]:
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


def text_file_documents(path: Path) -> tuple[DocumentFetch, int, str]:
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


def json_documents(path: Path, field: str) -> tuple[DocumentFetch, int, str]:
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


def parquet_documents(path: Path, field: str) -> tuple[DocumentFetch, int, str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise InputError(f"{path}: reading .parquet needs pyarrow ({INSTALL_HINT})") from e
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


def looks_like_hub_id(text: str) -> bool:
    suffix = Path(text).suffix.lower()
    return bool(_HUB_ID.fullmatch(text)) and suffix not in TEXT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES


def hub_documents(
    name: str, config: str | None, split: str, field: str, seed: int, shuffle: bool, buffer: int
) -> tuple[Iterator[str | None], str]:
    where = f"{name} ({', '.join(x for x in (config, split) if x)}) [{field}]"
    try:
        import datasets
    except ImportError as e:
        raise InputError(f"{name}: loading a Hugging Face dataset needs the datasets package ({INSTALL_HINT})") from e

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
