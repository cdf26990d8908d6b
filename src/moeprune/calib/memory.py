"""Keeping calibration's memory to one layer: glibc allocator tuning around layer loads and frees.

By default glibc serves blocks up to 32 MiB from its heap once one that large has been freed, and
keeps freed blocks there whenever a live one sits above them, so a pass that loads and frees one
layer after another grows: a 128-expert model (0.5 MB expert matrices) peaked at 2.22 GB; trimming
after each layer alone gave 1.70 GB; mapping the blocks of each layer load on their own and
trimming gives 1.30 GB. A fixed 128 KiB threshold for the whole run would make every large
temporary of the forward passes a fresh mapping: 1.6-1.9x slower. The glibc functions are no-ops
(return False) where the C library is not glibc.

On CPU, torch runs bfloat16 matrix products through oneDNN, which caches a compiled kernel
("primitive", with its buffers) for every new shape, up to 1024 of them. The experts see a new
row count at almost every call, so a bfloat16 calibration grew by ~0.1 GB per layer (7.1 GB
checkpoint: 0.56 -> 0.83 GB between layers 1 and 4) for kernels it would never reuse;
`limit_kernel_cache` turns that cache off (no measurable change in CPU time).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter: blocks above this size get a mapping of their own."""
LOAD_THRESHOLD = 128 << 10
"""While a layer loads: every block above 128 KiB is a mapping of its own (glibc's default)."""
RUN_THRESHOLD = 32 << 20
"""Otherwise: glibc's own ceiling, which the forward passes reach anyway."""


ONEDNN_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def limit_kernel_cache() -> None:
    """Turn oneDNN's kernel cache off unless the user set its capacity. oneDNN reads the variable
    when it first builds a kernel, so this works in a process that has not yet run a bfloat16
    matrix product on CPU (the CLI, or an API call that starts with calibrate)."""
    os.environ.setdefault(ONEDNN_CACHE, "0")


def _mallopt_threshold(nbytes: int) -> bool:
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):  # not glibc
        return False


def release_freed_memory() -> bool:
    """Hand the C heap's free memory back to the OS (glibc's ``malloc_trim``; False elsewhere)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


@contextmanager
def mapped_allocations() -> Iterator[None]:
    """While loading a layer, give every block above 128 KiB a mapping of its own, so that the
    conversion's temporaries (per-expert tensors before fusing, dtype casts) go back to the OS as
    soon as they are freed; afterwards blocks up to 32 MiB come from the heap again, and the heap's
    free memory is trimmed."""
    _mallopt_threshold(LOAD_THRESHOLD)
    try:
        yield
    finally:
        _mallopt_threshold(RUN_THRESHOLD)
        release_freed_memory()
