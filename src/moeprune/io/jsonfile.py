"""Every JSON file moeprune reads, parsed once at the edge into a typed, range-checked object.

`read_json` refuses what is not a regular file (a FIFO, a folder or a device would hang or
mislead the reader), files larger than a bound, invalid UTF-8 or JSON, NaN/Infinity constants and
nesting too deep to parse; `validate` turns a pydantic validation failure into one line that names
the file and the field. Nothing past this edge casts or indexes raw JSON.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from moeprune.errors import InputError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

MAX_JSON_BYTES = 1 << 30
"""Largest JSON file read (a scores.json of a 1,000-layer x 1,024-expert model is ~20 MB)."""

M = TypeVar("M", bound="BaseModel")


def regular_file(path: Path, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` (links followed), refusing anything but a regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
        raise InputError(f"{path}: {what} is {kind}")
    return st


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str | bytes, where: str, *, constants: bool = False) -> Any:
    """Parse JSON text; every failure is one InputError line naming ``where``. NaN and Infinity
    are refused unless ``constants`` (then the schema refuses them, naming the field)."""
    try:
        return json.loads(text, parse_constant=None if constants else _no_constant)
    except RecursionError:
        raise InputError(f"{where}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not valid JSON (not UTF-8 text)") from None
    except ValueError as e:  # JSONDecodeError included
        raise InputError(f"{where}: not valid JSON ({e})") from None


def read_json(path: Path, what: str = "file", *, constants: bool = False) -> Any:
    """The parsed content of the JSON file ``path`` (see the module docstring for what is refused;
    ``constants``: see `loads`)."""
    st = regular_file(path, what)
    if st.st_size > MAX_JSON_BYTES:
        raise InputError(f"{path}: {what} is {st.st_size} bytes, larger than any moeprune reads")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e})") from None
    return loads(data, str(path), constants=constants)


def shown(value: Any) -> str:
    """A value as an error line shows it: short, never the whole of a nested structure."""
    text = repr(value) if isinstance(value, (int, float, str, bool)) or value is None else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def field_error(where: str, e: ValidationError) -> InputError:
    """One line for the first problem pydantic found: file, field path, what is wrong."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return InputError(f"{where}: field {loc}: {err['msg'].lower()} (got {shown(err.get('input'))})")


def validate(model: type[M], data: Any, where: str) -> M:
    """``data`` checked against ``model``; a failure is one line naming ``where`` and the field.
    (pydantic is imported here, not at start-up: the commands that never read an artefact skip it.)"""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise field_error(where, e) from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply") from None
