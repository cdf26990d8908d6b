"""The lm-evaluation-harness bridge: benchmark scores of an in-memory model (optional extra ``[eval]``).

`run_tasks` wraps an already-loaded transformers model and its tokenizer in lm-eval's ``HFLM`` (no
checkpoint is written or re-read) and runs zero-shot tasks through ``lm_eval.simple_evaluate``; it
returns, per task, the one metric the AIMER and UNI papers report (`PAPER_METRICS`) with its standard
error and the number of documents scored. `recovery` divides pruned by base scores. lm-eval is
imported lazily: without it every call raises one `InputError` that names the extra.

The papers' multiple-choice tasks and their metrics (criteria reference §8.5, after REAP's script):

=================  ==========  ==================================
task               metric      hub dataset (needs the network)
=================  ==========  ==================================
``arc_challenge``  acc_norm    allenai/ai2_arc
``arc_easy``       acc_norm    allenai/ai2_arc
``boolq``          acc         aps/super_glue
``hellaswag``      acc_norm    Rowan/hellaswag
``mmlu``           acc         (group of 57 subjects)
``openbookqa``     acc_norm    allenai/openbookqa
``rte``            acc         (GLUE)
``winogrande``     acc         allenai/winogrande
=================  ==========  ==================================

Any other task (a local one included) reports ``acc_norm`` if lm-eval computes it, else ``acc``, else
its first numeric metric. Groups (``mmlu``) report lm-eval's aggregate over their subtasks and ``n``
sums the subtasks; a tag (``ai2_arc``) expands to one entry per task it names.

Built-in tasks load their data from the Hugging Face Hub (or its local cache). When that data cannot be
reached (offline, no network) `run_tasks` raises one `InputError` naming the task and the dataset.

Local tasks work offline: a folder of task YAMLs passed as ``include_path`` (``--include-path``), each
naming local data files. A multiple-choice task over a JSONL with one ``{"question": str,
"choices": [str, ...], "label": int}`` object per line::

    task: my_mc                      # the name given to run_tasks / --tasks
    dataset_path: json               # or csv, parquet
    dataset_kwargs:
      data_files:
        test: /abs/path/my_mc.jsonl  # absolute: a relative path is read from the working directory
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{question}}\\nAnswer:"
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{label}}"
    metric_list:
      - metric: acc
      - metric: acc_norm

(``tests/data/local_mc/`` holds such a task; its test writes the YAML into a temporary folder with the
JSONL's absolute path filled in.) To run a built-in task offline, copy its YAML from lm-eval's
``lm_eval/tasks`` folder and point ``dataset_path``/``dataset_kwargs`` at locally stored files.

Nothing here prints; lm-eval logs through the ``lm_eval`` logger.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from moeprune.errors import InputError

# The papers' zero-shot multiple-choice tasks -> the metric they report (criteria reference §8.5).
PAPER_METRICS: dict[str, str] = {
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "boolq": "acc",
    "hellaswag": "acc_norm",
    "mmlu": "acc",
    "openbookqa": "acc_norm",
    "rte": "acc",
    "winogrande": "acc",
}
# Any other task: the first of these lm-eval computes, else its first numeric metric.
FALLBACK_METRICS: tuple[str, ...] = ("acc_norm", "acc")

EVAL_HINT = "pip install 'moeprune[eval]'"
LOCAL_HINT = "or use a local task (a YAML naming local data files, e.g. JSONL) with --include-path"


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    include_path: str | os.PathLike[str] | None = None,
    batch_size: int = 8,
    device: str | None = "cpu",
    num_fewshot: int = 0,
    max_length: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Run lm-eval ``tasks`` on an in-memory causal LM.

    ``model`` is a loaded transformers model (moved to ``device`` when it is elsewhere; ``None`` keeps
    it where it is), ``tokenizer`` its tokenizer object. ``limit``: documents per task (a fraction if
    < 1; for testing). ``include_path``: a folder of extra task YAMLs (see the module docstring).
    ``max_length``: context length (default: lm-eval reads it from the model config).

    Returns ``{task: {"metric": name, "score": float, "stderr": float, "n": documents scored}}`` in
    the order asked; a tag contributes one entry per task it names. ``stderr`` is there for tasks (not
    groups): lm-eval's bootstrap is skipped, and acc/acc_norm get the analytic one of a 0/1 mean.
    Raises `InputError` when lm-eval is missing, a task name is unknown, or a task's data cannot be
    loaded.
    """
    tasks = list(dict.fromkeys(tasks))  # each once, in the order asked
    if not tasks:
        raise InputError("no lm-eval tasks given")
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    include = None if include_path is None else os.fspath(include_path)
    managers = _managers(tasks, include)
    built = [_load(managers[name], name, include) for name in tasks]
    if device is not None and str(getattr(model, "device", device)) != str(device):
        model = model.to(device)
    where = str(getattr(model, "device", device or "cpu"))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=where, max_length=max_length)
    objects = [obj for _, objs in built for obj in objs]
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=objects,
            task_manager=managers[tasks[0]],  # only passes the built objects through
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=0,
            log_samples=False,
        )
    except FileNotFoundError as e:  # lazily loaded data (e.g. few-shot splits)
        raise InputError(f"lm-eval could not load task data: {_one_line(e)}; {LOCAL_HINT}") from e
    except ValueError as e:
        if "Duplicate task" not in str(e):
            raise
        raise InputError(f"lm-eval tasks overlap (a group and one of its tasks?): {_one_line(e)}") from e
    if results is None:  # only non-zero ranks of a distributed run get None
        return {}
    return _collect(results, built)


