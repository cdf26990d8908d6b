"""The library does what the command line does: each command is one call of the public API, with
the same inputs (paths, data sources) and the same files out."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import moeprune
from helpers import WORDS, save_word_tokenizer
from moeprune.arch import FAMILIES

Tiny = Callable[..., Path]


@pytest.fixture(scope="module")
def model(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "model"
    shutil.copytree(tiny("qwen3_moe"), path)
    save_word_tokenizer(path, WORDS)
    return path


def test_calibrate_takes_a_data_source_like_the_cli(model: Path, tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(WORDS[i:] + WORDS[:i])}) for i in range(12)) + "\n")
    stats = moeprune.calibrate(model, data, samples=4, seq_len=8, output=tmp_path / "stats", batch_size=2)
    assert stats.layers == [0, 1, 2] and "docs.jsonl" in stats.meta["data"]["source"]
    assert (tmp_path / "stats" / "stats.json").is_file()
    again = moeprune.calibrate(
        model, data, samples=4, seq_len=8, output=tmp_path / "stats", overwrite=True, batch_size=2
    )
    assert again.moments.equal(stats.moments)
    with pytest.raises(moeprune.MoePruneError, match="already exists"):
        moeprune.calibrate(model, data, samples=4, seq_len=8, output=tmp_path / "stats")
    scores = moeprune.score(model, "man", stats=tmp_path / "stats", output=tmp_path / "scores.json")
    plan = moeprune.prune(model, tmp_path / "out", scores=tmp_path / "scores.json", ratio=0.25)
    assert plan.criterion == "man" and plan.layers[0].pruned == sorted(plan.layers[0].pruned)
    assert plan.scores == scores["man"].layers
    assert moeprune.verify(model, tmp_path / "out").ok


@pytest.mark.parametrize("family", sorted(f for f, e in FAMILIES.items() if e.calibration_blocker))
def test_calibrate_refuses_a_family_it_cannot_run_yet(
    family: str, tiny: Tiny, cli: Callable[..., Any], tmp_path: Path
) -> None:
    import numpy as np

    from helpers import one_line_error

    ids = tmp_path / "ids.npy"
    np.save(ids, np.zeros((2, 8), dtype=np.int64))
    r = cli("calibrate", str(tiny(family)), "--data", str(ids), "-o", str(tmp_path / "stats"))
    one_line_error(r, "calibration cannot run", family)
    assert not (tmp_path / "stats").exists()
