"""Perplexity, KL divergence and top-1 agreement of a pruned model against its original.

`evaluate_lm(model, base=..., source=...)` is the whole ``moeprune eval`` run and returns the
``eval.json`` dictionary; `score_tokens(model, tokens, base=...)` is its core over loaded models and
a `TokenBatch`; `load_lm` loads a checkpoint with transformers on one device.

Data. ``source`` is anything `load_tokens` accepts. Text sources are packed into
``ceil(tokens / seq_len)`` windows of ``seq_len`` tokens, documents taken **in source order**
(``shuffle=False``: held-out text is evaluated as it is, and the same arguments give the same
windows, named by their sha256); ``shuffle=True`` takes them in the seeded order calibration uses.
Hugging Face datasets default to the ``test`` split. A pre-tokenized file (``.npy`` [N, L] or
``.safetensors`` with ``input_ids`` and optionally ``attention_mask``) is used exactly as given:
``tokens``, ``seq_len`` and ``shuffle`` do not apply. ``seq_len`` defaults to 2048, or the model's
``max_position_embeddings`` when that is smaller.

What is counted. Position t of a window predicts token t + 1; it counts when both tokens are real
(``attention_mask`` 1 at t and t + 1), so padding is never scored and never scores. For an
unpadded [N, L] file that is all N × (L − 1) positions. Over the counted positions C:

* perplexity = exp(mean over C of −log p(x_{t+1} | x_≤t)), for the pruned model and the original;
  ``ratio`` = pruned / original;
* ``kl_mean`` = mean over C of KL(P_original ‖ P_pruned) = Σ_v p_orig(v) (log p_orig(v) − log p_pruned(v)),
  in nats;
* ``top1_agreement`` = fraction of C where both models' highest logit is the same token.

Log-probabilities are taken with ``log_softmax`` in float32 whatever the model's dtype, a chunk of at
most ``chunk`` positions at a time, and summed in float64; only per-batch sums are kept.

Memory. Both models are loaded on ``device`` at once (their weights in ``dtype``; ``auto`` is
float32 on CPU and bfloat16 on CUDA), and each batch runs through one then the other, so the peak
is both models' weights + two logit tensors (batch_size, L, vocab) in the model's output dtype +
a few (chunk, vocab) float32 temporaries. Lower ``batch_size`` (or ``chunk``) when memory is short.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from moeprune.calib.data import TOKEN_SUFFIXES, TokenBatch, load_tokens
from moeprune.errors import InputError
from moeprune.eval.record import eval_record
from moeprune.loading import load_tokenizer, text_limits
from moeprune.progress import Progress

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEFAULT_SEQ_LEN = 2048
_EVAL_HINT = "pip install 'moeprune[eval]'"


def evaluate_lm(
    model: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
    tokens: int = 100_000,
    seq_len: int | None = None,
    seed: int = 0,
    shuffle: bool = False,
    text_field: str = "text",
    dataset_config: str | None = None,
    split: str = "test",
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str = "auto",
    tasks: Sequence[str] = (),
    limit: float | None = None,
    include_path: str | os.PathLike[str] | None = None,
    chunk: int = 1024,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``base``, its original) and return the ``eval.json`` dictionary.

    ``source`` gives perplexity, KL and agreement (see the module docstring); ``tasks`` runs
    lm-evaluation-harness tasks through ``moeprune.eval.lmeval.run_tasks`` on the same loaded models
    (needs ``moeprune[eval]``) and, with ``base``, reports ``recovery`` = pruned / base score per task.
    At least one of the two is required. Keys that were not computed hold None.
    """
    from moeprune.hfload import quiet
    from moeprune.io.reader import resolve
    from moeprune.loading import open_model
    from moeprune.plan import PLAN, check_pruned_from

    if source is None and not tasks:
        raise InputError("nothing to evaluate: give a perplexity source (--ppl) or lm-eval tasks (--tasks)")
    if tokens < 1 or batch_size < 1 or chunk < 1 or (seq_len is not None and seq_len < 2):
        raise InputError(
            f"need tokens >= 1, seq_len >= 2, batch_size >= 1, chunk >= 1 "
            f"(got tokens={tokens}, seq_len={seq_len}, batch_size={batch_size}, chunk={chunk})"
        )
    dev, torch_dtype = _device_and_dtype(device, dtype)
    if tasks:
        _check_lmeval()
    path = resolve(model)
    base_path = resolve(base) if base is not None else None
    for folder in (path, base_path):  # config, headers, index and experts checked before transformers reads a byte
        if folder is not None:
            open_model(folder)[0].close()
    if base_path is not None and (path / PLAN).exists():  # a pruned folder: its base must be its source
        check_pruned_from(path, base_path)
    vocab, max_pos = text_limits(path)
    if vocab is None:  # transformers would build its default vocabulary and fail on the weights
        raise InputError(f"{path / 'config.json'}: has no vocab_size")
    tokenizer = load_tokenizer(path)
    if tokenizer is None and base_path is not None:
        tokenizer = load_tokenizer(base_path)
    if tasks and tokenizer is None:
        raise InputError(f"{path}: has no tokenizer files (nor has --base); lm-eval tasks need one")

    batch: TokenBatch | None = None
    if source is not None:
        given = Path(os.fspath(source)).expanduser()
        if tokenizer is None and given.exists() and not (given.is_file() and given.suffix.lower() in TOKEN_SUFFIXES):
            where = f"{path}" + (" and --base" if base_path is not None else "")
            raise InputError(f"{where}: no tokenizer files; give token ids instead (.npy, .safetensors with input_ids)")
        length = seq_len or min(DEFAULT_SEQ_LEN, max_pos or DEFAULT_SEQ_LEN)
        batch = load_tokens(
            source,
            tokenizer,
            samples=math.ceil(tokens / length),
            seq_len=length,
            seed=seed,
            text_field=text_field,
            dataset_config=dataset_config,
            split=split,
            vocab_size=vocab,
            shuffle=shuffle,
        )

    started = time.perf_counter()
    with quiet():  # transformers' bars and warnings (kernel fallbacks) stay inside this call
        lm = _load(path, dev, torch_dtype)
        base_lm = _load(base_path, dev, torch_dtype) if base_path is not None else None

        settings = {"device": str(dev), "dtype": str(torch_dtype).removeprefix("torch."), "batch_size": batch_size}
        scores = None
        if batch is not None:
            scores = score_tokens(lm, batch, base=base_lm, batch_size=batch_size, chunk=chunk, progress=progress)
        result = eval_record(model, base, settings, batch, scores, shuffle=shuffle, seed=seed)
        if tasks:
            result["tasks"] = _tasks(lm, base_lm, tokenizer, tasks, limit, include_path, batch_size, str(dev))
    result["settings"]["seconds"] = round(time.perf_counter() - started, 3)
    return result