def recovery(pruned: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """``{task: pruned score / base score}`` for every task in ``pruned`` (``None`` where the base is
    missing, zero or not a number)."""
    out: dict[str, float | None] = {}
    for task, r in pruned.items():
        ref = base.get(task, {}).get("score")
        score = r.get("score")
        ok = _number(score) and _number(ref) and ref != 0
        out[task] = float(score) / float(ref) if ok else None  # type: ignore[arg-type]
    return out


def metric_for(task: str, available: list[str]) -> str | None:
    """The metric reported for ``task`` among lm-eval's ``available`` metric names (no filter suffix)."""
    if PAPER_METRICS.get(task) in available:
        return PAPER_METRICS[task]
    for name in FALLBACK_METRICS:
        if name in available:
            return name
    return available[0] if available else None


# --- internals ---------------------------------------------------------------------------------


def _import_lm_eval() -> ModuleType:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (fails early when its deps are missing)
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise InputError(f"lm-eval tasks need lm-evaluation-harness, which is not installed ({EVAL_HINT})") from e
    return lm_eval


@functools.lru_cache(maxsize=4)
def _manager(include_path: str | None) -> Any:
    """A TaskManager over lm-eval's ~15k built-in YAMLs (and ``include_path``): indexing them takes
    tens of seconds, so these managers are kept for the process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _managers(tasks: list[str], include_path: str | None) -> dict[str, Any]:
    """``{name: TaskManager that knows it}``: the include folder alone for its own tasks (fast,
    offline), the built-in index for the others. Unknown names -> one InputError listing them."""
    from lm_eval.tasks import TaskManager

    local = None
    if include_path is not None:
        folder = Path(include_path)
        if not folder.is_dir():
            raise InputError(f"--include-path {include_path}: not a folder of task YAMLs")
        include_path = str(folder.resolve())
        local = TaskManager(include_path=include_path, include_defaults=False)  # fast: not kept
    out = {name: local for name in tasks if local is not None and name in local.all_tasks}
    others = [name for name in tasks if name not in out]
    if others:
        builtin = _manager(None)
        unknown = [name for name in others if name not in builtin.all_tasks and not _is_yaml(name)]
        if unknown:
            where = f" nor in {include_path}" if include_path else "; add a folder of task YAMLs with --include-path"
            raise InputError(f"unknown lm-eval task(s): {', '.join(unknown)} (not built into lm-eval{where})")
        out |= dict.fromkeys(others, builtin)
    return out


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


def _load(manager: Any, name: str, include_path: str | None) -> tuple[str, list[Any]]:
    """Build ``name`` (loads its data) -> (name, [Task or Group objects]); failures -> one InputError.
    A local group naming built-in tasks is built again with both indexes."""
    from datasets.exceptions import DatasetsError

    try:
        try:
            loaded = manager.load([name])
        except KeyError:  # a name the local index lacks (e.g. a built-in task in a local group)
            if include_path is None or getattr(manager, "include_path", None) is None:
                raise
            loaded = _manager(str(Path(include_path).resolve())).load([name])
    except (OSError, DatasetsError) as e:  # ConnectionError offline, FileNotFoundError, DatasetNotFoundError...
        dataset = _dataset_of(manager, name, e)
        raise InputError(
            f"lm-eval task {name!r}: cannot load its dataset {dataset} ({_one_line(e)}); make it reachable "
            f"(network access to the Hugging Face Hub, or a local cache) {LOCAL_HINT}"
        ) from e
    except Exception as e:  # a task YAML lm-eval cannot build
        raise InputError(f"lm-eval task {name!r}: cannot be built ({_one_line(e)})") from e
    groups, tasks = loaded["groups"], loaded["tasks"]
    if name in groups:
        return name, [groups[name]]
    if name in tasks:
        return name, [tasks[name]]
    top = [g for g in groups.values() if not any(g.name in other.child_names for other in groups.values())]
    return name, top + [t for t in tasks.values() if not any(t.task_name in g.child_names for g in groups.values())]


def _dataset_of(manager: Any, name: str, error: BaseException) -> str:
    """The dataset a failed load named: from the error text, else the task's YAML."""
    found = re.search(r"'([\w.\-]+/[\w.\-]+)'", str(error))
    if found:
        return repr(found.group(1))
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    path = cfg.get("dataset_path")
    if path and cfg.get("dataset_kwargs"):
        return f"{path!r} {cfg['dataset_kwargs']}"
    return repr(path) if path else "(unknown)"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "no message"
    return f"{e.__class__.__name__}: {text[:300]}"


def _collect(results: Any, built: list[tuple[str, list[Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for _, objects in built:
        for obj in objects:
            task_name = getattr(obj, "task_name", None)
            if task_name is not None:
                out[task_name] = _entry(results, task_name, [task_name])
            else:  # a Group
                leaves = [t.task_name for t in obj.get_all_tasks()]
                entry = _entry(results, obj.name, leaves)
                if entry["metric"] is not None:
                    out[obj.name] = entry
                else:  # a group without an aggregate: report its tasks
                    for leaf in leaves:
                        out[leaf] = _entry(results, leaf, [leaf])
    return out


def _entry(results: Any, name: str, leaves: list[str]) -> dict[str, Any]:
    """``{"metric", "score", "stderr"?, "n"}`` of ``name`` from simple_evaluate's results."""
    metrics: dict[str, Any] = {}
    for section in ("results", "groups"):
        metrics = {**(results.get(section, {}).get(name) or {}), **metrics}
    values: dict[str, float] = {}
    stderrs: dict[str, Any] = {}
    # keys are "metric,filter"; multiple-choice tasks use the filter "none", which comes first
    for key in sorted(metrics, key=lambda k: k.partition(",")[2] not in ("", "none")):
        metric, value = key.partition(",")[0], metrics[key]
        if metric.endswith("_stderr"):
            stderrs.setdefault(metric.removesuffix("_stderr"), value)
        elif _number(value):
            values.setdefault(metric, float(value))
    samples = results.get("n-samples", {})
    n = sum(int(samples.get(leaf, {}).get("effective", 0)) for leaf in leaves)
    chosen = metric_for(name, list(values))
    entry: dict[str, Any] = {"metric": chosen, "score": values.get(chosen) if chosen else None, "n": n}
    if chosen and _number(stderrs.get(chosen)):
        entry["stderr"] = float(stderrs[chosen])
    elif chosen in FALLBACK_METRICS and leaves == [name] and n > 1:
        # bootstrap_iters=0 leaves lm-eval's stderr "N/A"; acc and acc_norm are means of 0/1 values,
        # whose sample standard error (lm-eval's mean_stderr) is sqrt(p (1 - p) / (n - 1))
        p = entry["score"]
        entry["stderr"] = math.sqrt(p * (1.0 - p) / (n - 1))
    return entry


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
