"""The calibration engine end to end: data-parallel runs, resuming, the activation cache on disk, and
the ``calibrate`` command (every kind of data, padding, refusals) feeding ``score``/``prune``/``verify``.

One tiny qwen3_moe checkpoint (3 MoE layers, 8 experts, top-2, vocab 128) and a few short sequences.
Every run here uses one CPU thread: float32 results depend on the thread count (BLAS blocking), and
the exact comparisons below need the same per-token arithmetic in every run.

What the tests prove:

- a 2-process gloo run (torchrun, a real subprocess) gives the moments of 1 process on the same
  samples: each sequence is its own batch, so both runs add the same float64 terms, only in another
  order (rank shares, then all-reduce) -> equal to rtol 1e-12; stats.json records world_size 2 and
  the same token hash; no activation cache is left behind;
- an interrupted run (before a layer, inside a layer, or after a layer but before its statistics are
  recorded; with the cache in the STATS folder or in ``--offload-dir``) leaves a resumable folder,
  and resuming runs each unfinished layer exactly once per batch and writes byte-identical moments
  (stats.json equal except the date and timings); ``--resume`` refuses a finished run, another
  model, other data or another batch size with one line and exit 2, and leaves the folder as it was;
- the activation cache on disk (``--offload-dir``) and in memory give the same moments, and the
  offload folder is left empty;
- ``moeprune calibrate`` reads .npy, .safetensors (with a padding mask), .txt and .jsonl (with the
  model's tokenizer, the last window padded) and never counts padding (Σ_j N_j = top_k × counted
  tokens in every MoE layer); refuses an existing -o, ids outside the vocabulary, an unreachable hub
  dataset, and text without a tokenizer, each with one line and exit 2; its STATS folder drives
  ``score --criterion man`` and ``prune --criterion msan --ratio 0.25``, and ``verify`` passes.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers import WORDS, one_line_error, save_word_tokenizer
from moeprune.calib import engine, memory
from moeprune.calib.data import TokenBatch, load_tokens
from moeprune.calib.engine import calibrate
from moeprune.calib.skeleton import Skeleton
from moeprune.errors import InputError
from moeprune.scoring.stats import RoutingStats

N_SEQ, SEQ_LEN, VOCAB, TOP_K, N_LAYERS, BATCH = 5, 16, 128, 2, 3, 2
N_BATCHES = 3  # ceil(N_SEQ / BATCH)


# --- fixtures ----------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny: Callable[..., Path]) -> Path:
    return tiny("qwen3_moe")


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, VOCAB, size=(N_SEQ, SEQ_LEN)))
    return path


@pytest.fixture(scope="module")
def tokens(ids: Path) -> TokenBatch:
    return load_tokens(ids, None, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def reference(model: Path, tokens: TokenBatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The STATS folder of an uninterrupted run (batch size 2: 3 batches, the last one short)."""
    out = tmp_path_factory.mktemp("reference") / "stats"
    calibrate(model, tokens, out=out, batch_size=BATCH)
    return out


