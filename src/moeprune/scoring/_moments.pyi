"""Native kernel of the weight-scoring pass (``_moments.c``); absent where it was not built."""

isa: str
"""The loop in use: "avx2" or "generic"."""
DEFAULT_WINDOW: int
"""Bytes mapped at once by default."""

def moments(
    fd: int, offset: int, nbytes: int, dtype: str, window: int = 0, isa: str | None = None
) -> tuple[int, float, float]:
    """(values, sum |w|, sum w^2) of the ``nbytes`` bytes at ``offset`` of file ``fd``."""
