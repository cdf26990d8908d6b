"""Shared fixtures: tiny random checkpoints of every registered family, built once per session,
and an in-process runner for the ``moeprune`` command line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moeprune.cli import main
from moeprune.tiny import make_tiny


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module: float32 results then do not depend on how work is split,
    so runs compared bit for bit (batched vs not, several processes vs one) agree."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny(family, **make_tiny_kwargs)`` -> path of a cached tiny checkpoint (do not modify it;
    copy it first if a test must change files)."""
    cache: dict[str, Path] = {}

    def get(family: str, **kwargs: Any) -> Path:
        key = family + json.dumps(kwargs, sort_keys=True, default=str)
        if key not in cache:
            path = tmp_path_factory.mktemp(family) / "model"
            make_tiny(family, path, **kwargs)
            cache[key] = path
        return cache[key]

    return get


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """``cli("prune", str(model), "--ratio", "0.5", "-o", str(out))`` -> CliResult(code, out, err)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main(["-q", *args])
        except SystemExit as e:
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