@pytest.fixture(scope="module")
def with_tokenizer(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny checkpoint with a word-level tokenizer (ids < 128; eos 1, pad 0)."""
    copy = tmp_path_factory.mktemp("tokenized") / "model"
    shutil.copytree(model, copy)
    save_word_tokenizer(copy, WORDS)
    return copy


# --- helpers -----------------------------------------------------------------------------------


def moments(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "moments.safetensors"))["moments"]  # (layers, E, 3, 3) float64


def meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "stats.json").read_text())


def without_timing(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("date", "seconds_per_layer")}


def safetensors_content(path: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """(metadata, tensor bytes): what a .safetensors file holds. (The files themselves need not be
    byte-identical: safetensors writes its metadata map in a random order.)"""
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118


def assert_same_run(got: Path, want: Path) -> None:
    """Bit-identical moments, and the same stats.json but for the date and the timings."""
    assert safetensors_content(got / "moments.safetensors") == safetensors_content(want / "moments.safetensors")
    assert without_timing(meta(got)) == without_timing(meta(want))
    assert sorted(meta(got)["seconds_per_layer"]) == sorted(meta(want)["seconds_per_layer"])
    assert not (got / engine.CACHE).exists()


def assert_counts(folder: Path, n_tokens: int) -> None:
    """Every MoE layer routed each counted token to exactly top_k experts."""
    m = moments(folder)
    assert m.shape == (N_LAYERS, 8, 3, 3)
    for layer in range(N_LAYERS):
        assert m[layer, :, 0, 0].sum().item() == TOP_K * n_tokens


class Spy:
    """Wraps ``Skeleton.load_layer``: records the layers loaded and counts each layer's forward
    calls; ``stop_before`` / ``stop_in=(layer, call)`` raise KeyboardInterrupt like a Ctrl-C."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_before: int | None = None, stop_in: Any = None):
        self.loaded: list[int] = []
        self.calls: dict[int, int] = {}
        self.seen: dict[int, list[str]] = {}  # layer -> files of the offload cache when it is loaded
        self.offload: Path | None = None
        original = Skeleton.load_layer

        def load_layer(skel: Skeleton, i: int) -> torch.nn.Module:
            if i == stop_before:
                raise KeyboardInterrupt
            layer = original(skel, i)
            self.loaded.append(i)
            if self.offload is not None:
                self.seen[i] = sorted(p.relative_to(self.offload).as_posix() for p in self.offload.rglob("*.*"))

            def count(module: torch.nn.Module, args: Any, kwargs: Any) -> None:
                self.calls[i] = self.calls.get(i, 0) + 1
                if stop_in == (i, self.calls[i]):
                    raise KeyboardInterrupt

            layer.register_forward_pre_hook(count, with_kwargs=True)
            return layer

        monkeypatch.setattr(Skeleton, "load_layer", load_layer)


def interrupted(
    model: Path, tokens: TokenBatch, out: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> dict[str, Any]:
    """Run until the KeyboardInterrupt ``kwargs`` ask for; return the partial folder's stats.json."""
    offload = kwargs.pop("offload_dir", None)
    with monkeypatch.context() as m:
        Spy(m, **kwargs)
        with pytest.raises(KeyboardInterrupt):
            calibrate(model, tokens, out=out, batch_size=BATCH, offload_dir=offload)
    return meta(out)


def resumed(model: Path, tokens: TokenBatch, out: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Spy:
    with monkeypatch.context() as m:
        spy = Spy(m)
        calibrate(model, tokens, out=out, batch_size=BATCH, resume=True, **kwargs)
    return spy


# --- data-parallel -----------------------------------------------------------------------------


def test_two_process_gloo_run_equals_one_process(model: Path, ids: Path, cli: Any, tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    args = ["calibrate", str(model), "--data", str(ids), "--dtype", "float32", "--batch-size", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(*args, "-o", str(one)).code == 0

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*run, "-m", "moeprune", "-q", *args, "-o", str(two)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    m1, m2 = meta(one), meta(two)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m2["data"] == m1["data"] and m2["data"]["sha256"] == load_tokens(ids, None).sha256()
    assert m2["n_tokens"] == m1["n_tokens"] == N_SEQ * SEQ_LEN
    assert m2["finished_layers"] == m1["finished_layers"] == list(range(N_LAYERS))
    assert load_file(str(two / "moments.safetensors"))["layers"].tolist() == list(range(N_LAYERS))
    # Ranks took 3 and 2 of the 5 sequences: overlapping or missing shares would change every N_j.
    torch.testing.assert_close(moments(two), moments(one), rtol=1e-12, atol=0)
    assert_counts(two, N_SEQ * SEQ_LEN)
    assert not (two / engine.CACHE).exists()


# --- resume ------------------------------------------------------------------------------------


def test_resume_after_an_interrupt_gives_the_same_file(
    model: Path,
    tokens: TokenBatch,
    reference: Path,
    ids: Path,
    tiny: Callable[..., Path],
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "stats"
    partial = interrupted(model, tokens, out, monkeypatch, stop_before=2)
    assert partial["last_layer"] == 1 and partial["finished_layers"] == [0, 1]
    cache = out / engine.CACHE / "rank0"
    assert sorted(p.name for p in cache.iterdir()) == ["input-2"]  # the inputs of the first unfinished layer
    assert sorted(p.name for p in (cache / "input-2").iterdir()) == [f"{b}.safetensors" for b in range(N_BATCHES)]
    assert torch.equal(moments(out)[:2], moments(reference)[:2])
    assert not moments(out)[2].any()

    # A partial folder is not statistics yet; --resume with anything else refuses and changes nothing.
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    one_line_error(cli("score", str(model), "--stats", str(out), "-c", "man", "-o", str(tmp_path / "s.json")), "resume")
    common = ["--dtype", "float32", "--resume", "-o", str(out)]
    other_ids = tmp_path / "other.npy"
    np.save(other_ids, np.load(ids)[::-1])
    one_line_error(cli("calibrate", str(model), "--data", str(other_ids), "--batch-size", "2", *common), "another data")
    other = str(tiny("qwen3_moe", seed=1))
    one_line_error(cli("calibrate", other, "--data", str(ids), "--batch-size", "2", *common), "another model")
    one_line_error(cli("calibrate", str(model), "--data", str(ids), "--batch-size", "3", *common), "another batch size")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    spy = resumed(model, tokens, out, monkeypatch)
    assert spy.loaded == [2] and spy.calls == {2: N_BATCHES}
    assert_same_run(out, reference)

    one_line_error(cli("calibrate", str(model), "--data", str(ids), "--batch-size", "2", *common), "already finished")
    missing = ["--resume", "-o", str(tmp_path / "nothing")]
    one_line_error(cli("calibrate", str(model), "--data", str(ids), "--dtype", "float32", *missing), "--resume")


def test_resume_after_an_interrupt_inside_a_layer(
    model: Path, tokens: TokenBatch, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "stats"
    partial = interrupted(model, tokens, out, monkeypatch, stop_in=(1, 2))  # layer 1, second batch
    assert partial["last_layer"] == 0 and partial["finished_layers"] == [0]
    spy = resumed(model, tokens, out, monkeypatch)
    assert spy.loaded == [1, 2] and spy.calls == {1: N_BATCHES, 2: N_BATCHES}
    assert_same_run(out, reference)


def test_resume_after_an_interrupt_before_a_layer_is_recorded(
    model: Path, tokens: TokenBatch, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layer 1 ran on every batch, but the interrupt came before stats.json said so (e.g. a Ctrl-C
    while waiting in the all-reduce): the resumed run must still find layer 1's inputs."""
    out = tmp_path / "stats"
    save = RoutingStats.save

    def save_or_stop(self: RoutingStats, folder: Path) -> None:
        if self.meta.get("last_layer") == 1:
            raise KeyboardInterrupt
        save(self, folder)

    with monkeypatch.context() as m:
        m.setattr(RoutingStats, "save", save_or_stop)
        with pytest.raises(KeyboardInterrupt):
            calibrate(model, tokens, out=out, batch_size=BATCH)
    assert meta(out)["last_layer"] == 0
    spy = resumed(model, tokens, out, monkeypatch)
    assert spy.loaded == [1, 2] and spy.calls == {1: N_BATCHES, 2: N_BATCHES}
    assert_same_run(out, reference)


# --- the activation cache on disk ----------------------------------------------------------------


def test_offload_dir_gives_the_same_moments_and_is_left_clean(
    model: Path, tokens: TokenBatch, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_memory = calibrate(model, tokens, batch_size=BATCH)
    assert torch.equal(in_memory.moments, moments(reference))

    out, offload = tmp_path / "stats", tmp_path / "offload"
    with monkeypatch.context() as m:
        spy = Spy(m)
        spy.offload = offload
        calibrate(model, tokens, out=out, batch_size=BATCH, offload_dir=offload)
    # While layer i runs, the cache holds its inputs, in the offload folder (not in the STATS folder).
    for i in range(N_LAYERS):
        assert [f for f in spy.seen[i] if f.startswith(f"rank0/input-{i}/")] == [
            f"rank0/input-{i}/{b}.safetensors" for b in range(N_BATCHES)
        ]
    assert_same_run(out, reference)
    assert offload.is_dir() and not any(offload.iterdir())


def test_resume_with_offload_dir(
    model: Path, tokens: TokenBatch, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, offload = tmp_path / "stats", tmp_path / "offload"
    partial = interrupted(model, tokens, out, monkeypatch, stop_before=2, offload_dir=offload)
    assert partial["last_layer"] == 1 and not (out / engine.CACHE).exists()
    assert len(list((offload / "rank0" / "input-2").iterdir())) == N_BATCHES
    spy = resumed(model, tokens, out, monkeypatch, offload_dir=offload)
    assert spy.loaded == [2]
    assert_same_run(out, reference)
    assert not any(offload.iterdir())


# --- the command line ----------------------------------------------------------------------------


def test_cli_data_sources_padding_and_downstream_commands(
    model: Path, with_tokenizer: Path, cli: Any, tmp_path: Path
) -> None:
    common = ["--dtype", "float32", "--seq-len", str(SEQ_LEN)]

    # .txt: documents separated by blank lines, packed into 3 full windows.
    rng = np.random.default_rng(1)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(8)) + "\n")
    txt_stats = tmp_path / "txt"
    r = cli("calibrate", str(with_tokenizer), "--data", str(text), "--samples", "3", *common, "-o", str(txt_stats))
    assert r.code == 0, r
    data = meta(txt_stats)["data"]
    assert (data["samples"], data["n_tokens"]) == (3, 3 * SEQ_LEN)
    assert_counts(txt_stats, 3 * SEQ_LEN)

    # .jsonl that runs out: 2 documents of 10 words + EOS = 22 tokens -> 2 windows, the last padded.
    records = tmp_path / "docs.jsonl"
    records.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, size=10))}) + "\n" for _ in range(2)))
    jsonl_stats = tmp_path / "jsonl"
    r = cli("calibrate", str(with_tokenizer), "--data", str(records), "--samples", "3", *common, "-o", str(jsonl_stats))
    assert r.code == 0, r
    m = meta(jsonl_stats)
    assert (m["data"]["requested_samples"], m["data"]["samples"], m["n_tokens"]) == (3, 2, 22)
    assert_counts(jsonl_stats, 22)

    # .safetensors input_ids with an attention mask: the padded positions are never counted.
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, VOCAB, size=(3, SEQ_LEN)))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    tensors = tmp_path / "ids.safetensors"
    save_file({"input_ids": ids, "attention_mask": mask}, str(tensors))
    st_stats = tmp_path / "st"
    assert cli("calibrate", str(model), "--data", str(tensors), *common, "-o", str(st_stats)).code == 0
    assert meta(st_stats)["n_tokens"] == int(mask.sum()) == 3 * SEQ_LEN - 19
    assert_counts(st_stats, int(mask.sum()))

    # The statistics drive the statistics criteria, and the pruned model passes verify.
    scores = tmp_path / "scores.json"
    r = cli("score", str(model), "--stats", str(txt_stats), "--criterion", "man", "-o", str(scores))
    assert r.code == 0, r
    assert json.loads(scores.read_text())["criterion"] == "man"
    pruned = tmp_path / "pruned"
    r = cli("prune", str(with_tokenizer), "--stats", str(txt_stats), "-c", "msan", "--ratio", "0.25", "-o", str(pruned))
    assert r.code == 0, r
    assert json.loads((pruned / "config.json").read_text())["num_local_experts"] == 6
    assert (pruned / "tokenizer.json").is_file()
    r = cli("verify", str(with_tokenizer), str(pruned))
    assert r.code == 0 and r.out.startswith("OK"), r


