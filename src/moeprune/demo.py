"""``moeprune demo``: the whole mission on the bundled model, in a few minutes on a laptop CPU.

The bundled model (``moeprune/data/tiny-moe``) is a small Qwen3-MoE (4 MoE layers x 16 routed
experts, top-2) that ``scripts/train_tiny_moe.py`` trained on the Python standard library, with its
byte-level BPE tokenizer, and two text files beside it that training never saw: ``calib.jsonl``
(calibration) and ``heldout.jsonl`` (evaluation), one source file per record.

`run_demo` does, in order:

1. inspect the checkpoint (headers only);
2. calibrate: ``calib_tokens`` tokens of the calibration files through the layer-wise engine
   (float32), one STATS folder;
3. score every routed expert with every criterion: the weight criteria (aimer, magnitude, random)
   in one pass over the weights, and every named statistics criterion from the STATS folder;
4. for every criterion and ratio (25 % and 50 % by default), prune, then **verify** the pruned
   checkpoint against the original with those experts masked (max |Δlogit|; a mismatch stops the
   demo with `VerificationError`);
5. evaluate the original and every pruned model on ``eval_tokens`` held-out tokens, in file order:
   perplexity, KL(original ‖ pruned) and top-1 agreement (``eval.json`` in each pruned folder);
6. write ``results.json``, ``results.md`` (the criterion x ratio table) and the report
   (``report.html``, ``report.md``, ``report_files/``): it opens with the criterion that lost least
   per ratio and contains the selection stability of every statistics criterion, measured on
   resamples of the calibration shards in the STATS folder.

Output folder layout: ``stats/``, ``scores.json``, ``runs/<criterion>-<percent>/`` (checkpoint,
plan, scores.csv, eval.json), ``results.json``, ``results.md``, ``report.*``. The folder is built
under a temporary name beside ``out`` and renamed into place when complete.

Threads: the demo runs torch on one thread. Its matrices are tiny (hidden 128), so a second
thread gains little, and on a shared machine OpenMP threads that wait for a busy core made the
same forward pass 10x slower (measured here: 0.75 s on one thread, 9.9 s on two under load).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moeprune.errors import InputError
from moeprune.progress import Progress

BUNDLED = Path(__file__).resolve().parent / "data" / "tiny-moe"
"""The bundled model's folder."""
CALIB_FILE, HELDOUT_FILE = "calib.jsonl", "heldout.jsonl"
"""The demo's text, beside the model: one source file per record, never seen in training."""

Say = Callable[[str], None]


