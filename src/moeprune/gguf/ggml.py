"""llama.cpp's own dequantizers, when llama-cpp-python is installed: the ``dequantize_row_<type>``
functions of its ``libggml-base`` (C, SIMD), called through ctypes (which releases the GIL, so the
scoring threads run them in parallel). gguf-py's numpy dequantizers compute the same values
(tests check it, type by type) but run at tens of MB/s; these run at about a GB/s. The library
is loaded from llama-cpp-python's package folder without importing llama_cpp; where it is absent
or lacks a type, `dequantizer` returns None and gguf-py is used.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

Dequantizer = Callable[[Any, int], Any]
"""(uint8 array of whole blocks, number of values) -> float32 array."""


@cache
def _library() -> Any:
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):  # a broken or blocked installation: as if absent
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
            path = Path(folder) / "lib" / name
            if path.is_file():
                try:
                    return ctypes.CDLL(str(path))
                except OSError:
                    return None
    return None


def _symbol(qtype_name: str) -> str:
    """ggml's function name: Q4_K -> dequantize_row_q4_K, IQ4_XS -> dequantize_row_iq4_xs."""
    n = qtype_name.lower()
    if n.endswith("_k"):
        n = n[:-2] + "_K"
    return "dequantize_row_" + n


@cache
def dequantizer(qtype_name: str) -> Dequantizer | None:
    """llama.cpp's dequantizer of a quantized type, or None where it is not available."""
    lib = _library()
    if lib is None or qtype_name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"):
        return None
    fn = getattr(lib, _symbol(qtype_name), None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None

    def run(raw: Any, n: int) -> Any:
        import numpy as np

        src = np.ascontiguousarray(raw)
        out = np.empty(n, np.float32)
        fn(src.ctypes.data, out.ctypes.data, n)
        return out

    return run
