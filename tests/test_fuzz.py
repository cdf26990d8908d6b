"""Corrupt headers and indexes never crash with a traceback (hypothesis fuzzing).

Each example damages a copy of a sharded tiny checkpoint — random bytes written into a
safetensors header, or random edits of the index JSON — and runs ``score``: it either still works
(a harmless change) or stops with exit code 2 and one ``error:`` line. Any other exception fails.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moeprune.tiny import make_tiny

    return make_tiny("qwen3_moe", tmp_path_factory.mktemp("fuzz") / "model", max_shard_size="60KB")


def _check(result) -> None:  # type: ignore[no-untyped-def]
    assert result.code in (0, 2), result
    if result.code == 2:
        assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err


@SETTINGS
@given(data=st.data())
def test_damaged_safetensors_header(sharded: Path, tmp_path_factory, cli, data) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("h") / "m"
    shutil.copytree(sharded, work)
    shard = sorted(work.glob("model-*.safetensors"))[data.draw(st.integers(0, 2))]
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, 8 + n - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    shard.write_bytes(bytes(raw))
    _check(cli("score", str(work), "-o", str(work.parent / "s.json")))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=6,
)


@SETTINGS
@given(data=st.data())
def test_damaged_index(sharded: Path, tmp_path_factory, cli, data) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("i") / "m"
    shutil.copytree(sharded, work)
    index_file = work / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    how = data.draw(st.sampled_from(["value", "weight_map", "drop", "rename", "text"]))
    names = sorted(index["weight_map"])
    if how == "value":
        index["weight_map"][data.draw(st.sampled_from(names))] = data.draw(JSON_VALUES)
    elif how == "weight_map":
        index["weight_map"] = data.draw(JSON_VALUES)
    elif how == "drop":
        del index["weight_map"][data.draw(st.sampled_from(names))]
    elif how == "rename":
        index["weight_map"][data.draw(st.text(max_size=30))] = index["weight_map"].pop(
            data.draw(st.sampled_from(names))
        )
    text = json.dumps(index)
    if how == "text":
        pos = data.draw(st.integers(0, len(text) - 1))
        text = text[:pos] + data.draw(st.text(max_size=3)) + text[pos + 1 :]
    index_file.write_text(text)
    _check(cli("score", str(work), "-o", str(work.parent / "s.json")))
