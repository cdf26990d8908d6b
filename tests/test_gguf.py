"""GGUF pruning and scoring: byte-exact slicing for every quantization type and layout, scores
checked against an independent whole-tensor dequantization, plans travelling from Hugging Face
checkpoints, splits, atomic output, and the one-line refusal of every class of bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import moeprune.gguf as mg  # noqa: E402
from gguf_support import TINY, hf_to_gguf, synthetic  # noqa: E402
from moeprune.errors import InputError  # noqa: E402
from moeprune.gguf import moments  # noqa: E402
from moeprune.scoring import weights  # noqa: E402

QTYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_1", "Q2_K", "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ4_XS", "MXFP4"]


def _read(path: Path) -> tuple[dict[str, object], dict[str, object]]:
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


def _check_pruned(src: Path, out: Path, kept: dict[int, list[int]], count_key: str) -> None:
    """Every tensor of ``out`` equals the input's, with the experts not in ``kept`` removed from
    the expert axis of every expert tensor, router and selection bias (numpy indexing of the
    input, independent of the writer's byte copies); metadata unchanged but the expert count."""
    f_in, t_in = _read(src)
    f_out, t_out = _read(out)
    assert list(t_in) == list(t_out)
    n_kept = len(next(iter(kept.values())))
    for name, a in t_in.items():
        b = t_out[name]
        assert b.tensor_type == a.tensor_type, name
        role = None
        if name.startswith("blk.") and any(k in name for k in ("_exps.", "ffn_gate_inp.", "exp_probs_b.")):
            role = int(name.split(".")[1])
        if role is None or "ffn_gate_inp_shexp" in name:
            assert np.array_equal(np.asarray(a.data), np.asarray(b.data)), name
        else:
            assert np.array_equal(np.asarray(a.data)[kept[role]], np.asarray(b.data)), name
            assert int(b.shape[-1]) == n_kept, name
    assert f_out[count_key] == n_kept
    plan = json.loads(str(f_out.pop("moeprune.plan")))
    assert {int(i): v["kept"] for i, v in plan["layers"].items()} == kept
    f_in[count_key] = n_kept
    assert f_in == f_out


@pytest.mark.parametrize("qtype", QTYPES)
def test_prune_is_byte_exact_for_every_quant_type(tmp_path: Path, qtype: str) -> None:
    src = synthetic(tmp_path / "m.gguf", "qwen3moe", qtype, n_layers=2, hidden=256, ffn=256)
    made = mg.prune(src, tmp_path / "p.gguf", "random", ratio=0.5, seed=3)
    kept = {i: lp.kept for i, lp in made.layers.items()}
    assert all(len(k) == 4 for k in kept.values()) and kept[0] != kept[1]
    _check_pruned(src, tmp_path / "p.gguf", kept, "qwen3moe.expert_count")
    assert mg.inspect(tmp_path / "p.gguf")["experts"] == 4


def _reference(path: Path) -> dict[int, tuple[list[float], list[float]]]:
    """(AIMER, magnitude) per expert from each whole tensor dequantized at once, in float64."""
    r = gguf.GGUFReader(path)
    acc: dict[int, np.ndarray] = {}
    for t in r.tensors:
        if t.name.endswith("_exps.weight"):
            x = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)  # (E, R, C)
            x = x.reshape(x.shape[0], -1)
            row = np.stack([np.full(x.shape[0], x.shape[1]), np.abs(x).sum(1), (x * x).sum(1)], 1)
            i = int(t.name.split(".")[1])
            acc[i] = acc.get(i, 0) + row
    return {i: ([a / math.sqrt(n * q) for n, a, q in m], [a / n for n, a, q in m]) for i, m in acc.items()}


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS", "MXFP4"])
def test_scores_match_whole_tensor_dequantization(
    tmp_path: Path, qtype: str, native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not native:  # numpy for plain types; gguf-py's dequantizers instead of llama.cpp's
        monkeypatch.setattr(weights, "_NATIVE", None)
        monkeypatch.setattr(moments, "USE_GGML", False)
    src = synthetic(tmp_path / "m.gguf", "qwen3moe", qtype, n_layers=2, hidden=256, ffn=512)
    got = mg.score(src, "all")
    for i, (aimer, magnitude) in _reference(src).items():
        assert got["aimer"].layers[i] == pytest.approx(aimer, rel=1e-9)
        assert got["magnitude"].layers[i] == pytest.approx(magnitude, rel=1e-9)


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("gpt-oss", {"qtype": "MXFP4"}),  # expert biases + router bias
        ("deepseek2", {"qtype": "Q4_K", "groups": (4, 2), "n_experts": 16, "dense_first": 1}),  # groups, exp_probs_b
        ("qwen2moe", {"qtype": "Q8_0"}),  # shared expert and its gate untouched
        ("glm4moe", {"qtype": "Q5_K", "dense_first": 1}),
        ("ernie4_5-moe", {"qtype": "Q6_K"}),
        ("hunyuan-moe", {"qtype": "Q8_0"}),
        ("granitemoe", {"qtype": "F16"}),
        ("olmoe", {"qtype": "BF16"}),
        ("llama", {"qtype": "Q4_0"}),
    ],
)
def test_architecture_layouts(tmp_path: Path, arch: str, kwargs: dict[str, object]) -> None:
    src = synthetic(tmp_path / "m.gguf", arch, n_layers=3, hidden=256, ffn=256, **kwargs)  # type: ignore[arg-type]
    info = mg.inspect(src)
    dense = int(kwargs.get("dense_first", 0))  # type: ignore[call-overload]
    assert info["moe_layers"] == list(range(dense, 3))
    made = mg.prune(src, tmp_path / "p.gguf", "aimer", ratio=0.5)
    kept = {i: lp.kept for i, lp in made.layers.items()}
    _check_pruned(src, tmp_path / "p.gguf", kept, f"{arch}.expert_count")
    if "groups" in kwargs:
        for lp in made.layers.values():  # 16 experts in 4 groups: 2 removed from each
            assert [sum(1 for j in lp.pruned if j // 4 == g) for g in range(4)] == [2, 2, 2, 2]
        assert mg.inspect(tmp_path / "p.gguf")["groups"] == {"n_group": 4, "topk_group": 2}


def test_split_model(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = synthetic(tmp_path / "m.gguf", "qwen3moe", "Q8_0", split=3, alignment=64)
    assert src.name == "m-00001-of-00003.gguf"
    single = synthetic(tmp_path / "one.gguf", "qwen3moe", "Q8_0", alignment=64)
    assert mg.score(src, "aimer")["aimer"].layers == mg.score(single, "aimer")["aimer"].layers
    r = cli("prune", str(src), "--ratio", "0.25", "-o", str(tmp_path / "p.gguf"))
    assert r.code == 0, r
    outs = sorted(tmp_path.glob("p-*.gguf"))
    assert [p.name for p in outs] == [f"p-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    mg.prune(single, tmp_path / "p1.gguf", "aimer", ratio=0.25)
    _, whole = _read(tmp_path / "p1.gguf")
    parts: dict[str, object] = {}
    for p in outs:
        parts |= _read(p)[1]
    assert list(parts) == list(whole)
    assert all(np.array_equal(np.asarray(parts[n].data), np.asarray(whole[n].data)) for n in whole)  # type: ignore[attr-defined]
    assert mg.inspect(outs[1])["experts"] == 6  # any shard names the model


FAMILIES = ["qwen3_moe", "qwen2_moe", "olmoe", "mixtral"]


@pytest.fixture(scope="module")
def hf_and_gguf(tmp_path_factory: pytest.TempPathFactory, tiny) -> dict[str, tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    out = {}
    for family in FAMILIES:
        hf = tiny(family, **TINY.get(family, {}))
        out[family] = (hf, hf_to_gguf(hf, tmp_path_factory.mktemp(family) / "m.gguf"))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_plan_on_gguf_equals_converted_hf_pruned(tmp_path: Path, family: str, hf_and_gguf, cli) -> None:  # type: ignore[no-untyped-def]
    """Scores on the F32 GGUF equal the checkpoint's; the checkpoint's plan applied to its GGUF
    (``--plan``) gives the file the converter writes from the pruned checkpoint, tensor for
    tensor and key for key (but the recorded plan)."""
    from moeprune.api import score

    hf, src = hf_and_gguf[family]
    for c in ("aimer", "magnitude"):
        want = score(hf, c)[c].layers
        got = mg.score(src, c)[c].layers
        assert set(got) == set(want)
        for i in want:
            assert got[i] == pytest.approx(want[i], rel=1e-12)
    r = cli("prune", str(hf), "--ratio", "0.5", "-c", "aimer", "-o", str(tmp_path / "hfp"))
    assert r.code == 0, r
    r = cli("prune", str(src), "--plan", str(tmp_path / "hfp" / "moeprune_plan.json"), "-o", str(tmp_path / "g.gguf"))
    assert r.code == 0, r
    ref = hf_to_gguf(tmp_path / "hfp", tmp_path / "ref.gguf")
    f_ref, t_ref = _read(ref)
    f_got, t_got = _read(tmp_path / "g.gguf")
    assert list(t_ref) == list(t_got)
    for n, t in t_ref.items():
        assert t.tensor_type == t_got[n].tensor_type and np.array_equal(
            np.asarray(t.data), np.asarray(t_got[n].data)
        ), n
    f_got.pop("moeprune.plan")
    assert f_ref == f_got
    # the checkpoint's scores.json gives the same file
    assert cli("score", str(hf), "-c", "aimer", "-o", str(tmp_path / "s.json")).code == 0
    r = cli("prune", str(src), "--scores", str(tmp_path / "s.json"), "--ratio", "0.5", "-o", str(tmp_path / "s.gguf"))
    assert r.code == 0, r
    _, t_s = _read(tmp_path / "s.gguf")
    assert all(np.array_equal(np.asarray(t.data), np.asarray(t_s[n].data)) for n, t in t_got.items())
    # the same plan when chosen on the GGUF itself
    r = cli("prune", str(src), "--ratio", "0.5", "-c", "aimer", "--dry-run", "-o", str(tmp_path / "d.gguf"))
    plan = json.loads((tmp_path / "hfp" / "moeprune_plan.json").read_text())
    assert r.out.splitlines()[1:] == [f"  layer {i}: prune {v['pruned']}" for i, v in plan["layers"].items()]


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moeprune.gguf import write

    src = synthetic(tmp_path / "m.gguf", "qwen3moe", "Q8_0")
    calls = {"n": 0}
    real = write._copy

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "_copy", flaky)
    with pytest.raises(KeyboardInterrupt):
        mg.prune(src, tmp_path / "p.gguf", "random", ratio=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_output_rules(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = synthetic(tmp_path / "m.gguf", "qwen3moe", "Q8_0")
    before = src.read_bytes()
    for args in (["-o", str(src)], ["-o", str(src), "--overwrite"]):
        r = cli("prune", str(src), "--ratio", "0.5", *args)
        assert r.code == 2 and r.err.startswith("error:") and len(r.err.strip().splitlines()) == 1, r
    (tmp_path / "p.gguf").write_text("old")
    r = cli("prune", str(src), "--ratio", "0.5", "-o", str(tmp_path / "p.gguf"))
    assert r.code == 2 and "--overwrite" in r.err
    r = cli("prune", str(src), "--ratio", "0.5", "-o", str(tmp_path / "p.gguf"), "--overwrite")
    assert r.code == 0 and mg.inspect(tmp_path / "p.gguf")["experts"] == 4
    assert src.read_bytes() == before


# --- bad input: each class generated, one line, exit 2 ------------------------------------------


def _one_line(r) -> None:  # type: ignore[no-untyped-def]
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r


def _tensor_offset_field(path: Path, name: str) -> int:
    """File offset of tensor ``name``'s data-offset field in the tensor table."""
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    return t.field.offset + sum(int(p.nbytes) for p in t.field.parts[:5])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory.mktemp("good") / "m.gguf", "qwen3moe", "Q8_0", n_layers=2)


@pytest.mark.parametrize("cut", [3, 16, 40, 200, 0.5, 0.9, -1])
def test_truncated(tmp_path: Path, good: Path, cut: float, cli) -> None:  # type: ignore[no-untyped-def]
    data = good.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:n])
    for cmd in (
        ["inspect"],
        ["score", "-o", str(tmp_path / "s.json")],
        ["prune", "--ratio", "0.5", "-o", str(tmp_path / "o.gguf")],
    ):
        _one_line(cli(cmd[0], str(bad), *cmd[1:]))
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("magic", [b"GGML", b"\x00\x00\x00\x00", b"PK\x03\x04", b'{"a"'])
def test_wrong_magic(tmp_path: Path, good: Path, magic: bytes, cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(magic + good.read_bytes()[4:])
    _one_line(cli("inspect", str(bad)))


def test_big_endian_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    w = gguf.GGUFWriter(tmp_path / "m.gguf", "qwen3moe", endianess=gguf.GGUFEndian.BIG)
    w.add_expert_count(8)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("inspect", str(tmp_path / "m.gguf"))
    _one_line(r)
    assert "big-endian" in r.err


def test_unknown_per_expert_tensor(tmp_path: Path, good: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """A per-expert tensor moeprune has no role for (an expert scale) is refused, not left unpruned."""
    bad = tmp_path / "bad.gguf"
    data = good.read_bytes()
    at = data.index(b"blk.0.ffn_gate_inp.weight")
    new = b"blk.0.ffn_down_exps.scale"  # as long as the name it replaces
    bad.write_bytes(data[:at] + new + data[at + len(new) :])
    r = cli("inspect", str(bad))
    _one_line(r)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "mamba", "llama"])
def test_unknown_or_expertless_architecture(tmp_path: Path, arch: str, cli) -> None:  # type: ignore[no-untyped-def]
    w = gguf.GGUFWriter(tmp_path / "m.gguf", arch)
    w.add_block_count(1)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = cli("inspect", str(tmp_path / "m.gguf"))
    _one_line(r)
    assert arch in r.err


@pytest.mark.parametrize(
    ("name", "offset"),
    [("blk.1.ffn_down_exps.weight", 1 << 40), ("output_norm.weight", 1 << 20), ("blk.0.ffn_gate_inp.weight", 3)],
)
def test_tensor_data_out_of_range_or_misaligned(tmp_path: Path, good: Path, name: str, offset: int, cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.gguf"
    shutil.copy(good, bad)
    at = _tensor_offset_field(good, name)
    with open(bad, "r+b") as f:
        f.seek(at)
        f.write(offset.to_bytes(8, "little"))
    r = cli("prune", str(bad), "--ratio", "0.5", "-o", str(tmp_path / "o.gguf"))
    _one_line(r)
    assert not (tmp_path / "o.gguf").exists()


def _plan_file(tmp_path: Path, n_experts: int, layers: list[int], n_kept: int, **extra: object) -> Path:
    d = {
        "criterion": "aimer",
        "direction": "higher_pruned",
        "ratio": 0.5,
        "n_experts": n_experts,
        "layers": {str(i): {"kept": list(range(n_kept)), "pruned": list(range(n_kept, n_experts))} for i in layers},
        **extra,
    }
    p = tmp_path / "plan" / "moeprune_plan.json"
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("case", ["experts", "layers", "family_config", "family_source", "router", "too_few"])
def test_plan_from_another_model(tmp_path: Path, good: Path, case: str, cli) -> None:  # type: ignore[no-untyped-def]
    from moeprune.gguf.match import fingerprint
    from moeprune.gguf.model import open_gguf

    source = {
        "model": "x",
        "family": "qwen3moe",
        "n_experts": 8,
        "moe_layers": [0, 1],
        "fingerprint": fingerprint(open_gguf(good)),
    }
    if case == "experts":
        p = _plan_file(tmp_path, 16, [0, 1], 8)
    elif case == "layers":
        p = _plan_file(tmp_path, 8, [0, 1, 2], 4)
    elif case == "family_config":
        p = _plan_file(tmp_path, 8, [0, 1], 4)
        (p.parent / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    elif case == "family_source":
        p = _plan_file(tmp_path, 8, [0, 1], 4, source=source | {"family": "olmoe"})
    elif case == "router":
        p = _plan_file(tmp_path, 8, [0, 1], 4, source=source | {"fingerprint": "0" * 64})
    else:
        p = _plan_file(tmp_path, 8, [0, 1], 1)
    r = cli("prune", str(good), "--plan", str(p), "-o", str(tmp_path / "o.gguf"))
    _one_line(r)
    assert not (tmp_path / "o.gguf").exists()
    ok = _plan_file(tmp_path, 8, [0, 1], 4, source=source)
    assert cli("prune", str(good), "--plan", str(ok), "-o", str(tmp_path / "o.gguf")).code == 0


def test_scores_from_another_model(tmp_path: Path, good: Path, cli) -> None:  # type: ignore[no-untyped-def]
    other = synthetic(tmp_path / "other.gguf", "qwen3moe", "Q8_0", n_layers=2, seed=9)
    assert cli("score", str(other), "-o", str(tmp_path / "s.json")).code == 0
    _one_line(
        cli("prune", str(good), "--scores", str(tmp_path / "s.json"), "--ratio", "0.5", "-o", str(tmp_path / "o.gguf"))
    )
    assert cli("score", str(good), "-o", str(tmp_path / "s2.json")).code == 0
    r = cli("prune", str(good), "--scores", str(tmp_path / "s2.json"), "--ratio", "0.5", "-o", str(tmp_path / "o.gguf"))
    assert r.code == 0, r


def test_calibration_criteria_point_to_the_checkpoint(good: Path) -> None:
    with pytest.raises(InputError, match="Hugging Face"):
        mg.score(good, "reap")