def run_demo(
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] = BUNDLED,
    ratios: Sequence[float] = (0.25, 0.5),
    calib_tokens: int = 32_768,
    eval_tokens: int = 32_768,
    seq_len: int = 256,
    batch_size: int = 8,
    overwrite: bool = False,
    say: Say | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the demo into the folder ``out`` and return the ``results.json`` dictionary."""
    import torch

    from moeprune.io.writer import atomic_folder

    out = Path(out)
    model = Path(model)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    missing = [n for n in ("config.json", CALIB_FILE, HELDOUT_FILE) if not (model / n).is_file()]
    if missing:
        raise InputError(f"{model}: the demo model is incomplete (no {', '.join(missing)}); reinstall moeprune")
    note = say or (lambda _: None)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring
    try:
        with atomic_folder(out, overwrite) as tmp:
            result = _run(tmp, out, model, ratios, calib_tokens, eval_tokens, seq_len, batch_size, note, progress)
            result["seconds"] = round(time.perf_counter() - started, 1)
            (tmp / "results.json").write_text(json.dumps(result, indent=2) + "\n")
            (tmp / "results.md").write_text(results_table(result) + "\n")
            _report(tmp, result, note)
    finally:
        torch.set_num_threads(threads)
    return result


def _run(
    tmp: Path,
    out: Path,
    model: Path,
    ratios: Sequence[float],
    calib_tokens: int,
    eval_tokens: int,
    seq_len: int,
    batch_size: int,
    say: Say,
    progress: Progress | None,
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from moeprune import api
    from moeprune.calib.data import load_tokens
    from moeprune.calib.engine import calibrate
    from moeprune.errors import VerificationError
    from moeprune.eval.perplexity import CachedLogits, load_lm, score_tokens
    from moeprune.eval.record import EVAL, eval_record, save_eval
    from moeprune.scoring.criteria import WEIGHT_CRITERIA
    from moeprune.verify import verify

    info = api.inspect(model)
    say(
        f"[1/5] model: {info['family']}, {len(info['moe_layers'])} MoE layers x {info['experts']} routed experts, "
        f"top-{info['top_k']}, {info['total_bytes'] / 2**20:.1f} MiB ({model})"
    )
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    calib = load_tokens(model / CALIB_FILE, tokenizer, samples=-(-calib_tokens // seq_len), seq_len=seq_len, seed=0)
    held = load_tokens(
        model / HELDOUT_FILE, tokenizer, samples=-(-eval_tokens // seq_len), seq_len=seq_len, shuffle=False
    )
    say(f"[2/5] calibrating on {calib.n_tokens:,} tokens of {calib.n_documents} held-apart stdlib files ...")
    t0 = time.perf_counter()
    calibrate(model, calib, out=tmp / "stats", dtype="float32", batch_size=batch_size, progress=progress)
    calib_s = time.perf_counter() - t0

    say("[3/5] scoring every expert with every criterion ...")
    scores = api.score(model, "all", stats=tmp / "stats")
    (tmp / "scores.json").write_text(
        json.dumps({"criteria": {n: s.to_json() for n, s in scores.items()}}, indent=1) + "\n"
    )

    jobs = [(name, ratio) for ratio in ratios for name in scores]
    say(f"[4/5] pruning, verifying and evaluating {len(jobs)} models: {len(scores)} criteria x {len(ratios)} ratios")
    base = load_lm(model, dtype="float32")
    settings = {"device": "cpu", "dtype": "float32", "batch_size": batch_size}
    runs: list[dict[str, Any]] = []
    ev: dict[str, Any] = {}  # the last evaluation: its base entries are the original's, as in every one
    # the original's logits, computed once for the KL of every model (not once per model), beside the output
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.name}.base-logits-") as cache:
        cached = CachedLogits(base, Path(cache))
        for name, ratio in jobs:
            folder = tmp / "runs" / f"{name}-{round(100 * ratio)}"
            plan = api.prune(model, folder, name, ratio=ratio, scores=scores[name])
            check = verify(model, folder)
            if not check.ok:
                raise VerificationError(f"{folder.name}: max |Δlogit| {check.max_abs_diff:.3g} > {check.tolerance:g}")
            pruned = load_lm(folder, dtype="float32")
            ev = score_tokens(pruned, held, base=cached, batch_size=batch_size)
            del pruned
            entry = eval_record(out / "runs" / folder.name, model, settings, held, ev)
            save_eval(folder / EVAL, entry)
            runs.append(
                {
                    "criterion": name,
                    "kind": "weights" if name in WEIGHT_CRITERIA else "statistics",
                    "direction": plan.direction,
                    "ratio": ratio,
                    "pruned_per_layer": plan.n_pruned,
                    "folder": f"runs/{folder.name}",
                    "max_abs_logit_diff": check.max_abs_diff,
                    "perplexity": ev["perplexity"]["pruned"],
                    "kl_mean": ev["kl_mean"],
                    "top1_agreement": ev["top1_agreement"],
                }
            )
            if progress is not None:
                progress("models", 1, len(jobs))
    say(f"[5/5] writing the results and the report to {out} ...")
    return {
        "model": str(model),
        "family": info["family"],
        "experts": info["experts"],
        "moe_layers": len(info["moe_layers"]),
        "top_k": info["top_k"],
        "calibration": {"tokens": calib.n_tokens, "sha256": calib.sha256(), "seconds": round(calib_s, 1)},
        "heldout": {"tokens": held.n_tokens, "positions": ev["n_positions"], "sha256": held.sha256()},
        "base_perplexity": ev["perplexity"]["base"],
        "runs": runs,
    }


def _report(tmp: Path, result: dict[str, Any], say: Say) -> None:
    from moeprune.report import build_report

    try:
        build_report([tmp / r["folder"] for r in result["runs"]], tmp / "report.html", stats=tmp / "stats")
    except InputError as e:  # matplotlib missing: the table is the result, the report a bonus
        say(f"no report: {e}")


def results_table(result: dict[str, Any]) -> str:
    """The criterion x ratio table (markdown): held-out perplexity, KL and top-1 agreement."""
    ratios = sorted({r["ratio"] for r in result["runs"]})
    by = {(r["criterion"], r["ratio"]): r for r in result["runs"]}
    kinds = {r["criterion"]: r["kind"] for r in result["runs"]}  # criteria in run order
    head = "| criterion | kind |" + "".join(f" ppl {p:.0%} | KL {p:.0%} | top-1 {p:.0%} |" for p in ratios)
    rule = "|---|---|" + "---:|---:|---:|" * len(ratios)
    base = f" {result['base_perplexity']:.2f} | 0 | 1 |"
    lines = [head, rule, f"| original | - |{base * len(ratios)}"]
    for name, kind in kinds.items():
        cells = ""
        for p in ratios:
            r = by.get((name, p))
            cells += (
                " - | - | - |"
                if r is None
                else f" {r['perplexity']:.2f} | {r['kl_mean']:.3f} | {r['top1_agreement']:.3f} |"
            )
        lines.append(f"| {name} | {kind} |{cells}")
    return "\n".join(lines)
