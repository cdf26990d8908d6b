"""Trust at the edges: a generated matrix of malformed, hostile and mismatched inputs (issue 14).

Every case drives one bad value through one command's entry, in-process (``moeprune.cli.main``),
and asserts what a user relies on:

* exit code 2 and exactly one ``error: ...`` line on stderr, no traceback;
* every input (checkpoint, pruned folder, scores, STATS, tokens) byte for byte unchanged;
* nothing left behind: the folders holding the inputs and the output list the same entries
  before and after.

Axes of the matrix (``MATRIX_SIZE`` counts the cases):

* every config.json field the family registry reads (count and top-k keys, layer rules, groups,
  ``model_type``, ``text_config``, ``vocab_size`` ...) x {missing, str, list, dict, bool, negative,
  zero, fraction, huge float, 2**70, inf, NaN}, through inspect, score, prune, prune --dry-run,
  calibrate, verify and eval; values a family legitimately accepts run through inspect and
  --dry-run and must succeed;
* safetensors headers (``__metadata__`` not a map of strings, shapes negative/huge/float/str/bool
  or different from their siblings', offsets of the wrong type, overlapping, dtypes), the index
  (``weight_map`` of the wrong type, shards outside the folder, a FIFO, a directory, /dev/zero);
* ``moeprune_plan.json`` (verify, report), scores.json in its single and ``criteria`` forms (prune),
  the STATS folder's ``stats.json`` and moments (score, prune, calibrate --resume);
* JSON nested 200 000 levels deep in each of those files;
* output paths into an input (equal to it, inside it, containing it, a symlink to it, one of its
  files, ``--offload-dir`` inside it) for score, calibrate, prune, eval and report, with and without
  ``--overwrite``;
* token files that lie about their size or hold the wrong dtype, rank or values.

Each case runs under a watchdog (a hang fails after ``TIMEOUT`` seconds; a FIFO that a native
reader blocks on is released from another process) and a bounded address space, so an unchecked
size cannot take the machine's memory. Cases whose fix belongs to another module and has not landed
are listed in ``KNOWN_OPEN`` and run as strict xfails: when one is fixed it fails until its line goes.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import snapshot
from moeprune.cli import main

TIMEOUT = 20
"""Seconds a case may run before it counts as a hang."""
HEADROOM = 3 << 30
"""Address space a case may add to the test process (an unchecked size fails, not the machine)."""
DEPTH = 200_000

# --- running one case -------------------------------------------------------------------------------


class Hung(BaseException):
    """Raised by the watchdog in the main thread when a case runs past TIMEOUT."""


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def run(capsys: pytest.CaptureFixture[str], args: list[str], scratch: list[Path] | None = None) -> Outcome:
    """``moeprune -q ARGS`` in-process; an escaping exception becomes code ``'raised'``. After
    TIMEOUT seconds a watchdog raises `Hung` in the main thread and unblocks FIFOs in ``scratch``."""
    import subprocess

    def alarm(signum: int, frame: object) -> None:
        raise Hung(f"no answer within {TIMEOUT} s")

    # a native open() of a FIFO retries on EINTR and holds the GIL: only another process can end
    # it, by opening the FIFO for writing (the reader then sees end-of-file)
    fifos = [str(p) for folder in scratch or [] for p in folder.rglob("*") if p.is_fifo()]
    script = f'sleep {TIMEOUT}; for f in "$@"; do timeout 1 sh -c \': > "$1"\' _ "$f"; done'
    release = subprocess.Popen(["sh", "-c", script, "_", *fifos], start_new_session=True) if fifos else None
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + HEADROOM
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(TIMEOUT)
    code: int | str = 0
    raised = ""
    try:
        main(["-q", *args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (Exception, Hung) as e:  # any escape is a finding, reported as such
        code, raised = "raised", f"{type(e).__name__}: {str(e)[:200]}"
    finally:
        signal.alarm(0)
        if release is not None:
            os.killpg(release.pid, signal.SIGKILL)
            release.wait()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err + (f"Traceback (escaped): {raised}\n" if raised else ""))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@dataclass
class Watch:
    """Inputs to keep unchanged and folders in which nothing may appear or disappear."""

    inputs: list[Path]
    folders: list[Path]
    before: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.before = self.state()

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for p in self.inputs:
            state[f"input {p}"] = snapshot(p) if p.is_dir() else _file_hash(p)
        for f in self.folders:
            state[f"folder {f}"] = listing(f)
        return state

    def changes(self) -> list[str]:
        after = self.state()
        out = []
        for key, was in self.before.items():
            now = after[key]
            if now == was:
                continue
            if isinstance(was, dict):
                touched = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
                out.append(f"{key} changed: {touched[:4]}")
            elif isinstance(was, list):
                out.append(f"{key}: left {sorted(set(now) - set(was))}, lost {sorted(set(was) - set(now))}")
            else:
                out.append(f"{key} changed")
        return out


def _file_hash(p: Path) -> str:
    import hashlib

    if p.is_symlink() or not p.exists():
        return f"<{os.readlink(p) if p.is_symlink() else 'absent'}>"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<special>"


def describe(r: Outcome, changes: list[str]) -> str:
    lines = r.err.strip().splitlines()
    last = lines[-1] if lines else "(no stderr)"
    return f"exit {r.code}: {last[:300]} | {len(lines)} stderr lines | {'; '.join(changes) or 'inputs intact'}"


def assert_refused(r: Outcome, watch: Watch) -> None:
    changes = watch.changes()
    ok = (
        r.code == 2
        and "Traceback" not in r.err
        and r.err.endswith("\n")
        and r.err.count("\n") == 1
        and r.err.startswith("error: ")
        and "no such option" not in r.err
        and not changes
    )
    assert ok, describe(r, changes)


def assert_accepted(r: Outcome, watch: Watch) -> None:
    changes = [c for c in watch.changes() if c.startswith("input")]
    assert r.code == 0 and "Traceback" not in r.err and not changes, describe(r, changes)


def assert_clean(r: Outcome, watch: Watch) -> None:
    """Either outcome is right; a failure is one line and changes nothing."""
    if r.code == 0:
        assert_accepted(r, watch)
    else:
        assert_refused(r, watch)


# --- cases still open (xfail, strict: a fix makes them pass and the marker must go) ----------------

_OPEN: dict[str, list[str]] = {}
KNOWN_OPEN = {name: reason for reason, names in _OPEN.items() for name in names}
"""Findings (/work/briefs/F-findings.md) whose fix lives in another owner's module."""


@pytest.fixture(autouse=True)
def _known_open(request: pytest.FixtureRequest) -> None:
    reason = KNOWN_OPEN.get(request.node.name)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


# --- shared inputs, built once per module ----------------------------------------------------------

FAMILIES = (
    "qwen3_moe",
    "qwen2_moe",
    "deepseek_v3",
    "deepseek_v2",
    "ernie4_5_moe",
    "hunyuan_v1_moe",
    "jamba",
    "llama4_text",
    "lfm2_moe",
    "qwen3_5_moe",
    "kimi_linear",
    "deepseek_v32",
    "gemma4",
)


@dataclass
class Env:
    root: Path
    tiny: Callable[..., Path]
    tokens: Path
    pruned: dict[str, Path] = field(default_factory=dict)
    _sharded: Path | None = None
    _stats: Path | None = None
    _scores: Path | None = None

    def model(self, family: str) -> Path:
        return self.tiny(family)

    def pruned_of(self, family: str) -> Path:
        if family not in self.pruned:
            from moeprune.api import prune

            out = self.root / "pruned" / family
            out.parent.mkdir(exist_ok=True)
            prune(self.model(family), out, "aimer", n_prune=2)
            self.pruned[family] = out
        return self.pruned[family]

    @property
    def sharded(self) -> Path:
        if self._sharded is None:
            self._sharded = self.tiny("qwen3_moe", max_shard_size="300KB")
        return self._sharded

    @property
    def stats(self) -> Path:
        """A finished STATS folder of the qwen3_moe model (synthetic moments, real metadata)."""
        if self._stats is None:
            import torch

            from moeprune.api import open_model
            from moeprune.provenance import fingerprint as model_fingerprint
            from moeprune.scoring.stats import RoutingStats

            ckpt, moe = open_model(self.model("qwen3_moe"))
            with ckpt:
                layers = [layer.index for layer in moe.layers]
                gen = torch.Generator().manual_seed(0)
                m = torch.rand(len(layers), moe.n_experts, 3, 3, generator=gen, dtype=torch.float64) * 10
                m[:, :, 0, 0] = torch.randint(1, 50, (len(layers), moe.n_experts), generator=gen).double()
                meta = {
                    "family": moe.family.model_type,
                    "model": str(ckpt.path),
                    "model_fingerprint": model_fingerprint(ckpt, moe),
                    "finished_layers": layers,
                    "n_tokens": 32,
                    "dtype": "float32",
                    "batch_size": 2,
                    "world_size": 1,
                }
            self._stats = self.root / "stats"
            RoutingStats(layers, m, meta).save(self._stats)
        return self._stats

    @property
    def scores(self) -> dict[str, Any]:
        if self._scores is None:
            from moeprune.api import score

            self._scores = self.root / "scores.json"
            self._scores.write_text(json.dumps(score(self.model("qwen3_moe"), "aimer")["aimer"].to_json()))
        return json.loads(self._scores.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny: Callable[..., Path]) -> Env:
    root = tmp_path_factory.mktemp("edges")
    tokens = root / "tokens.npy"
    np.save(tokens, (np.arange(32, dtype=np.int64).reshape(2, 16) * 7) % 128)
    return Env(root, tiny, tokens)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# --- commands ------------------------------------------------------------------------------------

