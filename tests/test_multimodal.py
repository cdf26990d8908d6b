"""The loader rule for multimodal MoEs whose text model transformers only builds inside a
``...ForConditionalGeneration`` (no causal-LM class in its auto mapping): verify, calibrate and eval
load them with ``AutoModelForImageTextToText``, run the text path only (``input_ids``; logits from
the LM head), never run the vision tower, and find the language model's decoder layers, not the
vision tower's. A model_type with neither class is one clear error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from moeprune.errors import InputError
from moeprune.eval.perplexity import load_lm
from moeprune.hfload import auto_class, causal_lm, from_config, quiet
from moeprune.loading import decoder_layers

# A Qwen3-VL-MoE shaped like the hub's config.json (nested text_config / vision_config), built here
# with transformers' own classes, independently of the registry.
TEXT = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=256,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=24,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    tie_word_embeddings=False,
    rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[4, 2, 2], mrope_interleaved=True),
)
VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=32,
    num_heads=2,
    out_hidden_size=64,
    patch_size=2,
    spatial_merge_size=1,
    temporal_patch_size=1,
    num_position_embeddings=16,
    deepstack_visual_indexes=[0],
)


@pytest.fixture(scope="module")
def vl_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoConfig, Qwen3VLMoeForConditionalGeneration

    out = tmp_path_factory.mktemp("qwen3_vl_moe")
    config = AutoConfig.for_model("qwen3_vl_moe", text_config=TEXT, vision_config=VISION, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3VLMoeForConditionalGeneration(config)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(torch.randn_like(t) * 0.05)
    with quiet():
        model.save_pretrained(out)
    return out


def test_auto_class_rule() -> None:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    assert auto_class("qwen3_moe") is AutoModelForCausalLM
    assert auto_class("llama4") is AutoModelForCausalLM  # a causal-LM class wins where transformers has one
    for model_type in ("qwen3_vl_moe", "kimi_k25", "glm4v_moe"):
        assert auto_class(model_type) is AutoModelForImageTextToText, model_type


def test_text_path_of_a_conditional_generation_model(vl_moe: Path) -> None:
    from transformers import Qwen3VLMoeForConditionalGeneration

    model = causal_lm(vl_moe, dtype=torch.float32, device_map="cpu").eval()
    assert type(model) is Qwen3VLMoeForConditionalGeneration
    layers = decoder_layers(model)
    assert layers is model.model.language_model.layers  # not model.model.visual.blocks
    assert len(layers) == TEXT["num_hidden_layers"] != VISION["depth"]

    ran: list[str] = []
    model.model.visual.register_forward_pre_hook(lambda *_: ran.append("vision"))
    ids = torch.randint(0, TEXT["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
        by_hand = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)
    assert ran == []
    assert logits.shape == (2, 12, TEXT["vocab_size"])
    torch.testing.assert_close(logits, by_hand, rtol=0, atol=0)

    # eval's loader is the same rule
    assert type(load_lm(vl_moe, dtype="float32")) is Qwen3VLMoeForConditionalGeneration


def test_meta_build_for_calibration(vl_moe: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(vl_moe)
    with torch.device("meta"):
        model = from_config(config, dtype=torch.float32)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert all(p.is_meta for p in model.parameters())
    assert decoder_layers(model) is model.model.language_model.layers


def test_neither_class_is_one_error(tmp_path: Path) -> None:
    # transformers knows switch_transformers' config (no custom code), but builds it as an
    # encoder-decoder only: no causal-LM, image-text-to-text or multimodal-LM class
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "switch_transformers"}))
    for load in (lambda: causal_lm(tmp_path), lambda: load_lm(tmp_path, dtype="float32")):
        with pytest.raises(InputError) as e:
            load()
        assert "\n" not in str(e.value)
        assert "no causal-LM or image-text-to-text class for model_type 'switch_transformers'" in str(e.value)


def test_tiny_checkpoints_in_the_hubs_layout(tiny: Callable[..., Path]) -> None:
    """make-tiny writes what the hub ships, where transformers' save_pretrained does not give it back."""
    from safetensors import safe_open

    def shapes(folder: Path) -> dict[str, list[int]]:
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    qwen = tiny("qwen3_vl_moe")
    text = json.loads((qwen / "config.json").read_text())["text_config"]
    E, H, I = text["num_local_experts"], text["hidden_size"], text["moe_intermediate_size"]  # noqa: E741
    assert 2 * I != H  # a transposition cannot hide
    got = shapes(qwen)
    assert got["model.language_model.layers.0.mlp.experts.gate_up_proj"] == [E, H, 2 * I]
    assert got["model.language_model.layers.0.mlp.experts.down_proj"] == [E, I, H]
    assert any(k.startswith("model.visual.") for k in got)

    kimi = tiny("kimi_k25")
    config = json.loads((kimi / "config.json").read_text())
    assert config["text_config"]["model_type"] == "kimi_k2"
    assert config["architectures"] == ["KimiK25ForConditionalGeneration"]
    got = shapes(kimi)
    assert "language_model.model.layers.1.mlp.experts.0.gate_proj.weight" in got
    assert "language_model.lm_head.weight" in got
    assert not any(".blocks." in k for k in got if k.startswith("language_model."))


