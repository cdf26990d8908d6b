"""Calibration token data: every source type, exact packing, padding, determinism, pre-tokenized files
used as given, sharding, and one clear InputError for each bad input. CPU, offline, local files only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

from moeprune.calib.data import TokenBatch, load_tokens, split_paragraphs
from moeprune.errors import InputError

WORDS = [
    *("expert", "router", "token", "layer", "weight", "gate", "norm", "moe", "prune", "keep", "score", "mean"),
    *("sum", "alpha", "beta", "model", "data", "seed", "batch", "shard", "window", "pad", "mask", "hash", "text"),
    *("file", "json", "line", "column", "stream", "sample", "value", "tensor", "shape"),
]


def make_docs(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for _ in range(n)]


def make_tokenizer(**special: str) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "</s>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(make_docs(200, seed=99), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


@pytest.fixture(scope="session")
def tok() -> Any:
    """Byte-level BPE with EOS ``</s>`` and pad ``<pad>`` (pad id 0, eos id 1)."""
    return make_tokenizer(eos_token="</s>", pad_token="<pad>")


def expected_stream(tok: Any, docs: list[str], order: Any) -> list[int]:
    """The packed token stream the module promises: each chosen document's ids, then EOS."""
    out: list[int] = []
    for i in order:
        out += tok(docs[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def perm(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


def check_packed(batch: TokenBatch, stream: list[int], samples: int, seq_len: int) -> None:
    need = samples * seq_len
    assert len(stream) >= need, "test data too small for a full batch"
    assert batch.input_ids.shape == (samples, seq_len)
    assert batch.input_ids.dtype == batch.attention_mask.dtype == torch.int64
    assert batch.attention_mask.all()
    assert batch.input_ids.flatten().tolist() == stream[:need]
    assert batch.n_tokens == need and not batch.short and batch.seq_len == seq_len


# --- every source type: shapes and exact packing ------------------------------------------------


def test_folder_one_document_per_file(tmp_path: Path, tok: Any) -> None:
    docs = make_docs(12, seed=1)
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    names = [f"d{i:02d}.txt" for i in range(6)] + [f"sub/n{i}.md" for i in range(3)] + ["a.py", "b.rst", "z.TXT"]
    for name, doc in zip(names, docs, strict=True):
        (folder / name).write_text(doc)
    (folder / ".hidden.txt").write_text("ignored hidden file")
    (folder / ".git").mkdir()
    (folder / ".git" / "x.txt").write_text("ignored hidden folder")
    (folder / "data.bin").write_bytes(b"\x00\x01 not text")
    files = sorted(names)  # documents are ordered by relative path before shuffling
    by_name = dict(zip(names, docs, strict=True))
    ordered = [by_name[n] for n in files]
    batch = load_tokens(folder, tok, samples=5, seq_len=16, seed=3)
    check_packed(batch, expected_stream(tok, ordered, perm(12, 3)), 5, 16)
    assert batch.seed == 3 and "12 files" in batch.source
    assert 1 <= batch.n_documents <= 12


def test_single_text_file_paragraphs(tmp_path: Path, tok: Any) -> None:
    assert split_paragraphs("a b\nc\n\n\n  \n  indented\nx\r\n\r\nlast\n") == ["a b\nc", "  indented\nx", "last"]
    assert split_paragraphs("one block\nno blank line\n") == ["one block\nno blank line"]
    docs = make_docs(30, seed=2)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    batch = load_tokens(path, tok, samples=6, seq_len=32, seed=5)
    check_packed(batch, expected_stream(tok, docs, perm(30, 5)), 6, 32)


def test_jsonl_json_and_json_lines(tmp_path: Path, tok: Any) -> None:
    docs = make_docs(25, seed=3)
    rows = [{"id": i, "content": d} for i, d in enumerate(docs)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[10:]))
    listed = tmp_path / "d.json"
    listed.write_text(json.dumps(rows, indent=1))
    as_lines = tmp_path / "lines.json"
    as_lines.write_text(jsonl.read_text())
    stream = expected_stream(tok, docs, perm(25, 7))
    results = [
        load_tokens(p, tok, samples=4, seq_len=24, seed=7, text_field="content") for p in (jsonl, listed, as_lines)
    ]
    for batch in results:
        check_packed(batch, stream, 4, 24)
    assert len({b.sha256() for b in results}) == 1


def test_parquet(tmp_path: Path, tok: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = make_docs(40, seed=4)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": docs, "n": list(range(40))}), path, row_group_size=7)
    batch = load_tokens(path, tok, samples=8, seq_len=20, seed=11)
    check_packed(batch, expected_stream(tok, docs, perm(40, 11)), 8, 20)


def test_null_and_blank_documents_are_skipped(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": "alpha beta"}, {"text": None}, {"text": "   "}, {"text": "gamma"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    batch = load_tokens(path, tok, samples=100, seq_len=8, shuffle=False)
    assert batch.n_documents == 2
    real = batch.input_ids[batch.attention_mask.bool()].tolist()
    assert real == expected_stream(tok, ["alpha beta", "gamma"], [0, 1])


# --- padding and running out --------------------------------------------------------------------


def test_short_source_pads_last_window_and_never_counts_padding(tmp_path: Path, tok: Any) -> None:
    docs = make_docs(3, seed=5)
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(docs))
    stream = expected_stream(tok, docs, perm(3, 0))
    seq_len = 16
    assert len(stream) % seq_len, "want a partial last window"
    batch = load_tokens(path, tok, samples=1000, seq_len=seq_len, seed=0)
    n = -(-len(stream) // seq_len)
    assert batch.input_ids.shape == (n, seq_len) and batch.n_samples == n
    assert batch.requested_samples == 1000 and batch.short
    assert batch.n_tokens == len(stream) == int(batch.attention_mask.sum())
    flat_ids, flat_mask = batch.input_ids.flatten(), batch.attention_mask.flatten()
    assert flat_ids[: len(stream)].tolist() == stream
    assert flat_mask[: len(stream)].all() and not flat_mask[len(stream) :].any()
    assert (flat_ids[len(stream) :] == tok.pad_token_id).all()
    assert batch.metadata()["n_tokens"] == len(stream)


def test_exact_fit_is_not_short(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "one.txt"
    path.write_text("expert router token layer weight gate norm moe prune keep")
    stream = expected_stream(tok, ["expert router token layer weight gate norm moe prune keep"], [0])
    batch = load_tokens(path, tok, samples=1, seq_len=len(stream))
    assert batch.input_ids[0].tolist() == stream and not batch.short and batch.n_tokens == len(stream)


def test_separator_and_pad_fallbacks(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("alpha beta\n\ngamma")
    docs = ["alpha beta", "gamma"]
    bos_only = make_tokenizer(bos_token="<s>")
    plain = make_tokenizer()
    ids = [plain(d, add_special_tokens=False)["input_ids"] for d in docs]
    got = load_tokens(path, bos_only, samples=4, seq_len=64, shuffle=False)
    bos = bos_only.bos_token_id
    assert got.input_ids[0, : got.n_tokens].tolist() == [bos, *ids[0], bos, *ids[1]]
    assert (got.input_ids[0, got.n_tokens :] == 0).all()  # no pad, no eos -> 0
    got = load_tokens(path, plain, samples=4, seq_len=64, shuffle=False)
    assert got.input_ids[0, : got.n_tokens].tolist() == ids[0] + ids[1]  # no separator at all
    eos_only = make_tokenizer(eos_token="</s>")
    got = load_tokens(path, eos_only, samples=4, seq_len=64, shuffle=False)
    assert (got.input_ids[0, got.n_tokens :] == eos_only.eos_token_id).all()  # pad falls back to eos


# --- determinism --------------------------------------------------------------------------------


def test_deterministic_by_seed(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in make_docs(60, seed=6)))
    a = load_tokens(path, tok, samples=4, seq_len=32, seed=1)
    b = load_tokens(str(path), tok, samples=4, seq_len=32, seed=1)
    c = load_tokens(path, tok, samples=4, seq_len=32, seed=2)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert a.sha256() == b.sha256() and a.metadata() == b.metadata()
    assert a.sha256() != c.sha256() and not torch.equal(a.input_ids, c.input_ids)
    in_order = load_tokens(path, tok, samples=4, seq_len=32, seed=1, shuffle=False)
    check_packed(in_order, expected_stream(tok, make_docs(60, seed=6), range(60)), 4, 32)
    assert "file order" in in_order.source


def test_sha256_is_pinned() -> None:
    """The hash is a format: little-endian int64 shape, ids and mask. It must not change silently."""
    batch = TokenBatch(torch.arange(6).reshape(2, 3), torch.tensor([[1, 1, 1], [1, 1, 0]]), "x", 0, 3)
    assert batch.sha256() == batch.shard(0, 1).sha256()
    spec = hashlib.sha256(b"moeprune.TokenBatch.v1")
    for values in ([2, 3], range(6), [1, 1, 1, 1, 1, 0]):
        spec.update(b"".join(v.to_bytes(8, "little", signed=True) for v in values))
    assert batch.sha256() == spec.hexdigest() == PINNED_SHA256
    other = TokenBatch(torch.arange(6).reshape(3, 2), torch.tensor([[1, 1], [1, 1], [1, 0]]), "x", 0, 2)
    assert other.sha256() != batch.sha256()  # same bytes, other shape


PINNED_SHA256 = "d17ed5b44fb438924273807151e7917e752a6fb9f7315ca361d45139269aab3f"


# --- pre-tokenized files ------------------------------------------------------------------------


def test_npy_used_exactly_as_given(tmp_path: Path, tok: Any) -> None:
    ids = np.random.default_rng(0).integers(0, len(tok), size=(5, 7)).astype(np.int32)
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    a = load_tokens(path, tok, samples=1024, seq_len=2048, seed=0)
    b = load_tokens(path, None, samples=2, seq_len=3, seed=9)
    for batch in (a, b):
        assert batch.input_ids.tolist() == ids.tolist() and batch.input_ids.dtype == torch.int64
        assert batch.attention_mask.all() and batch.n_tokens == 35
        assert batch.seq_len == 7 and batch.n_samples == 5 and not batch.short
    assert a.sha256() == b.sha256()


def test_safetensors_with_mask_and_save_round_trip(tmp_path: Path, tok: Any) -> None:
    ids = torch.randint(0, 300, (4, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 6, dtype=torch.int64)
    mask[3, 4:] = 0
    path = tmp_path / "tokens.safetensors"
    save_file({"input_ids": ids.to(torch.int32), "attention_mask": mask.bool()}, path)
    batch = load_tokens(path, tok)
    assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)
    assert batch.n_tokens == 22 and batch.input_ids.shape == (4, 6)
    no_mask = tmp_path / "plain.safetensors"
    save_numpy({"input_ids": ids.numpy().astype(np.uint16)}, str(no_mask))
    assert load_tokens(no_mask, None).n_tokens == 24
    # Packed text tokens saved and loaded back: same tensors, same hash, reusable by other tools.
    text = tmp_path / "d.txt"
    text.write_text("\n\n".join(make_docs(5, seed=8)))
    packed = load_tokens(text, tok, samples=50, seq_len=16)
    assert packed.short  # exercises a padded window
    saved = packed.save(tmp_path / "t.safetensors")
    again = load_tokens(saved, tok, samples=1, seq_len=1, seed=123)
    assert again.sha256() == packed.sha256() and torch.equal(again.attention_mask, packed.attention_mask)
    assert not list(tmp_path.glob(".*tmp*"))


# --- batches and shards -------------------------------------------------------------------------


def test_batches_and_shards() -> None:
    ids = torch.arange(7 * 4).reshape(7, 4)
    batch = TokenBatch(ids, torch.ones_like(ids), "x", 0, 4)
    parts = list(batch.batches(3))
    assert [p[0].shape[0] for p in parts] == [3, 3, 1]
    assert torch.equal(torch.cat([p[0] for p in parts]), ids)
    assert torch.equal(torch.cat([p[1] for p in parts]), torch.ones_like(ids))
    for world in range(1, 10):
        shards = [batch.shard(rank, world) for rank in range(world)]
        rows = [tuple(r.tolist()) for s in shards for r in s.input_ids]
        assert sorted(rows) == sorted(tuple(r.tolist()) for r in ids) and len(set(rows)) == 7  # disjoint, complete
        assert sum(s.n_tokens for s in shards) == batch.n_tokens
        assert all(torch.equal(s.input_ids, ids[r::world]) for r, s in enumerate(shards))
    with pytest.raises(ValueError):
        batch.shard(2, 2)
    with pytest.raises(ValueError):
        list(batch.batches(0))


# --- Hugging Face datasets (no network: a local IterableDataset stands in for the hub) ----------


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    datasets = pytest.importorskip("datasets")
    docs = make_docs(80, seed=9)
    state: dict[str, Any] = {"docs": docs, "pulled": 0, "calls": []}

    def gen() -> Iterator[dict[str, Any]]:
        for i, d in enumerate(docs):
            state["pulled"] += 1
            yield {"text": d, "idx": i}

    def fake_load(name: str, config: Any = None, *, split: str, streaming: bool) -> Any:
        state["calls"].append((name, config, split, streaming))
        return datasets.IterableDataset.from_generator(gen)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    state["reference"] = lambda seed, buffer: [
        r["text"] for r in datasets.IterableDataset.from_generator(gen).shuffle(seed=seed, buffer_size=buffer)
    ]
    return state


def test_hub_dataset_streamed(fake_hub: dict[str, Any], tok: Any) -> None:
    batch = load_tokens("allenai/c4", tok, samples=3, seq_len=20, seed=4, dataset_config="en", shuffle_buffer=16)
    assert fake_hub["calls"] == [("allenai/c4", "en", "train", True)]
    order = fake_hub["reference"](4, 16)
    check_packed(batch, expected_stream(tok, order, range(len(order))), 3, 20)
    again = load_tokens("allenai/c4", tok, samples=3, seq_len=20, seed=4, dataset_config="en", shuffle_buffer=16)
    assert again.sha256() == batch.sha256() and "allenai/c4 (en, train)" in batch.source
    other = load_tokens("allenai/c4", tok, samples=3, seq_len=20, seed=5, dataset_config="en", shuffle_buffer=16)
    assert other.sha256() != batch.sha256()


def test_hub_dataset_reads_only_what_it_needs(fake_hub: dict[str, Any], tok: Any) -> None:
    batch = load_tokens("c4", tok, samples=2, seq_len=16, shuffle=False)
    check_packed(batch, expected_stream(tok, fake_hub["docs"], range(80)), 2, 16)
    assert batch.n_documents is not None and fake_hub["pulled"] <= batch.n_documents + 2


def test_hub_dataset_missing_field(fake_hub: dict[str, Any], tok: Any) -> None:
    with pytest.raises(InputError, match=r"no field 'content' \(fields: text, idx\)"):
        load_tokens("org/name", tok, samples=2, seq_len=16, text_field="content")


def test_hub_dataset_offline_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tok: Any) -> None:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import time; set the values they already hold too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(InputError) as info:
        load_tokens("moeprune-test/no-such-dataset", tok, samples=2, seq_len=8, dataset_config="en")
    message = str(info.value)
    assert "\n" not in message and "moeprune-test/no-such-dataset" in message
    assert "could not load" in message and "HF_HUB_OFFLINE" in message


# --- bad inputs ---------------------------------------------------------------------------------


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


BAD_TEXT: list[tuple[str, str | bytes, dict[str, Any], str]] = [
    ("empty.txt", "", {}, "no tokens"),
    ("blank.txt", "  \n\n\t\n", {}, "no tokens"),
    ("empty.jsonl", "\n\n", {}, "no tokens"),
    ("nulls.jsonl", '{"text": null}\n{"text": ""}\n', {}, "no tokens"),
    ("rows.jsonl", '{"content": "a", "id": 1}\n', {}, r"no field 'text' \(fields: content, id\)"),
    ("bad.jsonl", '{"text": "a"}\n{"text": \n', {"shuffle": False}, "line 2: invalid JSON"),
    ("number.jsonl", '{"text": 5}\n', {}, "holds int, not text"),
    ("notlist.json", "[1, 2]", {}, "expected a JSON object"),
    ("broken.json", '[{"text": "a"}', {}, "invalid JSON"),
    ("wrapped.json", '{\n "data": [{"text": "a"}]\n}\n', {}, r"no field 'text' \(fields: data\)"),
    ("corrupt.parquet", b"PAR1 not really parquet", {}, "cannot read as parquet"),
    ("data.csv", "text\na\n", {}, "unsupported calibration file type '.csv'"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "match"), BAD_TEXT, ids=[b[0] for b in BAD_TEXT])
def test_bad_text_sources(
    tmp_path: Path, tok: Any, name: str, content: str | bytes, kwargs: dict[str, Any], match: str
) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError, match=match):
        load_tokens(path, tok, samples=2, seq_len=8, **kwargs)


def test_undecodable_bytes_are_replaced(tmp_path: Path, tok: Any) -> None:
    path = _write(tmp_path / "latin1.txt", "caf\u00e9 expert".encode("latin-1"))
    batch = load_tokens(path, tok, samples=1, seq_len=64)
    assert batch.input_ids[0, : batch.n_tokens].tolist() == expected_stream(tok, ["caf\ufffd expert"], [0])


def test_bad_paths_and_arguments(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.bin").write_bytes(b"1")
    with pytest.raises(InputError, match="no text files"):
        load_tokens(tmp_path / "empty", tok)
    for missing in (tmp_path / "nope.txt", str(tmp_path / "a" / "b" / "c"), "./relative", "nope.jsonl", "x.npy"):
        with pytest.raises(InputError, match="no such file or folder"):
            load_tokens(missing, tok)
    text = _write(tmp_path / "ok.txt", "alpha beta")
    with pytest.raises(InputError, match="tokenizer"):
        load_tokens(text, None)
    with pytest.raises(InputError, match="must be >= 1"):
        load_tokens(text, tok, samples=0)


def test_parquet_missing_column(tmp_path: Path, tok: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"no column 'text' \(columns: body, n\)"):
        load_tokens(tmp_path / "d.parquet", tok)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(InputError, match="not text"):
        load_tokens(tmp_path / "ints.parquet", tok)


BAD_NPY: list[tuple[str, np.ndarray, str]] = [
    ("float", np.zeros((2, 3), dtype=np.float32), "must be integers"),
    ("bool", np.ones((2, 3), dtype=bool), "must be integers"),
    ("1d", np.arange(5), r"non-empty \[N, L\]"),
    ("3d", np.zeros((2, 3, 4), dtype=np.int64), r"non-empty \[N, L\]"),
    ("empty", np.zeros((0, 4), dtype=np.int64), r"non-empty \[N, L\]"),
    ("negative", np.array([[1, -2]]), "negative token id -2"),
    ("huge", np.array([[1, 2**64 - 1]], dtype=np.uint64), "negative token id"),
    ("vocab", np.array([[1, 10_000]]), "outside the vocabulary of 320"),
]


@pytest.mark.parametrize(("name", "array", "match"), BAD_NPY, ids=[b[0] for b in BAD_NPY])
def test_bad_npy(tmp_path: Path, tok: Any, name: str, array: np.ndarray, match: str) -> None:
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    with pytest.raises(InputError, match=match):
        load_tokens(path, tok)


def test_vocab_size_argument_and_no_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, np.array([[1, 99]]))
    assert load_tokens(path, None).n_tokens == 2  # nothing to check the ids against
    assert load_tokens(path, None, vocab_size=100).n_tokens == 2
    with pytest.raises(InputError, match="outside the vocabulary of 99"):
        load_tokens(path, None, vocab_size=99)


def test_text_tokenized_beyond_the_model_vocabulary_is_refused(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "a.txt"
    path.write_text("expert router token layer\n")
    high = int(load_tokens(path, tok, samples=1, seq_len=4).input_ids.max())
    assert load_tokens(path, tok, samples=1, seq_len=4, vocab_size=high + 1).n_tokens == 4
    with pytest.raises(InputError, match=f"token id {high} is outside the vocabulary of {high}"):
        load_tokens(path, tok, samples=1, seq_len=4, vocab_size=high)


def test_bad_safetensors(tmp_path: Path, tok: Any) -> None:
    ids = torch.ones(2, 3, dtype=torch.int64)
    cases = {
        "noids": ({"tokens": ids, "labels": ids.clone()}, r"no 'input_ids' tensor \(tensors: labels, tokens\)"),
        "float": ({"input_ids": ids.float()}, "must be integers"),
        "mask_shape": ({"input_ids": ids, "attention_mask": torch.ones(2, 4, dtype=torch.int64)}, "must match"),
        "mask_values": ({"input_ids": ids, "attention_mask": ids * 2}, "only 0 and 1"),
        "mask_zero": ({"input_ids": ids, "attention_mask": ids * 0}, "no tokens"),
        "mask_float": ({"input_ids": ids, "attention_mask": ids.float()}, "0/1 integers"),
    }
    for name, (tensors, match) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, path)
        with pytest.raises(InputError, match=match):
            load_tokens(path, tok)
    junk = _write(tmp_path / "junk.safetensors", b"not a safetensors file at all")
    with pytest.raises(InputError, match=r"cannot read as \.safetensors"):
        load_tokens(junk, tok)
    with pytest.raises(InputError, match=r"saved as \.safetensors"):
        TokenBatch(ids, ids, "x", 0, 3).save(tmp_path / "t.npy")