def test_cli_refusals(
    model: Path, ids: Path, with_tokenizer: Path, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["--dtype", "float32", "--samples", "2", "--seq-len", "8"]

    # An existing -o is neither reused nor replaced unless asked.
    out = tmp_path / "stats"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(cli("calibrate", str(model), "--data", str(ids), *common, "-o", str(out)), "already exists")
    assert (out / "keep.txt").read_text() == "mine"
    assert cli("calibrate", str(model), "--data", str(ids), *common, "--overwrite", "-o", str(out)).code == 0
    assert sorted(p.name for p in out.iterdir()) == ["moments.safetensors", "stats.json"]

    # Token ids the model's embedding does not have.
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((2, 8), VOCAB, dtype=np.int64))
    one_line_error(cli("calibrate", str(model), "--data", str(bad), *common, "-o", str(tmp_path / "a")), "vocabulary")

    # Text data and a model without a tokenizer.
    text = tmp_path / "corpus.txt"
    text.write_text("expert router token layer\n")
    one_line_error(cli("calibrate", str(model), "--data", str(text), *common, "-o", str(tmp_path / "b")), "tokenizer")

    # A hub dataset id, offline (datasets may already be imported: set its module flags too).
    import datasets.config
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
        monkeypatch.setattr(datasets.config, name, True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    r = cli("calibrate", str(with_tokenizer), "--data", "someorg/no-such-data", *common, "-o", str(tmp_path / "c"))
    one_line_error(r, "someorg/no-such-data", "could not load the Hugging Face dataset")
    assert not any((tmp_path / name).exists() for name in "abc")


# --- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_matches_cpu(model: Path, tokens: TokenBatch, reference: Path, tmp_path: Path) -> None:
    """The same run on the GPU: identical routing counts, float32 moments within GPU rounding, and a
    bfloat16 run that still routes every counted token to top_k experts in every layer."""
    calibrate(model, tokens, out=tmp_path / "gpu", batch_size=BATCH, device="cuda")
    got, want = moments(tmp_path / "gpu"), moments(reference)
    assert torch.equal(got[..., 0, 0], want[..., 0, 0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    calibrate(model, tokens, out=tmp_path / "bf16", batch_size=BATCH, device="cuda", dtype="bfloat16")
    assert_counts(tmp_path / "bf16", N_SEQ * SEQ_LEN)


def test_cli_dtype_auto_is_float32_on_cpu(model: Path, ids: Path, cli: Any, tmp_path: Path) -> None:
    """Without --dtype the CLI computes in float32 on CPU (bfloat16 is the choice on CUDA)."""
    r = cli("calibrate", str(model), "--data", str(ids), "-o", str(tmp_path / "stats"))
    assert r.code == 0, r
    assert meta(tmp_path / "stats")["dtype"] == "float32"
    assert_counts(tmp_path / "stats", N_SEQ * SEQ_LEN)


_FREE_SCRIPT = """
import ctypes, sys
from contextlib import nullcontext
from moeprune.calib.memory import mapped_allocations, release_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
MB = 1 << 20
mode = sys.argv[1]
libc.free(libc.malloc(4 * MB))  # glibc raises its mmap threshold to this block's size
with mapped_allocations() if mode == "loading" else nullcontext():
    blocks = [libc.malloc(MB) for _ in range(200)]  # a layer's tensors, say
    for b in blocks:
        ctypes.memset(b, 1, MB)
    pin = libc.malloc(MB // 2)  # something still alive above them (too big for a free small chunk)
    ctypes.memset(pin, 1, MB // 2)
    before = rss()
    for b in blocks:
        libc.free(b)
    if mode == "trim":
        assert release_freed_memory()
    print(before - rss())  # inside the context: before its closing trim
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.platform != "linux", reason="glibc behaviour")
def test_freed_layers_go_back_to_the_os() -> None:
    """200 MB of freed 1 MB blocks under a live allocation stay in glibc's heap ("off"); calibrate
    trims the heap after each layer ("trim") and maps every block of a layer load on its own, so
    that what the load frees goes back at once ("loading")."""

    def released(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FREE_SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert released("off") < 10 << 20  # the default behaviour this works around
    assert released("trim") > 190 << 20
    assert released("loading") > 190 << 20


def test_every_layer_load_is_mapped_and_every_freed_layer_trimmed(
    model: Path, tokens: TokenBatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(memory, "_mallopt_threshold", lambda n: calls.append(("threshold", n)) or True)
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(("trim",)) or True)
    calibrate(model, tokens, batch_size=BATCH)
    load = [("threshold", 128 << 10), ("threshold", 32 << 20), ("trim",)]
    load_then_free = [*load, ("trim",)]  # first what lies outside the layers (freed: the embeddings), then each layer
    assert calls == load_then_free * (1 + N_LAYERS)


# --- decoder layers that pass state on to later layers (calib/carry.py) --------------------------


def _gemma4_text(**over: Any) -> dict[str, Any]:
    from moeprune.arch import FAMILIES

    return {"text_config": {**FAMILIES["gemma4"].tiny["text_config"], **over}}  # type: ignore[dict-item]


CARRY: dict[str, tuple[dict[str, Any], set[str]]] = {
    # GLM-5: layer 2's indexer is "shared": it attends to the top-k tokens layer 1's indexer chose
    # (returned as (hidden, topk_indices), taken as prev_topk_indices); index_topk 8 < the 24 tokens.
    "glm_moe_dsa": ({"indexer_types": ["full", "full", "shared"]}, {"out1.1"}),
    # Kolibri 1.1: layer 1 is an indexer (a new token pool), layer 2 reuses its pool (index_pool) and
    # reads its keys and values from shared_kv_states; pool 8, top-k 4 + 2 local + 1 sink < 24 tokens.
    "kolibri1_1": (
        {
            "layer_types": ["sliding_attention", "indexed_attention", "indexed_attention"],
            "index_layers": [1],
            "kv_source_layers": [0, 1, 1],
            "index_pool_size": 8,
            "index_compression": 4,
            "index_topk": 4,
            "index_num_local_tokens": 2,
            "index_num_sink_tokens": 1,
        },
        {"out1.1", "shared0"},
    ),
    # Gemma 4: per_layer_input, a positional argument of every layer, and layer 2 reusing layer 0's
    # keys and values (num_kv_shared_layers) through shared_kv_states.
    "gemma4": (
        _gemma4_text(
            hidden_size_per_layer_input=16,
            num_kv_shared_layers=1,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
        {"shared0"},
    ),
}
"""family: (tiny config overrides whose layers pass state on, state keys a later layer must read)."""


@pytest.mark.parametrize("family", sorted(CARRY))
def test_state_passed_between_layers_is_carried(
    family: str, tiny: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration equals the full-model reference (test_family_specifics.py's check) on tiny configs
    where later layers really read what earlier ones pass on, and that state is in the cache."""
    from moeprune.calib import carry
    from test_calib_reference import ATOL, RTOL, build_reference, token_batch

    overrides, keys = CARRY[family]
    path = tiny(family, overrides=overrides)
    ref = build_reference(path, family, token_batch())
    seen: set[str] = set()
    passed_on = carry.passed_on

    def spy(*args: Any) -> Any:
        hidden, state = passed_on(*args)
        seen.update(state)
        return hidden, state

    monkeypatch.setattr(carry, "passed_on", spy)
    stats = calibrate(path, token_batch(), batch_size=2)
    assert keys <= seen
    assert sorted(stats.layers) == sorted(ref.layers)
    for i, layer in ref.layers.items():
        got, want = stats.layer(i), layer.moments(ref.n_experts)
        assert torch.equal(got[:, 0, 0], want[:, 0, 0]), f"layer {i}: N_j"
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"layer {i}")


@pytest.mark.parametrize("offload", [True, False], ids=["offload-dir", "stats-folder"])
def test_resume_carries_the_state_a_later_layer_reads(
    offload: bool, tiny: Callable[..., Path], tokens: TokenBatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GLM-5 with a shared indexer on layer 2: interrupted before layer 2 (the cache in --offload-dir)
    or inside it (the cache in the STATS folder), the resumed run reads layer 1's top-k tokens from
    the cache and writes the moments of an uninterrupted run, which equal those of a run whose cache
    stays in memory."""
    path = tiny("glm_moe_dsa", overrides=CARRY["glm_moe_dsa"][0])
    want = tmp_path / "want"
    calibrate(path, tokens, out=want, batch_size=BATCH)
    assert torch.equal(calibrate(path, tokens, batch_size=BATCH).moments, moments(want))

    out, folder = tmp_path / "stats", tmp_path / "offload"
    kwargs: dict[str, Any] = {"stop_before": 2, "offload_dir": folder} if offload else {"stop_in": (2, 2)}
    interrupted(path, tokens, out, monkeypatch, **kwargs)
    cache = (folder if offload else out / engine.CACHE) / "rank0" / "input-2"
    with safe_open(str(cache / "0.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"]) == {"out1.1": {"tensor": "state.1"}}
        topk = f.get_tensor("state.1")  # layer 1's top-k tokens per query: (batch, seq, index_topk)
    assert topk.shape == (BATCH, SEQ_LEN, 8) and not topk.is_floating_point()
    spy = resumed(path, tokens, out, monkeypatch, **({"offload_dir": folder} if offload else {}))
    assert spy.loaded == [2] and spy.calls == {2: N_BATCHES}
    assert_same_run(out, want)


def test_how_many_outputs_the_model_takes_is_read_at_the_call() -> None:
    """The capture reads, in the caller's own code, how many values the model unpacks from a decoder
    layer (not the layer's return annotation, which several transformers models leave stale)."""
    from moeprune.calib import skeleton

    seen: list[int] = []

    class Layer(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            seen.append(skeleton._unpacked_by_caller(sys._getframe(1), self))
            return (x, None) if len(seen) == 1 else x

    layer = Layer()
    _hidden, _extra = layer(1)  # unpacks two values
    _whole = layer(2)  # keeps the result whole
    assert seen == [2, 1]

    def starred() -> None:
        _hidden, *_rest = layer(3)

    with pytest.raises(InputError, match="starred"):
        starred()


def test_carried_state_round_trips_through_the_cache_file_and_refuses_what_it_cannot_store() -> None:
    from moeprune.calib import carry
    from moeprune.calib.skeleton import Carried, Shared

    k, v = torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    state = {
        "out1.1": torch.arange(12, dtype=torch.int32).view(1, 3, 4),
        "out1.2": None,
        "shared0": {"1": (k.transpose(-1, -2), v), "sliding": (k, k)},  # a view; one tensor twice
    }
    tensors: dict[str, torch.Tensor] = {"h": torch.zeros(1)}
    structure = json.loads(json.dumps(carry.flatten(state, tensors)))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"carry-{os.getpid()}.safetensors"
    try:
        save_file(tensors, str(path))
        back = carry.unflatten(structure, load_file(str(path)))
    finally:
        path.unlink(missing_ok=True)
    assert back["out1.2"] is None and torch.equal(back["out1.1"], state["out1.1"])
    assert back["out1.1"].dtype == torch.int32
    assert torch.equal(back["shared0"]["1"][0], k.transpose(-1, -2)) and torch.equal(back["shared0"]["sliding"][1], k)
    with pytest.raises(InputError, match="cannot store"):
        carry.flatten({"out0.1": object()}, {})

    # what a layer passes on: only what later layers read; a mismatch with what the model takes is refused
    mapping: dict[str, Any] = {}
    layers = [{"m": Shared("shared0", mapping, {})}, {"prev": Carried(0, 1), "m": Shared("shared0", mapping, {})}, {}]
    mapping["0"] = (k, v)
    hidden, kept = carry.passed_on((torch.ones(1), torch.zeros(1), torch.ones(2)), 3, layers, 0, {"stale": 1})
    assert torch.equal(hidden, torch.ones(1))
    assert sorted(kept) == ["out0.1", "shared0"] and torch.equal(kept["out0.1"], torch.zeros(1)) and not mapping
    assert carry.resolve(layers[1], kept, 1)["m"] is mapping and torch.equal(mapping["0"][0], k)
    with pytest.raises(InputError, match="returned 2 values where the model's forward takes 3"):
        carry.passed_on((torch.ones(1), torch.zeros(1)), 3, layers, 0, {})
    with pytest.raises(InputError, match="an output of layer 0"):
        carry.resolve(layers[1], {}, 1)
