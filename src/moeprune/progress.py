"""The progress callback every long operation takes, so that the library itself never prints."""

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
"""``progress(stage, advance, total)``: ``advance`` more units (bytes, tokens, models) of ``total``
done in ``stage`` ("score", "write", a calibration layer, "eval", ...); may be called from any thread."""