Paths = dict[str, Path]
"""Inputs of a case by role: model, pruned, tokens, scores, stats, run."""


def _cmd_inspect(p: Paths, out: Path) -> list[str]:
    return ["inspect", str(p["model"])]


def _cmd_score(p: Paths, out: Path) -> list[str]:
    return ["score", str(p["model"]), "-o", str(out / "scores.json")]


def _cmd_prune(p: Paths, out: Path) -> list[str]:
    return ["prune", str(p["model"]), "--prune", "2", "-o", str(out / "pruned")]


def _cmd_dry_run(p: Paths, out: Path) -> list[str]:
    return ["prune", str(p["model"]), "--prune", "2", "--dry-run", "-o", str(out / "pruned")]


def _cmd_calibrate(p: Paths, out: Path) -> list[str]:
    return ["calibrate", str(p["model"]), "--data", str(p["tokens"]), "--batch-size", "2", "-o", str(out / "stats")]


def _cmd_verify(p: Paths, out: Path) -> list[str]:
    return ["verify", str(p["model"]), str(p["pruned"])]


def _cmd_eval(p: Paths, out: Path) -> list[str]:
    return ["eval", str(p["model"]), "--ppl", str(p["tokens"]), "--batch-size", "2", "-o", str(out / "eval.json")]


MODEL_COMMANDS: dict[str, Callable[[Paths, Path], list[str]]] = {
    "inspect": _cmd_inspect,
    "score": _cmd_score,
    "prune": _cmd_prune,
    "dry-run": _cmd_dry_run,
    "calibrate": _cmd_calibrate,
    "verify": _cmd_verify,
    "eval": _cmd_eval,
}
"""Every command that reads a checkpoint's config and headers."""


def model_paths(env: Env, family: str, model: Path) -> Paths:
    return {"model": model, "pruned": env.pruned_of(family), "tokens": env.tokens}


def check(capsys: pytest.CaptureFixture[str], args: list[str], watch: Watch, expect: str) -> Outcome:
    r = run(capsys, args, [p for p in watch.inputs if p.is_dir()] + watch.folders)
    {"refused": assert_refused, "accepted": assert_accepted, "either": assert_clean}[expect](r, watch)
    return r


def watch_for(paths: Paths, out: Path, *extra: Path) -> Watch:
    inputs = list(dict.fromkeys(paths.values()))
    folders = list(dict.fromkeys([out, *(p.parent for p in inputs), *extra]))
    return Watch(inputs, folders)


# --- 1. config.json fields ----------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")
INT_CLASSES: dict[str, Any] = {
    "str": "two",
    "list": [2],
    "dict": {"value": 2},
    "bool": True,
    "negative": -2,
    "zero": 0,
    "fraction": 2.5,
    "huge": 1e30,
    "2**70": 2**70,
    "inf": INF,
    "nan": NAN,
}
LIST_CLASSES: dict[str, Any] = {
    "str": "0",
    "int": 0,
    "dict": {"0": 0},
    "bool": True,
    "item-str": ["0"],
    "item-bool": [True],
    "item-negative": [-1],
    "item-fraction": [0.5],
    "item-2**70": [2**70],
    "item-inf": [INF],
    "item-nan": [NAN],
    "item-list": [[0]],
}
STR_CLASSES: dict[str, Any] = {
    "int": 3,
    "list": ["qwen3_moe"],
    "dict": {"model_type": "qwen3_moe"},
    "bool": True,
    "null": None,
    "empty": "",
    "nan": NAN,
}
STRLIST_CLASSES: dict[str, Any] = {
    "str": "sparse",
    "int": 1,
    "dict": {"0": "dense"},
    "bool": True,
    "item-int": [0, 1, 1],
    "item-null": ["dense", None, "sparse"],
    "item-unknown": ["dense", "sparse", "moe"],
    "item-list": [["dense"], "sparse", "sparse"],
    "too-short": ["dense", "sparse"],
    "too-long": ["dense", "sparse", "sparse", "sparse"],
    "all-dense": ["dense", "dense", "dense"],
}
DICT_CLASSES: dict[str, Any] = {"str": "qwen3_moe", "list": [{}], "int": 1, "bool": True, "empty": {}, "null": None}
MISSING = object()


@dataclass(frozen=True)
class ConfigField:
    family: str
    key: str
    """Dotted path in config.json (``text_config.num_experts``)."""
    kind: str  # int | list | str | dict
    accepted: frozenset[str] = frozenset()
    """Value classes this family accepts (the checkpoint still loads and prunes as before)."""
    either: frozenset[str] = frozenset()
    """Value classes where refusing and accepting are both defensible."""
    commands: tuple[str, ...] = tuple(MODEL_COMMANDS)


def _f(family: str, key: str, kind: str = "int", accepted: str = "", either: str = "", **kw: Any) -> ConfigField:
    return ConfigField(family, key, kind, frozenset(accepted.split()), frozenset(either.split()), **kw)


VOCAB_READERS = ("calibrate", "verify", "eval")
CONFIG_FIELDS = [
    _f("qwen3_moe", "model_type", "str", either="missing"),
    _f("qwen3_moe", "num_local_experts"),
    _f("qwen3_moe", "num_experts_per_tok"),
    _f("qwen3_moe", "num_hidden_layers"),
    _f("qwen3_moe", "decoder_sparse_step", accepted="missing"),
    _f("qwen3_moe", "mlp_only_layers", "list", accepted="missing"),
    _f("qwen3_moe", "vocab_size", commands=VOCAB_READERS),
    _f("qwen3_moe", "max_position_embeddings", either="missing", commands=("eval",)),
    _f("qwen2_moe", "num_experts"),
    _f("qwen2_moe", "mlp_only_layers", "list"),
    _f("deepseek_v3", "n_routed_experts"),
    _f("deepseek_v3", "first_k_dense_replace"),
    _f("deepseek_v3", "n_group", either="missing"),
    _f("deepseek_v3", "topk_group", either="missing"),
    _f("deepseek_v2", "topk_method", "str", either="missing"),
    _f("deepseek_v2", "n_group", accepted="missing", either="zero"),
    _f("ernie4_5_moe", "moe_num_experts"),
    _f("ernie4_5_moe", "moe_k"),
    _f("ernie4_5_moe", "moe_layer_start_index", accepted="missing"),
    _f("ernie4_5_moe", "moe_layer_end_index", accepted="missing", either="2**70"),
    _f("ernie4_5_moe", "moe_layer_interval", accepted="missing"),
    _f("hunyuan_v1_moe", "moe_topk"),
    _f("jamba", "expert_layer_period", accepted="missing"),
    _f("jamba", "expert_layer_offset", accepted="missing"),
    _f("llama4_text", "moe_layers", "list", accepted="missing"),
    _f("llama4_text", "interleave_moe_layer_step", either="missing zero"),  # moe_layers decides
    _f("lfm2_moe", "num_dense_layers"),
    _f("qwen3_5_moe", "text_config", "dict"),
    _f("qwen3_5_moe", "text_config.num_experts"),
    _f("qwen3_5_moe", "text_config.num_experts_per_tok"),
    _f("qwen3_5_moe", "text_config.num_hidden_layers"),
    _f("qwen3_5_moe", "text_config.model_type", "str", either="missing int list dict bool null empty nan"),
    _f("kimi_linear", "num_experts_per_token"),
    _f("kimi_linear", "num_expert_group", accepted="missing"),
    _f("kimi_linear", "mlp_layer_types", "strlist", accepted="missing"),
    _f("deepseek_v32", "mlp_layer_types", "strlist", accepted="missing"),
    _f("gemma4", "text_config.top_k_experts"),
]
"""Every config key the registry (arch/families.py, arch/layout.py) or a command reads, on the
family whose rule reads it. ``accepted``: the default the family falls back to is the value the
tiny checkpoint was built with, so the checkpoint is still valid."""