class CachedLogits:
    """A base model whose logits are computed once per batch and kept in ``folder`` (one
    safetensors file per batch, exact), for scoring many pruned models against the same base on the
    same tokens and batch size: pass it to `score_tokens` as ``base``. The files take batches x
    batch_size x seq_len x vocab x 4 bytes (535 MB for the demo's 32k tokens and 4096-word vocab)."""

    def __init__(self, model: Any, folder: Path) -> None:
        self.model, self.folder = model, folder
        folder.mkdir(parents=True, exist_ok=True)

    def logits(self, index: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The base's logits for batch ``index`` (which is ``ids``, ``mask``)."""
        from safetensors.torch import load_file, save_file

        path = self.folder / f"batch-{index}.safetensors"
        if path.is_file():
            cached = load_file(path)
            if torch.equal(cached["input_ids"], ids) and torch.equal(cached["attention_mask"], mask):
                return cached["logits"]
        logits = _logits(self.model, ids, mask)  # (b, L, V)
        kept = {"logits": logits, "input_ids": ids, "attention_mask": mask}
        save_file({k: v.detach().cpu().contiguous() for k, v in kept.items()}, path)
        return logits


def score_tokens(
    model: Any,
    tokens: TokenBatch,
    *,
    base: Any | None = None,
    batch_size: int = 4,
    chunk: int = 1024,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Perplexity of ``model`` (and ``base``) on ``tokens``, and with ``base`` the mean KL(P_base ‖ P_model)
    and top-1 agreement, over the positions whose token and next token are both real.

    ``model`` and ``base`` are loaded causal LMs (``model(input_ids=, attention_mask=).logits``);
    ``base`` may also be a `CachedLogits`.
    Returns ``{"n_positions", "nll_mean": {"pruned", "base"}, "perplexity": {"pruned", "base", "ratio"},
    "kl_mean", "top1_agreement"}`` (the ``base`` entries None without ``base``).
    """
    if batch_size < 1 or chunk < 1:
        raise InputError(f"batch_size and chunk must be >= 1, got {batch_size} and {chunk}")
    nll = torch.zeros(2, dtype=torch.float64)  # summed NLL of (model, base)
    kl = torch.zeros((), dtype=torch.float64)
    agree = n = 0
    total = tokens.n_tokens
    with torch.inference_mode():
        for index, (ids, mask) in enumerate(tokens.batches(batch_size)):  # (b, L) each
            logits = _logits(model, ids, mask)  # (b, L, V)
            base_logits = None  # (b, L, V)
            if isinstance(base, CachedLogits):
                base_logits = base.logits(index, ids, mask).to(logits.device)
            elif base is not None:
                base_logits = _logits(base, ids, mask).to(logits.device)
            valid = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)  # (b, L-1): token t and t+1 real
            rows, cols = (x.to(logits.device) for x in valid.nonzero(as_tuple=True))  # (C,) each
            targets = ids.to(logits.device)[rows, cols + 1]  # (C,)
            for s in range(0, rows.numel(), chunk):
                r, c, t = rows[s : s + chunk], cols[s : s + chunk], targets[s : s + chunk]
                z = logits[r, c].float()  # (c, V)
                logp = torch.log_softmax(z, dim=-1)  # (c, V)
                nll[0] -= logp.gather(1, t[:, None]).sum(dtype=torch.float64).cpu()
                if base_logits is not None:
                    zb = base_logits[r, c].float()  # (c, V)
                    logq = torch.log_softmax(zb, dim=-1)  # (c, V)
                    nll[1] -= logq.gather(1, t[:, None]).sum(dtype=torch.float64).cpu()
                    q = logq.exp()  # (c, V) base probabilities
                    term = torch.where(q > 0, q * (logq - logp), torch.zeros_like(q))  # (c, V)
                    kl += term.sum(dim=-1).sum(dtype=torch.float64).cpu()
                    agree += int((z.argmax(dim=-1) == zb.argmax(dim=-1)).sum())
                n += int(r.numel())
            if progress is not None:
                progress("perplexity", int(mask.sum()), total)
    if n == 0:
        raise InputError(f"{tokens.source}: no position to score (every window needs two consecutive real tokens)")
    mean = (nll / n).tolist()
    ppl = [_exp(x) for x in mean]
    has_base = base is not None
    return {
        "n_positions": n,
        "nll_mean": {"pruned": mean[0], "base": mean[1] if has_base else None},
        "perplexity": {
            "pruned": ppl[0],
            "base": ppl[1] if has_base else None,
            "ratio": (ppl[0] / ppl[1] if ppl[1] else None) if has_base else None,
        },
        "kl_mean": float(kl) / n if has_base else None,
        "top1_agreement": agree / n if has_base else None,
    }


def load_lm(path: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "auto") -> Any:
    """``AutoModelForCausalLM`` of the checkpoint at ``path`` on ``device`` in ``dtype``, in eval mode."""
    from moeprune.io.reader import resolve

    dev, torch_dtype = _device_and_dtype(device, dtype)
    return _load(resolve(path), dev, torch_dtype)


def _load(folder: Path, dev: torch.device, torch_dtype: torch.dtype) -> Any:
    try:
        from moeprune.hfload import causal_lm
    except ImportError as e:
        raise InputError("evaluating a model needs transformers (pip install 'moeprune[calib]')") from e
    try:
        model = causal_lm(folder, dtype=torch_dtype, device_map={"": dev})
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # RuntimeError: weights that do not fit the config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{folder}: cannot load as a causal language model ({first})") from None
    return model.eval()


# --- helpers -------------------------------------------------------------------------------------


def _logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
    return out.logits  # type: ignore[no-any-return]  # (b, L, V)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        from moeprune.calib.engine import auto_dtype

        dtype = auto_dtype(dev)
    return dev, getattr(torch, dtype)


def _check_lmeval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise InputError(f"--tasks needs lm-evaluation-harness, which is not installed ({_EVAL_HINT})")
    if importlib.util.find_spec("moeprune.eval.lmeval") is None:
        raise InputError(f"this moeprune has no lm-eval bridge (moeprune.eval.lmeval); reinstall it ({_EVAL_HINT})")


def _tasks(
    lm: Any,
    base_lm: Any | None,
    tokenizer: Any,
    tasks: Sequence[str],
    limit: float | None,
    include_path: str | os.PathLike[str] | None,
    batch_size: int,
    device: str,
) -> dict[str, Any]:
    """``{task: {"metric", "score", "stderr", "n", "base", "base_stderr", "recovery"}}``: the pruned
    model's score, the base model's score (None without --base) and recovery = score / base."""
    try:
        from moeprune.eval import lmeval
    except ImportError as e:
        raise InputError(f"cannot load the lm-eval bridge ({e}); {_EVAL_HINT}") from None
    if limit is not None and float(limit).is_integer():
        limit = int(limit)
    kwargs: dict[str, Any] = {
        "limit": limit,
        "include_path": None if include_path is None else os.fspath(include_path),
        "batch_size": batch_size,
        "device": device,
    }
    pruned = lmeval.run_tasks(lm, tokenizer, list(tasks), **kwargs)
    base = lmeval.run_tasks(base_lm, tokenizer, list(tasks), **kwargs) if base_lm is not None else None
    ratios = lmeval.recovery(pruned, base) if base is not None else {}
    return {
        task: {
            "metric": entry.get("metric"),
            "score": entry.get("score"),
            "stderr": entry.get("stderr"),
            "n": entry.get("n"),
            "base": None if base is None else (base.get(task) or {}).get("score"),
            "base_stderr": None if base is None else (base.get(task) or {}).get("stderr"),
            "recovery": ratios.get(task),
        }
        for task, entry in pruned.items()
    }