def test_moe_layer_rules_read_the_hub_keys() -> None:
    """Hub configs name MoE layers their own way; transformers' config classes turn them into
    mlp_layer_types, which saved configs carry instead."""
    from moeprune.arch.families import FAMILIES

    step = FAMILIES["step3p7"].moe_layers
    assert step({"num_hidden_layers": 6, "moe_layers_enum": "3,4,5"}) == [3, 4, 5]
    assert step({"num_hidden_layers": 6, "moe_layers_enum": [1, 5]}) == [1, 5]
    assert step({"num_hidden_layers": 6}) == [3, 4, 5]  # transformers' default
    saved = {"num_hidden_layers": 3, "mlp_layer_types": ["sparse", "dense", "sparse"], "moe_layers_enum": "1"}
    assert step(saved) == [0, 2]
    minimax = FAMILIES["minimax_m3_vl"].moe_layers
    assert minimax({"num_hidden_layers": 4, "moe_layer_freq": [0, 1, 0, 1]}) == [1, 3]
    assert minimax({"num_hidden_layers": 2}) == [0, 1]
    glm5 = FAMILIES["glm5_next"].moe_layers
    assert glm5({"num_hidden_layers": 5}) == [3, 4]  # transformers: the first three dense, whatever else says


def test_step3p7_hub_config_keys(tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path) -> None:
    """A Step-3.7 config.json in the hub's words (moe_num_experts, moe_top_k, moe_layers_enum): pruned
    under its own count key, and transformers reads the result."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny("step3p7"), src)
    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    types = text.pop("mlp_layer_types")
    text["moe_layers_enum"] = ",".join(str(i) for i, t in enumerate(types) if t == "sparse")
    text["moe_num_experts"], text["moe_top_k"] = text.pop("n_routed_experts"), text.pop("num_experts_per_tok")
    (src / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", "0.25", "-o", str(out)).code == 0
    pruned = json.loads((out / "config.json").read_text())["text_config"]
    assert pruned["moe_num_experts"] == text["moe_num_experts"] - 2 and "n_routed_experts" not in pruned
    result = cli("verify", str(src), str(out))
    assert result.code == 0, result


def test_lm_eval_runs_the_text_path(vl_moe: Path, tmp_path: Path) -> None:
    """eval --tasks hands the loaded ...ForConditionalGeneration to lm-eval, which scores text only."""
    import shutil

    from transformers import AutoTokenizer

    from helpers import save_word_tokenizer
    from moeprune.eval.lmeval import run_tasks
    from test_eval_lmeval import DATA, WORDS

    model_dir = tmp_path / "model"
    shutil.copytree(vl_moe, model_dir)
    save_word_tokenizer(model_dir, WORDS)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    yaml = (DATA / "local_mc.yaml").read_text().replace("test: local_mc.jsonl", f"test: {DATA / 'local_mc.jsonl'}")
    (tasks / "local_mc.yaml").write_text(yaml)
    model = load_lm(model_dir, dtype="float32")
    ran: list[str] = []
    model.model.visual.register_forward_pre_hook(lambda *_: ran.append("vision"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = run_tasks(model, tokenizer, ["local_mc"], include_path=str(tasks), batch_size=4, limit=4)
    assert result["local_mc"]["n"] == 4 and 0.0 <= result["local_mc"]["score"] <= 1.0
    assert ran == []


M1 = ["qwen3_vl_moe", "kimi_k25", "glm4v_moe", "glm5_next", "minimax_m3_vl", "step3p7", "mistral4", "mistral_large4"]


@pytest.mark.parametrize("family", M1)
def test_decoder_layers_are_the_language_models(family: str) -> None:
    """On the meta device (no memory): the rule builds each family, and decoder_layers finds the
    language model's layers (as many as text_config says), not a vision tower's."""
    import copy

    from transformers import AutoConfig

    from moeprune.arch.families import FAMILIES

    entry = FAMILIES[family]
    config = AutoConfig.for_model(entry.model_type, **copy.deepcopy(dict(entry.tiny)))
    with torch.device("meta"):
        model = from_config(config)
    layers = decoder_layers(model)
    name = next(n for n, m in model.named_modules() if m is layers)
    assert not any(part in name for part in ("vision", "visual", "vit")), name
    assert len(layers) == config.get_text_config().num_hidden_layers
    assert all(hasattr(layer, "mlp") for layer in layers)


def _int4_experts(folder: Path) -> None:
    """Kimi-K2.5's hub layout of INT4 compressed-tensors experts (pack-quantized, group 32):
    every expert matrix W [out, in] becomes ``weight_packed`` int32 [out, in / 8] (eight 4-bit
    codes a word), ``weight_scale`` bf16 [out, in / 32] and ``weight_shape`` int32 [2]."""
    from safetensors.torch import load_file, save_file

    shard = folder / "model.safetensors"
    tensors = load_file(shard)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if ".mlp.experts." in name and name.endswith(".weight"):
            base = name.removesuffix("weight")
            rows, cols = t.shape
            out[base + "weight_packed"] = torch.randint(
                -(2**31), 2**31 - 1, (rows, cols // 8), generator=gen, dtype=torch.int32
            )
            out[base + "weight_scale"] = torch.rand(rows, cols // 32, generator=gen).to(torch.bfloat16)
            out[base + "weight_shape"] = torch.tensor([rows, cols], dtype=torch.int32)
        else:
            out[name] = t
    save_file(out, shard, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "group_size": 32}}
        },
        "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*vision_tower.*"],
    }
    (folder / "config.json").write_text(json.dumps(config))


def test_kimi_k25_int4_experts_prune_by_a_calibrated_or_random_criterion(
    tiny: Callable[..., Path], cli: Callable[..., Any], tmp_path: Path
) -> None:
    """The hub's INT4 Kimi-K2.5: pruning renumbers each kept expert's packed codes, scales and shape
    byte for byte; the weight criteria refuse the packed codes in one line (they would need int4 group
    dequantisation)."""
    import shutil

    from safetensors.torch import load_file

    src = tmp_path / "src"
    shutil.copytree(tiny("kimi_k25"), src)
    _int4_experts(src)
    result = cli("prune", str(src), "--ratio", "0.5", "-o", str(tmp_path / "aimer"))
    assert result.code == 2 and result.err.count("\n") == 1 and "cannot score I32 expert weights" in result.err
    out = tmp_path / "out"
    assert cli("prune", str(src), "--ratio", "0.5", "--criterion", "random", "-o", str(out)).code == 0
    plan = json.loads((out / "moeprune_plan.json").read_text())
    before, after = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    layers = plan["layers"]
    assert layers
    for layer, entry in layers.items():
        prefix = f"language_model.model.layers.{layer}.mlp.experts."
        kept = entry["kept"]
        assert len(kept) == 4
        for new, old in enumerate(kept):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                for part in ("weight_packed", "weight_scale", "weight_shape"):
                    got, want = after[f"{prefix}{new}.{proj}.{part}"], before[f"{prefix}{old}.{proj}.{part}"]
                    assert got.dtype == want.dtype and torch.equal(got, want)
        assert not any(k.startswith(f"{prefix}4.") for k in after)
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["n_routed_experts"] == 4
    assert config["quantization_config"] == json.loads((src / "config.json").read_text())["quantization_config"]