CLASSES = {
    "int": INT_CLASSES,
    "list": LIST_CLASSES,
    "strlist": STRLIST_CLASSES,
    "str": STR_CLASSES,
    "dict": DICT_CLASSES,
}


def _config_cases() -> Iterator[Any]:
    for f in CONFIG_FIELDS:
        for name, value in {"missing": MISSING, **CLASSES[f.kind]}.items():
            expect = "accepted" if name in f.accepted else "either" if name in f.either else "refused"
            commands = f.commands if expect == "refused" else ("inspect", "dry-run")
            for command in commands:
                yield pytest.param(f, name, value, expect, command, id=f"{f.family}.{f.key}={name}-{command}")


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config[key]
    if value is MISSING:
        config.pop(last, None)
    else:
        config[last] = value


NAMED_CLASSES = {"str", "list", "dict", "bool", "int", "fraction", "huge", "2**70", "null", "empty"} | {
    c for c in LIST_CLASSES if c.startswith("item-") and c not in ("item-inf", "item-nan")
}
"""Value classes no consistency check can be the reason to refuse: the error line must name the key."""


@pytest.mark.parametrize(("field_", "klass", "value", "expect", "command"), list(_config_cases()))
def test_config_field(
    field_: ConfigField,
    klass: str,
    value: Any,
    expect: str,
    command: str,
    env: Env,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = copy(env.model(field_.family), tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    set_path(config, field_.key, value)
    (model / "config.json").write_text(json.dumps(config))
    paths = model_paths(env, field_.family, model)
    out = tmp_path / "out"
    out.mkdir()
    r = check(capsys, MODEL_COMMANDS[command](paths, out), watch_for(paths, out), expect)
    name = field_.key.rpartition(".")[2]
    if expect == "refused" and klass in NAMED_CLASSES and not (field_.kind == "dict" and klass in ("empty", "null")):
        assert name in r.err, f"the error does not name {name}: {r.err}"


# --- 2. safetensors headers -----------------------------------------------------------------------

EXPERT = "model.layers.1.mlp.experts.3.up_proj.weight"  # [32, 64] float32: 8192 bytes
SIBLING = "model.layers.1.mlp.experts.4.up_proj.weight"
ROUTER = "model.layers.1.mlp.gate.weight"  # [8, 64]


def rewrite_header(file: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header = edit(header) or header
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    file.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])


def _entry(name: str, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        for k, v in changes.items():
            if v is MISSING:
                h[name].pop(k)
            else:
                h[name][k] = v(h[name][k]) if callable(v) else v

    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(h: dict[str, Any]) -> None:
        h[key] = value

    return edit


def _overlap(h: dict[str, Any]) -> None:
    h[EXPERT]["data_offsets"] = list(h[SIBLING]["data_offsets"])  # two tensors on the same bytes


def _zero_size_huge(h: dict[str, Any]) -> None:
    lo = h[EXPERT]["data_offsets"][0]
    h[EXPERT].update(shape=[0, 2**70], data_offsets=[lo, lo])


HEADER_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "metadata-list": _set("__metadata__", ["format", "pt"]),
    "metadata-str": _set("__metadata__", "pt"),
    "metadata-int": _set("__metadata__", 5),
    "metadata-bool": _set("__metadata__", True),
    "metadata-int-value": _set("__metadata__", {"format": 1}),
    "metadata-list-value": _set("__metadata__", {"format": ["pt"]}),
    "metadata-dict-value": _set("__metadata__", {"format": {"a": "b"}}),
    "metadata-null-value": _set("__metadata__", {"format": None}),
    "shape-negative-same-bytes": _entry(EXPERT, shape=[-32, -64]),
    "shape-minus-one": _entry(EXPERT, shape=[-1, 64]),
    "shape-0x2**70": _zero_size_huge,
    "shape-huge-float": _entry(EXPERT, shape=[1e30, 64]),
    "shape-float": _entry(EXPERT, shape=[32.0, 64]),
    "shape-fraction": _entry(EXPERT, shape=[32.5, 64]),
    "shape-str": _entry(EXPERT, shape=["32", 64]),
    "shape-bool": _entry(EXPERT, shape=[True, 2048]),
    "shape-not-list": _entry(EXPERT, shape="32x64"),
    "shape-dict": _entry(EXPERT, shape={"0": 32, "1": 64}),
    "shape-null": _entry(EXPERT, shape=None),
    "shape-nan": _entry(EXPERT, shape=[NAN, 64]),
    "shape-flat-unlike-siblings": _entry(EXPERT, shape=[2048]),
    "shape-transposed-unlike-siblings": _entry(EXPERT, shape=[64, 32]),
    "router-shape-flat": _entry(ROUTER, shape=[512]),
    "offsets-str": _entry(EXPERT, data_offsets=lambda o: [str(x) for x in o]),
    "offsets-float": _entry(EXPERT, data_offsets=lambda o: [float(x) for x in o]),
    "offsets-fraction": _entry(EXPERT, data_offsets=lambda o: [x + 0.5 for x in o]),
    "offsets-bool": _entry(EXPERT, data_offsets=[False, True]),
    "offsets-negative": _entry(EXPERT, data_offsets=[-8192, 0]),
    "offsets-2**70": _entry(EXPERT, data_offsets=[2**70, 2**70 + 8192]),
    "offsets-three": _entry(EXPERT, data_offsets=lambda o: [*o, 0]),
    "offsets-reversed": _entry(EXPERT, data_offsets=lambda o: o[::-1]),
    "offsets-null": _entry(EXPERT, data_offsets=None),
    "offsets-dict": _entry(EXPERT, data_offsets=lambda o: {"start": o[0], "end": o[1]}),
    "offsets-overlap": _overlap,
    "offsets-missing": _entry(EXPERT, data_offsets=MISSING),
    "dtype-int": _entry(EXPERT, dtype=4),
    "dtype-list": _entry(EXPERT, dtype=["F32"]),
    "dtype-unknown": _entry(EXPERT, dtype="F33"),
    "dtype-null": _entry(EXPERT, dtype=None),
    "dtype-other-width": _entry(EXPERT, dtype="F16", shape=[64, 64]),
    "entry-str": _set(EXPERT, "F32"),
    "entry-list": _set(EXPERT, [[32, 64]]),
    "entry-null": _set(EXPERT, None),
    "header-list": lambda h: [h],
    "header-deep": lambda h: ("[" * DEPTH + "]" * DEPTH).encode(),
    "metadata-deep": lambda h: (
        json.dumps({**h, "__metadata__": {}})[:-1].encode() + b', "x": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    ),
}


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_header(case: str, command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = copy(env.model("qwen3_moe"), tmp_path / "model")
    rewrite_header(model / "model.safetensors", HEADER_CASES[case])
    paths = model_paths(env, "qwen3_moe", model)
    out = tmp_path / "out"
    out.mkdir()
    check(capsys, MODEL_COMMANDS[command](paths, out), watch_for(paths, out), "refused")


# --- 3. the index, special files ------------------------------------------------------------------

INDEX = "model.safetensors.index.json"


def _index(edit: Callable[[dict[str, Any], Path], Any]) -> Callable[[Path], None]:
    def make(model: Path) -> None:
        index = json.loads((model / INDEX).read_text())
        new = edit(index, model)
        (model / INDEX).write_text(new if isinstance(new, str) else json.dumps(index if new is None else new))

    return make


def _weight_map(value: Any) -> Callable[[Path], None]:
    return _index(lambda i, m: i.update(weight_map=value))


def _first_value(value: Any) -> Callable[[Path], None]:
    def edit(i: dict[str, Any], m: Path) -> None:
        name = sorted(i["weight_map"])[0]
        i["weight_map"][name] = value

    return _index(edit)


def _shard_is(kind: str) -> Callable[[Path], None]:
    """The index names, for one tensor, a shard that is a FIFO, a folder, a device or a loop."""

    def edit(i: dict[str, Any], m: Path) -> None:
        special = m / f"model-special-{kind}.safetensors"
        _make_special(special, kind)
        i["weight_map"][EXPERT] = special.name

    return _index(edit)


def _make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dev-null":
        path.symlink_to("/dev/null")
    elif kind == "loop":
        path.symlink_to(path.name)
    else:
        raise AssertionError(kind)


def _replace_with(name: str, kind: str) -> Callable[[Path], None]:
    def make(model: Path) -> None:
        target = model / name
        target.unlink()
        _make_special(target, kind)

    return make


SPECIALS = ("fifo", "dir", "dev-zero", "dev-null", "loop")
INDEX_CASES: dict[str, tuple[bool, Callable[[Path], None]]] = {
    # name: (sharded, make)
    "index-list": (True, _index(lambda i, m: [i])),
    "index-str": (True, _index(lambda i, m: "model-00001-of-00003.safetensors")),
    "index-deep": (True, _index(lambda i, m: "[" * DEPTH + "]" * DEPTH)),
    "index-deep-unread-key": (
        True,
        _index(lambda i, m: json.dumps(i)[:-1] + ', "x": ' + "[" * DEPTH + "]" * DEPTH + "}"),
    ),
    "weight_map-missing": (True, _index(lambda i, m: {k: v for k, v in i.items() if k != "weight_map"})),
    "weight_map-list": (True, _weight_map(["model-00001-of-00003.safetensors"])),
    "weight_map-str": (True, _weight_map("model-00001-of-00003.safetensors")),
    "weight_map-int": (True, _weight_map(1)),
    "weight_map-bool": (True, _weight_map(True)),
    "weight_map-null": (True, _weight_map(None)),
    "weight_map-empty": (True, _weight_map({})),
    "weight_map-value-int": (True, _first_value(1)),
    "weight_map-value-list": (True, _first_value(["model-00001-of-00003.safetensors"])),
    "weight_map-value-dict": (True, _first_value({"file": "model-00001-of-00003.safetensors"})),
    "weight_map-value-null": (True, _first_value(None)),
    "weight_map-value-empty": (True, _first_value("")),
    "weight_map-value-dot": (True, _first_value(".")),
    "weight_map-value-parent": (True, _first_value("../model-00001-of-00003.safetensors")),
    "weight_map-value-absolute": (True, _first_value("/etc/passwd")),
    "weight_map-value-subfolder": (True, _first_value("sub/model-00001-of-00003.safetensors")),
    **{f"index-names-{k}": (True, _shard_is(k)) for k in SPECIALS},
    **{f"single-file-is-{k}": (False, _replace_with("model.safetensors", k)) for k in SPECIALS},
    **{f"config-is-{k}": (False, _replace_with("config.json", k)) for k in SPECIALS},
    "config-deep": (False, lambda m: (m / "config.json").write_text("[" * DEPTH + "]" * DEPTH)),
    "config-deep-unread-key": (
        False,
        lambda m: (m / "config.json").write_text(
            (m / "config.json").read_text().rstrip()[:-1] + ', "x": ' + "[" * DEPTH + "]" * DEPTH + "}"
        ),
    ),
    "config-deep-text-config": (
        False,
        lambda m: (m / "config.json").write_text(
            json.dumps({"model_type": "qwen3_5_moe"})[:-1]
            + ', "text_config": '
            + '{"a": ' * DEPTH
            + "1"
            + "}" * DEPTH
            + "}"
        ),
    ),
    "config-not-utf8": (False, lambda m: (m / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')),
    "config-duplicate-keys": (
        False,
        lambda m: (m / "config.json").write_text(
            (m / "config.json").read_text().rstrip()[:-1] + ', "num_local_experts": "eight"}'
        ),
    ),
}


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_index_and_special_files(
    case: str, command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sharded, make = INDEX_CASES[case]
    model = copy(env.sharded if sharded else env.model("qwen3_moe"), tmp_path / "model")
    make(model)
    paths = model_paths(env, "qwen3_moe", model)
    out = tmp_path / "out"
    out.mkdir()
    check(capsys, MODEL_COMMANDS[command](paths, out), watch_for(paths, out), "refused")


# --- 4. moeprune_plan.json (verify, report) ---------------------------------------------------------


def _plan_edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    return fn


def _plan_field(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(plan: dict[str, Any]) -> None:
        if value is MISSING:
            plan.pop(key)
        else:
            plan[key] = value

    return edit


def _layer(part: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(plan: dict[str, Any]) -> None:
        entry = plan["layers"]["1"]
        entry[part] = value(entry[part]) if callable(value) else value

    return edit


def _rename_layer(key: str) -> Callable[[dict[str, Any]], Any]:
    def edit(plan: dict[str, Any]) -> None:
        plan["layers"][key] = plan["layers"].pop("1")

    return edit


PLAN_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    **{f"criterion={n}": _plan_field("criterion", v) for n, v in {"missing": MISSING, **STR_CLASSES}.items()},
    **{
        f"direction={n}": _plan_field("direction", v)
        for n, v in {"missing": MISSING, "sideways": "sideways", **STR_CLASSES}.items()
    },
    **{f"ratio={n}": _plan_field("ratio", v) for n, v in INT_CLASSES.items() if n != "fraction"},
    "ratio=above-1": _plan_field("ratio", 1.5),
    **{f"n_experts={n}": _plan_field("n_experts", v) for n, v in {"missing": MISSING, **INT_CLASSES}.items()},
    "n_experts=other": _plan_field("n_experts", 16),
    **{f"n_pruned_per_layer={n}": _plan_field("n_pruned_per_layer", v) for n, v in INT_CLASSES.items()},
    **{f"layers={n}": _plan_field("layers", v) for n, v in {"missing": MISSING, **DICT_CLASSES}.items()},
    "layer-key-str": _rename_layer("one"),
    "layer-key-negative": _rename_layer("-1"),
    "layer-key-out-of-range": _rename_layer("99"),
    "layer-key-2**70": _rename_layer(str(2**70)),
    "layer-key-fraction": _rename_layer("1.5"),
    "layer-entry-list": _plan_edit(lambda p: p["layers"].update({"1": [[0, 1], [2]]})),
    "layer-entry-null": _plan_edit(lambda p: p["layers"].update({"1": None})),
    **{f"kept={n}": _layer("kept", v) for n, v in LIST_CLASSES.items()},
    **{f"pruned={n}": _layer("pruned", v) for n, v in LIST_CLASSES.items()},
    "kept-missing": _plan_edit(lambda p: {**p, "layers": {**p["layers"], "1": {"pruned": p["layers"]["1"]["pruned"]}}}),
    "pruned-out-of-range": _layer("pruned", lambda p: [p[0], 99]),
    "pruned-repeated": _layer("pruned", lambda p: [p[0], p[0]]),
    "kept-repeated": _layer("kept", lambda k: [k[0], *k[:-1]]),
    "kept-and-pruned-overlap": _layer("pruned", lambda p: [p[0], 0 if p[0] else 1]),
    "pruned-count-differs": _layer("pruned", lambda p: p[:1]),
    "plan-list": _plan_edit(lambda p: [p]),
    "plan-deep": _plan_edit(lambda p: "[" * DEPTH + "]" * DEPTH),
    "plan-deep-unread-key": _plan_edit(lambda p: json.dumps(p)[:-1] + ', "x": ' + "[" * DEPTH + "]" * DEPTH + "}"),
}


PLAN_EITHER = {"criterion=empty"}
"""A criterion's name is free text (scores may come from the user's own criterion)."""


def _cmd_report(p: Paths, out: Path) -> list[str]:
    return ["report", str(p["pruned"]), "-o", str(out / "report.html")]


PLAN_COMMANDS = {"verify": _cmd_verify, "report": _cmd_report}


@pytest.mark.parametrize("command", list(PLAN_COMMANDS))
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan(case: str, command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pruned = copy(env.pruned_of("qwen3_moe"), tmp_path / "pruned")
    plan = json.loads((pruned / "moeprune_plan.json").read_text())
    new = PLAN_CASES[case](plan)
    text = new if isinstance(new, str) else json.dumps(plan if new is None else new)
    (pruned / "moeprune_plan.json").write_text(text)
    paths = {"model": env.model("qwen3_moe"), "pruned": pruned, "tokens": env.tokens}
    out = tmp_path / "out"
    out.mkdir()
    expect = "either" if case in PLAN_EITHER else "refused"
    check(capsys, PLAN_COMMANDS[command](paths, out), watch_for(paths, out), expect)


def test_plan_of_another_model(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify, eval --base and report refuse a pruned folder checked against another model."""
    pruned = env.pruned_of("qwen3_moe")
    other = env.model("olmoe")  # 8 experts, top-2, 3 layers too: only the provenance tells them apart
    for args in (
        ["verify", str(other), str(pruned)],
        ["eval", str(pruned), "--base", str(other), "--ppl", str(env.tokens), "-o", str(tmp_path / "e.json")],
    ):
        paths = {"model": other, "pruned": pruned, "tokens": env.tokens}
        check(capsys, args, watch_for(paths, tmp_path), "refused")


# --- 5. scores.json (prune --scores) ----------------------------------------------------------------


def _scores_field(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return _plan_field(key, value)


def _scores_layer(value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(s: dict[str, Any]) -> None:
        s["layers"]["1"] = value(s["layers"]["1"]) if callable(value) else value

    return edit


def _scores_value(value: Any) -> Callable[[dict[str, Any]], Any]:
    return _scores_layer(lambda v: [value, *v[1:]])


SCORES_CASES: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    **{
        f"criterion={n}": ("either" if n == "empty" else "refused", _scores_field("criterion", v))
        for n, v in {"missing": MISSING, **STR_CLASSES}.items()
    },
    "criterion=own-name": ("accepted", _scores_field("criterion", "my_own_criterion")),
    **{
        f"direction={n}": ("refused", _scores_field("direction", v))
        for n, v in {"missing": MISSING, "sideways": "sideways", **STR_CLASSES}.items()
    },
    **{f"layers={n}": ("refused", _scores_field("layers", v)) for n, v in {"missing": MISSING, **DICT_CLASSES}.items()},
    "layer-key-str": ("refused", _rename_layer("one")),
    "layer-key-negative": ("refused", _rename_layer("-1")),
    "layer-key-out-of-range": ("refused", _rename_layer("99")),
    "layer-key-2**70": ("refused", _rename_layer(str(2**70))),
    "layer-key-fraction": ("refused", _rename_layer("1.5")),
    "layer-key-padded": ("either", _rename_layer(" 1")),
    **{
        f"layer={n}": ("refused", _scores_layer(v))
        for n, v in {"str": "1.0", "dict": {"0": 1.0}, "null": None, "int": 1}.items()
    },
    "layer-short": ("refused", _scores_layer(lambda v: v[:-1])),
    "layer-long": ("refused", _scores_layer(lambda v: [*v, 1.0])),
    **{
        f"value={n}": ("refused", _scores_value(v))
        for n, v in {
            "str": "1.0",
            "list": [1.0],
            "dict": {},
            "null": None,
            "bool": True,
            "inf": INF,
            "-inf": -INF,
            "nan": NAN,
        }.items()
    },
    **{
        f"value={n}": ("accepted", _scores_value(v))
        for n, v in {"negative": -2.0, "zero": 0.0, "huge": 1e30, "2**70": 2**70}.items()
    },
    "scores-list": ("refused", lambda s: [s]),
    "scores-deep": ("refused", lambda s: "[" * DEPTH + "]" * DEPTH),
    "scores-deep-unread-key": ("refused", lambda s: json.dumps(s)[:-1] + ', "x": ' + "[" * DEPTH + "]" * DEPTH + "}"),
    **{f"criteria={n}": ("refused", lambda s, v=v: {"criteria": v}) for n, v in {**DICT_CLASSES}.items()},
    "criteria-entry-str": ("refused", lambda s: {"criteria": {"aimer": "x"}}),
    "criteria-entry-bad-layers": ("refused", lambda s: {"criteria": {"aimer": {**s, "layers": [1]}}}),
    "criteria-deep": ("refused", lambda s: '{"criteria": ' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "}"),
    "criteria-one-entry": ("either", lambda s: {"criteria": {"magnitude": {**s, "criterion": "magnitude"}}}),
}
"""Negative, zero and huge finite scores are legitimate scores; NaN and infinities are not."""


@pytest.mark.parametrize("dry", [False, True], ids=["prune", "dry-run"])
@pytest.mark.parametrize("case", list(SCORES_CASES))
def test_scores_file(case: str, dry: bool, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect, edit = SCORES_CASES[case]
    scores = env.scores
    new = edit(scores)
    file = tmp_path / "scores.json"
    file.write_text(new if isinstance(new, str) else json.dumps(scores if new is None else new))
    model = env.model("qwen3_moe")
    out = tmp_path / "out"
    out.mkdir()
    paths = {"model": model, "scores": file}
    args = ["prune", str(model), "--prune", "2", "--scores", str(file), "-o", str(out / "pruned")]
    check(capsys, args + (["--dry-run"] if dry else []), watch_for(paths, out), expect)


@pytest.mark.parametrize("form", ["single", "criteria"])
def test_scores_file_with_another_criterion_is_refused(
    form: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An explicit --criterion that the scores file does not hold is refused, never ignored."""
    file = tmp_path / "scores.json"
    scores = env.scores  # aimer scores
    file.write_text(json.dumps(scores if form == "single" else {"criteria": {"aimer": scores}}))
    model = env.model("qwen3_moe")
    args = ["prune", str(model), "--prune", "2", "--scores", str(file), "-c", "magnitude", "-o", str(tmp_path / "o")]
    check(capsys, args, watch_for({"model": model, "scores": file}, tmp_path), "refused")


# --- 6. STATS folders (score, prune, calibrate --resume) -------------------------------------------


def _meta(key: str, value: Any) -> Callable[[Path], None]:
    def make(stats: Path) -> None:
        meta = json.loads((stats / "stats.json").read_text())
        if value is MISSING:
            meta.pop(key)
        else:
            meta[key] = value
        (stats / "stats.json").write_text(json.dumps(meta))

    return make


def _meta_text(text: Callable[[str], str]) -> Callable[[Path], None]:
    def make(stats: Path) -> None:
        (stats / "stats.json").write_bytes(text((stats / "stats.json").read_text()).encode("utf-8", "surrogateescape"))

    return make


def _moments(edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    def make(stats: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(stats / "moments.safetensors"))
        edit(tensors)
        save_file(tensors, str(stats / "moments.safetensors"), metadata={"format": "pt", "moeprune_stats": "1"})

    return make


def _set_moment(value: float, index: tuple[int, ...] = (1, 3, 1, 1)) -> Callable[[Path], None]:
    def edit(t: dict[str, Any]) -> None:
        t["moments"][index] = value

    return _moments(edit)


STATS_CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    **{f"format={n}": ("refused", _meta("format", v)) for n, v in {"missing": MISSING, **INT_CLASSES}.items()},
    **{
        f"version={n}": ("refused", _meta("moeprune_version", v))
        for n, v in {"missing": MISSING, **STR_CLASSES}.items()
    },
    **{f"family={n}": ("refused", _meta("family", v)) for n, v in {"missing": MISSING, **STR_CLASSES}.items()},
    **{
        f"fingerprint={n}": ("refused", _meta("model_fingerprint", v))
        for n, v in {"missing": MISSING, **STR_CLASSES}.items()
    },
    **{
        f"finished_layers={n}": ("refused", _meta("finished_layers", v))
        for n, v in {"missing": MISSING, **LIST_CLASSES}.items()
    },
    "finished_layers=empty": ("refused", _meta("finished_layers", [])),
    **{f"last_layer={n}": ("refused", _meta("last_layer", v)) for n, v in INT_CLASSES.items()},
    **{f"n_tokens={n}": ("refused", _meta("n_tokens", v)) for n, v in INT_CLASSES.items() if n != "2**70"},
    "stats-json-list": ("refused", _meta_text(lambda t: f"[{t}]")),
    "stats-json-deep": ("refused", _meta_text(lambda t: "[" * DEPTH + "]" * DEPTH)),
    "stats-json-deep-unread-key": (
        "refused",
        _meta_text(lambda t: t.rstrip()[:-1] + ', "x": ' + "[" * DEPTH + "]" * DEPTH + "}"),
    ),
    "stats-json-not-utf8": ("refused", _meta_text(lambda t: t.replace('"qwen3_moe"', '"\udcff"'))),
    "moment-nan": ("refused", _set_moment(NAN)),
    "moment-inf": ("refused", _set_moment(INF)),
    "moment--inf": ("refused", _set_moment(-INF)),
    "count-nan": ("refused", _set_moment(NAN, (1, 3, 0, 0))),
    "count-negative": ("refused", _set_moment(-5.0, (1, 3, 0, 0))),
    "count-fraction": ("refused", _set_moment(2.5, (1, 3, 0, 0))),
    "moment-negative-norm-sum": ("refused", _set_moment(-1.0, (1, 3, 0, 1))),
    "all-moments-nan": ("refused", _moments(lambda t: t["moments"].fill_(NAN))),
    "moments-float32": ("refused", _moments(lambda t: t.update(moments=t["moments"].float()))),
    "moments-wrong-shape": ("refused", _moments(lambda t: t.update(moments=t["moments"][:, :, :2, :2].contiguous()))),
    "layers-repeated": ("refused", _moments(lambda t: t["layers"].fill_(1))),
    "layers-negative": ("refused", _moments(lambda t: t["layers"].mul_(-1))),
    "layers-float": ("refused", _moments(lambda t: t.update(layers=t["layers"].double()))),
}


def _stats_commands(p: Paths, out: Path) -> dict[str, list[str]]:
    model, stats = str(p["model"]), str(p["stats"])
    return {
        "score": ["score", model, "-c", "reap", "--stats", stats, "-o", str(out / "scores.json")],
        "prune": ["prune", model, "-c", "reap", "--prune", "2", "--stats", stats, "-o", str(out / "pruned")],
        "dry-run": ["prune", model, "-c", "reap", "--prune", "2", "--stats", stats, "--dry-run", "-o", str(out / "p")],
        "calibrate-resume": [
            "calibrate",
            model,
            "--data",
            str(p["tokens"]),
            "--batch-size",
            "2",
            "--resume",
            "-o",
            stats,
        ],
    }


@pytest.mark.parametrize("command", ["score", "prune", "dry-run", "calibrate-resume"])
@pytest.mark.parametrize("case", list(STATS_CASES))
def test_stats(case: str, command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect, make = STATS_CASES[case]
    stats = copy(env.stats, tmp_path / "stats")
    make(stats)
    paths = {"model": env.model("qwen3_moe"), "stats": stats, "tokens": env.tokens}
    out = tmp_path / "out"
    out.mkdir()
    check(capsys, _stats_commands(paths, out)[command], watch_for(paths, out), expect)


# --- 7. eval.json and scores.csv beside a run (report) ----------------------------------------------

RUN_FILES: dict[str, tuple[str, str]] = {
    "eval-deep": ("eval.json", "[" * DEPTH + "]" * DEPTH),
    "eval-deep-unread-key": ("eval.json", '{"x": ' + "[" * DEPTH + "]" * DEPTH + "}"),
    "eval-list": ("eval.json", "[]"),
    "eval-perplexity-str": ("eval.json", '{"perplexity": "low"}'),
    "eval-perplexity-list": ("eval.json", '{"perplexity": [1, 2]}'),
    "eval-ratio-str": ("eval.json", '{"perplexity": {"pruned": "x", "base": 2, "ratio": "y"}}'),
    "eval-ratio-nan": ("eval.json", '{"perplexity": {"pruned": NaN, "base": 2.0, "ratio": NaN}}'),
    "eval-kl-dict": ("eval.json", '{"kl_mean": {"a": 1}}'),
    "eval-tasks-list": ("eval.json", '{"tasks": [1, 2]}'),
    "eval-tasks-str": ("eval.json", '{"tasks": {"arc": "high"}}'),
    "eval-data-str": ("eval.json", '{"data": "c4"}'),
    "eval-not-utf8": ("eval.json", "\udcff"),
    "scores-csv-nan": ("scores.csv", "layer,expert,score,rank,pruned\n0,0,nan,0,1\n"),
    "scores-csv-huge-layer": ("scores.csv", f"layer,expert,score,rank,pruned\n{2**70},0,1.0,0,1\n"),
    "scores-csv-negative-expert": ("scores.csv", "layer,expert,score,rank,pruned\n0,-1,1.0,0,1\n"),
    "scores-csv-missing-column": ("scores.csv", "layer,expert\n0,0\n"),
}


@pytest.mark.parametrize("case", list(RUN_FILES))
def test_report_run_files(case: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pruned = copy(env.pruned_of("qwen3_moe"), tmp_path / "pruned")
    name, text = RUN_FILES[case]
    (pruned / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    out = tmp_path / "out"
    out.mkdir()
    paths = {"pruned": pruned}
    check(capsys, _cmd_report(paths, out), watch_for(paths, out), "refused")


# --- 8. output paths into an input -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    where: Callable[[Path, Path], Path]
    """(input folder, scratch folder) -> the output path, creating any link it needs."""


def _link(name: str, to: Callable[[Path], Path]) -> Callable[[Path, Path], Path]:
    def make(model: Path, scratch: Path) -> Path:
        link = scratch / name
        link.symlink_to(to(model))
        return link

    return make


FOLDER_TARGETS = [
    Target("equal", lambda m, s: m),
    Target("equal-trailing-dot", lambda m, s: m / "."),
    Target("inside", lambda m, s: m / "sub"),
    Target("inside-deeper", lambda m, s: m / "a" / "b"),
    Target("inside-via-dotdot", lambda m, s: m / ".." / m.name / "sub"),
    Target("containing", lambda m, s: m.parent),
    Target("symlink-to-input", _link("link", lambda m: m)),
    Target("inside-symlink-to-input", lambda m, s: _link("link", lambda m: m)(m, s) / "sub"),
    Target("a-file-of-the-input", lambda m, s: m / "model.safetensors"),
]
FILE_TARGETS = [
    Target("equal", lambda m, s: m),
    Target("weights-of-the-input", lambda m, s: m / "model.safetensors"),
    Target("config-of-the-input", lambda m, s: m / "config.json"),
    Target("inside", lambda m, s: m / "new.json"),
    Target("inside-subfolder", lambda m, s: m / "sub" / "new.json"),
    Target("weights-through-symlinked-folder", lambda m, s: _link("link", lambda m: m)(m, s) / "model.safetensors"),
    Target("symlink-to-weights", _link("out.json", lambda m: m / "model.safetensors")),
    Target("dangling-symlink-inside", _link("out.json", lambda m: m / "absent.json")),
]


def _out_cmd(command: str, model: Path, target: Path, env: Env, base: Path) -> list[str]:
    tokens = str(env.tokens)
    return {
        "score": ["score", str(model), "-o", str(target)],
        "prune": ["prune", str(model), "--prune", "2", "-o", str(target)],
        "calibrate": ["calibrate", str(model), "--data", tokens, "--batch-size", "2", "-o", str(target)],
        "calibrate-offload": [
            "calibrate", str(model), "--data", tokens, "--batch-size", "2", "-o", str(base / "stats-out"),
            "--offload-dir", str(target),
        ],
        "eval": ["eval", str(model), "--ppl", tokens, "--batch-size", "2", "-o", str(target)],
        "eval-base": ["eval", str(base / "pruned"), "--base", str(model), "--ppl", tokens, "-o", str(target)],
        "report": ["report", str(model), "-o", str(target)],
    }[command]  # fmt: skip


OUTPUT_COMMANDS = {
    "score": FILE_TARGETS,
    "prune": FOLDER_TARGETS,
    "calibrate": FOLDER_TARGETS,
    "calibrate-offload": [t for t in FOLDER_TARGETS if t.name != "containing"],
    "eval": [t for t in FILE_TARGETS if t.name != "inside"],
    "eval-base": FILE_TARGETS,
    "report": [
        *FILE_TARGETS[:1],
        Target("plan-of-the-run", lambda m, s: m / "moeprune_plan.json"),
        Target("scores-of-the-run", lambda m, s: m / "scores.csv"),
        Target("weights-of-the-run", lambda m, s: m / "model.safetensors"),
        Target("inside-the-run", lambda m, s: m / "report.html"),
        Target("symlink-to-plan", _link("report.html", lambda m: m / "moeprune_plan.json")),
    ],
}


def _output_cases() -> Iterator[Any]:
    for command, targets in OUTPUT_COMMANDS.items():
        for t in targets:
            for overwrite in (False, True):
                yield pytest.param(command, t, overwrite, id=f"{command}-{t.name}{'-overwrite' if overwrite else ''}")


@pytest.mark.parametrize(("command", "target", "overwrite"), list(_output_cases()))
def test_output_into_an_input(
    command: str, target: Target, overwrite: bool, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "x").mkdir()
    holder = tmp_path / "models"
    holder.mkdir()
    source = env.pruned_of("qwen3_moe") if command in ("report",) else env.model("qwen3_moe")
    model = copy(source, holder / "model")
    inputs: Paths = {"model": model, "tokens": env.tokens}
    if command == "eval-base":
        inputs["pruned"] = copy(env.pruned_of("qwen3_moe"), tmp_path / "pruned")
    out = target.where(model, scratch)
    args = _out_cmd(command, model, out, env, tmp_path) + (["--overwrite"] if overwrite else [])
    watch = Watch(list(inputs.values()), [holder, scratch, tmp_path])
    check(capsys, args, watch, "refused")


# --- 9. token files that lie -------------------------------------------------------------------------


def _npy_header(path: Path, shape: tuple[int, ...], dtype: str = "<i8", data: bytes = b"") -> None:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)  # type: ignore[no-untyped-call]
        f.write(data)


TOKEN_CASES: dict[str, Callable[[Path], Path]] = {
    "npy-claims-200000x200000": lambda d: (_npy_header(d / "t.npy", (200_000, 200_000), data=b"\0" * 64), d / "t.npy")[
        1
    ],
    "npy-claims-2**40-rows": lambda d: (_npy_header(d / "t.npy", (2**40, 4)), d / "t.npy")[1],
    "npy-truncated": lambda d: (_npy_header(d / "t.npy", (2, 16), data=b"\1" * 100), d / "t.npy")[1],
    "npy-float": lambda d: (np.save(d / "t.npy", np.ones((2, 16))), d / "t.npy")[1],
    "npy-bool": lambda d: (np.save(d / "t.npy", np.ones((2, 16), dtype=bool)), d / "t.npy")[1],
    "npy-1d": lambda d: (np.save(d / "t.npy", np.ones(16, dtype=np.int64)), d / "t.npy")[1],
    "npy-3d": lambda d: (np.save(d / "t.npy", np.ones((2, 2, 8), dtype=np.int64)), d / "t.npy")[1],
    "npy-negative": lambda d: (np.save(d / "t.npy", -np.ones((2, 16), dtype=np.int64)), d / "t.npy")[1],
    "npy-above-vocab": lambda d: (np.save(d / "t.npy", np.full((2, 16), 128, dtype=np.int64)), d / "t.npy")[1],
    "npy-uint64-wraps": lambda d: (np.save(d / "t.npy", np.full((2, 16), 2**63 + 1, dtype=np.uint64)), d / "t.npy")[1],
    "npy-empty": lambda d: (np.save(d / "t.npy", np.ones((0, 16), dtype=np.int64)), d / "t.npy")[1],
    "npy-object": lambda d: (_npy_header(d / "t.npy", (2, 2), dtype="|O", data=b"\x80\x04N."), d / "t.npy")[1],
    "npy-fortran-huge": lambda d: (_npy_header(d / "t.npy", (2**31, 2**31)), d / "t.npy")[1],
    "npy-fifo": lambda d: (os.mkfifo(d / "t.npy"), d / "t.npy")[1],
    "npy-dev-zero": lambda d: ((d / "t.npy").symlink_to("/dev/zero"), d / "t.npy")[1],
    "npy-dir": lambda d: ((d / "t.npy").mkdir(), d / "t.npy")[1],
    "safetensors-claims-huge": lambda d: _lying_safetensors(d / "t.safetensors", [200_000, 200_000]),
    "safetensors-float": lambda d: _token_safetensors(d / "t.safetensors", np.ones((2, 16), dtype=np.float32)),
    "safetensors-1d": lambda d: _token_safetensors(d / "t.safetensors", np.ones(16, dtype=np.int64)),
    "safetensors-3d": lambda d: _token_safetensors(d / "t.safetensors", np.ones((2, 2, 4), dtype=np.int64)),
    "safetensors-negative": lambda d: _token_safetensors(d / "t.safetensors", -np.ones((2, 16), dtype=np.int64)),
    "safetensors-mask-2": lambda d: _token_safetensors(
        d / "t.safetensors", np.ones((2, 16), dtype=np.int64), np.full((2, 16), 2, dtype=np.int64)
    ),
    "safetensors-fifo": lambda d: (os.mkfifo(d / "t.safetensors"), d / "t.safetensors")[1],
}


def _token_safetensors(path: Path, ids: np.ndarray, mask: np.ndarray | None = None) -> Path:
    from safetensors.numpy import save_file

    tensors = {"input_ids": ids} | ({} if mask is None else {"attention_mask": mask})
    save_file(tensors, str(path))
    return path


def _lying_safetensors(path: Path, shape: list[int]) -> Path:
    n = math.prod(shape) * 8
    header = json.dumps({"input_ids": {"dtype": "I64", "shape": shape, "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    return path


@pytest.mark.parametrize("command", ["calibrate", "eval"])
@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_token_file(case: str, command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    tokens = TOKEN_CASES[case](data)
    paths = {"model": env.model("qwen3_moe"), "tokens": tokens, "pruned": env.pruned_of("qwen3_moe")}
    out = tmp_path / "out"
    out.mkdir()
    args = {"calibrate": _cmd_calibrate, "eval": _cmd_eval}[command](paths, out)
    check(capsys, args, watch_for(paths, out, data), "refused")


# --- 10. numeric options ----------------------------------------------------------------------------

OPTION_CASES = {
    "calibrate --batch-size 0": ["calibrate", "{model}", "--data", "{tokens}", "--batch-size", "0", "-o", "{out}/s"],
    "calibrate --batch-size -1": ["calibrate", "{model}", "--data", "{tokens}", "--batch-size", "-1", "-o", "{out}/s"],
    "calibrate --seq-len 0": ["calibrate", "{model}", "--data", "{text}", "--seq-len", "0", "-o", "{out}/s"],
    "calibrate --samples 0": ["calibrate", "{model}", "--data", "{text}", "--samples", "0", "-o", "{out}/s"],
    "calibrate --samples -3": ["calibrate", "{model}", "--data", "{text}", "--samples", "-3", "-o", "{out}/s"],
    "verify --seq-len 0": ["verify", "{model}", "{pruned}", "--seq-len", "0"],
    "verify --batch 0": ["verify", "{model}", "{pruned}", "--batch", "0"],
    "verify --tolerance nan": ["verify", "{model}", "{pruned}", "--tolerance", "nan"],
    "verify --tolerance -1": ["verify", "{model}", "{pruned}", "--tolerance", "-1"],
    "eval --batch-size 0": ["eval", "{model}", "--ppl", "{tokens}", "--batch-size", "0", "-o", "{out}/e.json"],
    "eval --seq-len 0": ["eval", "{model}", "--ppl", "{text}", "--seq-len", "0", "-o", "{out}/e.json"],
    "eval --tokens 0": ["eval", "{model}", "--ppl", "{text}", "--tokens", "0", "-o", "{out}/e.json"],
    "eval --limit -1": ["eval", "{model}", "--ppl", "{tokens}", "--limit", "-1", "-o", "{out}/e.json"],
    "prune --prune -1": ["prune", "{model}", "--prune", "-1", "-o", "{out}/p"],
    "prune --ratio inf": ["prune", "{model}", "--ratio", "inf", "-o", "{out}/p"],
    "prune --max-shard-size -5GB": ["prune", "{model}", "--prune", "2", "--max-shard-size", "-5GB", "-o", "{out}/p"],
    "prune --max-shard-size 1e400B": [
        "prune", "{model}", "--prune", "2", "--max-shard-size", "1e400B", "-o", "{out}/p"
    ],
    "prune --seed 10**23": ["prune", "{model}", "-c", "random", "--seed", "9" * 23, "--prune", "2", "-o", "{out}/p"],
    "score --seed 2**70": ["score", "{model}", "-c", "random", "--seed", str(2**70), "-o", "{out}/s.json"],
    "make-tiny --max-shard-size 0": ["make-tiny", "qwen3_moe", "{out}/t", "--max-shard-size", "0"],
    "make-tiny unknown family": ["make-tiny", "llama", "{out}/t"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_numeric_option(case: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "text.txt"
    text.write_text("expert router token layer weight gate\n\nnorm moe prune keep score mean\n")
    paths = {"model": env.model("qwen3_moe"), "tokens": env.tokens, "pruned": env.pruned_of("qwen3_moe"), "text": text}
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(out=out, **{k: str(v) for k, v in paths.items()}) for a in OPTION_CASES[case]]
    check(capsys, args, watch_for(paths, out), "either" if "--seed" in case else "refused")


# --- 11. a checkpoint's own code is never run; transformers stays quiet ----------------------------

MARKER_CODE = """
import pathlib
pathlib.Path(__file__).with_name("CODE-RAN").write_text("the checkpoint's code ran")
"""


def _custom_code_model(env: Env, folder: Path) -> Path:
    """A copy of the tiny model whose config names a model_type only its own (booby-trapped) code builds."""
    model = copy(env.model("qwen3_moe"), folder)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "my_secret_moe"
    config["auto_map"] = {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "modeling_x.py").write_text(MARKER_CODE)
    tok = (
        json.loads((model / "tokenizer_config.json").read_text()) if (model / "tokenizer_config.json").exists() else {}
    )
    tok["auto_map"] = {"AutoTokenizer": ["modeling_x.XTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tok))
    return model


@pytest.mark.parametrize("command", ["verify", "eval", "eval-base", "calibrate", "inspect", "score", "prune"])
def test_custom_code_is_refused_and_never_run(
    command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _custom_code_model(env, tmp_path / "model")
    pruned = env.pruned_of("qwen3_moe")
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "verify": ["verify", str(model), str(pruned)],
        "eval": ["eval", str(model), "--ppl", str(env.tokens), "-o", str(out / "e.json")],
        "eval-base": ["eval", str(pruned), "--base", str(model), "--ppl", str(env.tokens), "-o", str(out / "e.json")],
        "calibrate": _cmd_calibrate({"model": model, "tokens": env.tokens}, out),
        "inspect": ["inspect", str(model)],
        "score": ["score", str(model), "-o", str(out / "s.json")],
        "prune": ["prune", str(model), "--prune", "2", "-o", str(out / "p")],
    }[command]
    check(capsys, args, watch_for({"model": model, "pruned": pruned, "tokens": env.tokens}, out), "refused")
    assert not (model / "CODE-RAN").exists()


def test_library_loads_never_trust_remote_code(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """verify, eval and the tokenizer loads pass trust_remote_code=False explicitly, and a model
    that needs its own code is refused by the library too (one InputError), before transformers."""
    import transformers

    from moeprune import hfload
    from moeprune.errors import InputError
    from moeprune.eval.perplexity import load_lm
    from moeprune.verify import load_causal_lm

    seen: list[Any] = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]
    real_tok = transformers.AutoTokenizer.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(real: Any) -> Any:
        def call(cls: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs.get("trust_remote_code", "absent"))
            return real(cls, *args, **kwargs)

        return classmethod(call)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy(real_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy(real_tok))
    model = env.model("qwen3_moe")
    load_causal_lm(model)
    load_lm(model)
    tokenizer_folder = tmp_path / "tok"
    from helpers import WORDS, save_word_tokenizer

    save_word_tokenizer(tokenizer_folder, WORDS)
    hfload.tokenizer(tokenizer_folder)
    assert seen == [False, False, False]
    custom = _custom_code_model(env, tmp_path / "custom")
    for load in (load_causal_lm, load_lm):
        with pytest.raises(InputError, match="never runs code from a checkpoint"):
            load(custom)
    assert len(seen) == 3 and not (custom / "CODE-RAN").exists()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err  # no progress bars from the library


def test_quiet_restores_the_callers_transformers_settings(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    from moeprune.tiny import make_tiny

    hf_logging.enable_progress_bar()
    hf_logging.set_verbosity_info()
    try:
        make_tiny("qwen3_moe", tmp_path / "t")
        assert hf_logging.is_progress_bar_enabled()
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity_warning()
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "%|" not in err, err


def test_verify_and_eval_say_nothing_on_stderr_with_q(
    env: Env, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A hybrid model whose transformers kernels fall back to PyTorch (a warning per kernel) and
    whose loads draw progress bars: with -q, verify and eval print their result and nothing else."""
    model, pruned = env.model("qwen3_5_moe"), env.pruned_of("qwen3_5_moe")
    capfd.readouterr()
    for args in (
        ["verify", str(model), str(pruned)],
        ["eval", str(pruned), "--base", str(model), "--ppl", str(env.tokens), "-o", str(tmp_path / "e.json")],
    ):
        try:
            main(["-q", *args])
        except SystemExit as e:
            assert e.code in (0, None), e
        captured = capfd.readouterr()
        assert captured.err == "", captured.err
        assert captured.out.strip(), args


# --- 12. special files where a JSON or tensor input is expected -------------------------------------


def _special_input(where: str, kind: str, env: Env, tmp: Path) -> tuple[list[str], Paths]:
    model, out = env.model("qwen3_moe"), tmp / "out"
    if where == "scores.json":
        file = tmp / "scores.json"
        _make_special(file, kind)
        args = ["prune", str(model), "--prune", "2", "--scores", str(file), "-o", str(out / "p")]
        return args, {"model": model, "scores": file}
    if where in ("moeprune_plan.json-verify", "moeprune_plan.json-report", "eval.json", "scores.csv"):
        pruned = copy(env.pruned_of("qwen3_moe"), tmp / "pruned")
        name = where.removesuffix("-verify").removesuffix("-report")
        (pruned / name).unlink(missing_ok=True)
        _make_special(pruned / name, kind)
        if where.endswith("-verify"):
            return ["verify", str(model), str(pruned)], {"model": model, "pruned": pruned}
        return ["report", str(pruned), "-o", str(out / "r.html")], {"pruned": pruned}
    stats = copy(env.stats, tmp / "stats")
    (stats / where).unlink()
    _make_special(stats / where, kind)
    args = ["score", str(model), "-c", "reap", "--stats", str(stats), "-o", str(out / "s.json")]
    return args, {"model": model, "stats": stats}


SPECIAL_INPUTS = [
    "scores.json",
    "moeprune_plan.json-verify",
    "moeprune_plan.json-report",
    "eval.json",
    "scores.csv",
    "stats.json",
    "moments.safetensors",
]


@pytest.mark.parametrize("kind", SPECIALS)
@pytest.mark.parametrize("where", SPECIAL_INPUTS)
def test_special_file_inputs(
    where: str, kind: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args, paths = _special_input(where, kind, env, tmp_path)
    check(capsys, args, watch_for(paths, out), "refused")


def _files_loading_with_transformers() -> list[str]:
    """Package files that call ``from_pretrained`` or ``from_config``."""
    import moeprune

    root = Path(moeprune.__file__).parent
    return [str(f.relative_to(root)) for f in sorted(root.rglob("*.py")) if _loads(f)]


def _loads(file: Path) -> list[Any]:
    import ast

    names = ("from_pretrained", "from_config")
    return [
        n
        for n in ast.walk(ast.parse(file.read_text()))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in names
    ]


@pytest.mark.parametrize("file", _files_loading_with_transformers())
def test_every_transformers_load_says_trust_remote_code_false(file: str) -> None:
    """No load may leave trust_remote_code to transformers' default (or to a prompt on a terminal)."""
    import ast

    import moeprune

    for call in _loads(Path(moeprune.__file__).parent / file):
        flags = [k.value for k in call.keywords if k.arg == "trust_remote_code"]
        ok = len(flags) == 1 and isinstance(flags[0], ast.Constant) and flags[0].value is False
        assert ok, f"{file}:{call.lineno} {call.func.attr}(...) without trust_remote_code=False"


# --- the size of the matrix ---------------------------------------------------------------------------

MATRIX_SIZE = (
    len(list(_config_cases()))
    + len(HEADER_CASES) * len(MODEL_COMMANDS)
    + len(INDEX_CASES) * len(MODEL_COMMANDS)
    + len(PLAN_CASES) * len(PLAN_COMMANDS)
    + 1
    + len(SCORES_CASES) * 2
    + 2
    + len(STATS_CASES) * 4
    + len(RUN_FILES)
    + len(list(_output_cases()))
    + len(TOKEN_CASES) * 2
    + len(OPTION_CASES)
    + 7  # custom code
    + len(SPECIAL_INPUTS) * len(SPECIALS)
)
"""Cases in the generated matrix (the module also holds a few direct tests)."""


# --- controls: every command the matrix drives works on the unmodified inputs ----------------------
# (without them a case could be "refused" for a reason that has nothing to do with its bad value)


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
def test_control_model_commands(command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = copy(env.model("qwen3_moe"), tmp_path / "model")
    paths = model_paths(env, "qwen3_moe", model)
    out = tmp_path / "out"
    out.mkdir()
    check(capsys, MODEL_COMMANDS[command](paths, out), watch_for(paths, out), "accepted")


@pytest.mark.parametrize("command", [*PLAN_COMMANDS, "scores-prune", "scores-dry-run", "stats-score", "stats-prune"])
def test_control_file_commands(command: str, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    model = env.model("qwen3_moe")
    if command in PLAN_COMMANDS:
        pruned = copy(env.pruned_of("qwen3_moe"), tmp_path / "pruned")
        paths = {"model": model, "pruned": pruned, "tokens": env.tokens}
        args = PLAN_COMMANDS[command](paths, out)
    elif command.startswith("scores"):
        file = tmp_path / "scores.json"
        file.write_text(json.dumps(env.scores))
        paths = {"model": model, "scores": file}
        args = ["prune", str(model), "--prune", "2", "--scores", str(file), "-o", str(out / "p")]
        args += ["--dry-run"] if command.endswith("dry-run") else []
    else:
        stats = copy(env.stats, tmp_path / "stats")
        paths = {"model": model, "stats": stats, "tokens": env.tokens}
        args = _stats_commands(paths, out)[command.removeprefix("stats-")]
    check(capsys, args, watch_for(paths, out), "accepted")
