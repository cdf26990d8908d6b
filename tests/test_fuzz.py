"""Corrupt headers, indexes, configs and scores never crash with a traceback (hypothesis fuzzing).

Each example damages a copy of a tiny checkpoint — random bytes written into a safetensors header,
random edits of the index JSON, any JSON value under a config key the registry reads or in a
header's dtype/shape/offsets/``__metadata__``, random edits of a scores.json at any depth — and runs
the command that reads it: it either still works (a harmless change) or stops with exit code 2 and
one ``error:`` line. Any other exception fails. The generated matrix of tests/test_edges.py covers
the same inputs value class by value class.
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


# --- structured fuzzing: typed values where the registry and the header parser read them --------

EDGE_NUMBERS = st.sampled_from([0, 1, -1, 2, 3, 8, 2**31, 2**63, 2**64, 2**70, 0.5, 1e30, -0.0])
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | EDGE_NUMBERS
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
CONFIG_KEYS = [
    "model_type", "num_experts", "num_local_experts", "n_routed_experts", "num_experts_per_tok",
    "num_hidden_layers", "decoder_sparse_step", "mlp_only_layers", "first_k_dense_replace", "n_group",
    "topk_group", "vocab_size", "text_config", "quantization_config", "moe_layers", "architectures",
]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_models(tiny) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return {f: tiny(f) for f in ("qwen3_moe", "deepseek_v3")}


@SETTINGS
@given(data=st.data())
def test_config_values(fuzz_models, tmp_path_factory, cli, data) -> None:  # type: ignore[no-untyped-def]
    """Any JSON value under any key the registry reads: inspect and a dry run either work or say
    one line (never a traceback, a hang or an allocation the config asked for)."""
    family = data.draw(st.sampled_from(sorted(fuzz_models)))
    work = tmp_path_factory.mktemp("c") / "m"
    shutil.copytree(fuzz_models[family], work)
    config = json.loads((work / "config.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(CONFIG_KEYS) | st.text(max_size=10))
        if data.draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = data.draw(VALUES)
    (work / "config.json").write_text(json.dumps(config))
    before = (work / "config.json").read_bytes()
    _check(cli("inspect", str(work)))
    _check(cli("prune", str(work), "--prune", "2", "--dry-run", "-o", str(work.parent / "out")))
    assert (work / "config.json").read_bytes() == before


@SETTINGS
@given(data=st.data())
def test_header_values(sharded: Path, tmp_path_factory, cli, data) -> None:  # type: ignore[no-untyped-def]
    """Any JSON value for a tensor's dtype, shape or offsets, a whole entry, or ``__metadata__``,
    in a header that stays valid JSON: score works or says one line."""
    work = tmp_path_factory.mktemp("v") / "m"
    shutil.copytree(sharded, work)
    shard = sorted(work.glob("model-*.safetensors"))[data.draw(st.integers(0, 2))]
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    where = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "__metadata__", "dim", "offset"]))
    if where == "entry":
        header[name] = data.draw(VALUES)
    elif where == "__metadata__":
        header["__metadata__"] = data.draw(VALUES)
    elif where == "dim" and header[name]["shape"]:
        dims = header[name]["shape"]
        dims[data.draw(st.integers(0, len(dims) - 1))] = data.draw(EDGE_NUMBERS | VALUES)
    elif where == "offset":
        header[name]["data_offsets"][data.draw(st.integers(0, 1))] = data.draw(EDGE_NUMBERS | VALUES)
    elif where in ("dtype", "shape", "data_offsets"):
        header[name][where] = data.draw(VALUES)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    shard.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    _check(cli("score", str(work), "-o", str(work.parent / "s.json")))


def _edit_json(data, doc):  # type: ignore[no-untyped-def]
    """One random edit of a parsed JSON document: a value replaced, a key dropped or added, at any depth."""
    path: list = []  # type: ignore[type-arg]
    node = doc
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    how = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if not path:
        return data.draw(VALUES) if how == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if how == "replace":
        parent[path[-1]] = data.draw(VALUES)
    elif how == "drop":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = data.draw(VALUES)
    return doc


@pytest.fixture(scope="module")
def scores_file(fuzz_models, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    from moeprune.api import score

    path = tmp_path_factory.mktemp("scores") / "scores.json"
    path.write_text(json.dumps(score(fuzz_models["qwen3_moe"], "aimer")["aimer"].to_json()))
    return path


@SETTINGS
@given(data=st.data())
def test_scores_json_values(fuzz_models, scores_file, tmp_path_factory, cli, data) -> None:  # type: ignore[no-untyped-def]
    """Random edits of a scores.json at any depth: prune --scores --dry-run works or says one line."""
    doc = _edit_json(data, json.loads(scores_file.read_text()))
    if data.draw(st.booleans()):
        doc = {"criteria": {"aimer": doc}}
    work = tmp_path_factory.mktemp("s")
    (work / "scores.json").write_text(json.dumps(doc))
    args = ("prune", str(fuzz_models["qwen3_moe"]), "--prune", "2", "--scores", str(work / "scores.json"))
    _check(cli(*args, "--dry-run", "-o", str(work / "out")))
    assert sorted(p.name for p in work.iterdir()) == ["scores.json"]
