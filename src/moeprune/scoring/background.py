"""Score while writing: a weight-criterion pass on a background thread that hands over each MoE
layer's plan as soon as that layer is scored.

``moeprune prune`` with a weight criterion used to read every expert to score it, then copy the
kept ones: two passes one after the other. The output's layout depends only on how many experts
each layer keeps, so the writer can lay out every shard before any score exists, write what no
plan decides (attention, embeddings, shared experts, dense layers) at once, and fill each layer's
expert tensors when `ScoringPass.kept` returns that layer's kept ids. The pass scores layers in
the order the writer needs them, so on a machine with cores and disk bandwidth to spare the two
passes overlap and prune takes about as long as the longer of them.

The plans are exactly those of `moeprune.plan.make_plan` on the same scores (the same `select`,
layer by layer). An error in the pass (unreadable input, a non-finite score) is raised in the
thread that asks for a plan; `close` stops the pass within one piece of reading.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from moeprune.arch.layout import MoeLayer, MoeModel
from moeprune.errors import InputError
from moeprune.io.reader import Checkpoint
from moeprune.plan import LayerPlan, PrunePlan, select
from moeprune.scoring.criteria import WEIGHT_CRITERIA, WeightMoments, score_layers
from moeprune.scoring.weights import layer_bytes, weight_moments


class _Stopped(Exception):
    """Raised inside the pass to end it early."""


class ScoringPass:
    """Scores every MoE layer with one weight criterion on a background thread and selects the
    ``n_prune`` experts each loses; use as a context manager."""

    def __init__(
        self,
        ckpt: Checkpoint,
        model: MoeModel,
        criterion: str,
        n_prune: int,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.ckpt, self.model, self.n_prune, self.seed = ckpt, model, n_prune, seed
        self.criterion = WEIGHT_CRITERIA[criterion]
        self.progress = progress
        self._done: dict[int, Future[tuple[list[float], LayerPlan]]] = {layer.index: Future() for layer in model.layers}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, order: list[int] | None = None) -> None:
        """Start scoring, layers in ``order`` (indices) first, then any others."""
        first = {i: k for k, i in enumerate(order or [])}
        layers = sorted(self.model.layers, key=lambda layer: first.get(layer.index, len(first)))
        self._thread = threading.Thread(target=self._run, args=(layers,), name="moeprune-scoring", daemon=True)
        self._thread.start()

    def kept(self, layer: int) -> list[int]:
        """Original ids kept in ``layer``, ascending (waits until the layer is scored)."""
        return self._done[layer].result()[1].kept

    def plan(self) -> PrunePlan:
        """The whole plan (waits for every layer)."""
        results = {i: f.result() for i, f in sorted(self._done.items())}
        c, n = self.criterion, self.model.n_experts
        plan_layers = {i: lp for i, (_, lp) in results.items()}
        scores = {i: s for i, (s, _) in results.items()}
        return PrunePlan(c.name, c.direction, round(self.n_prune / n, 6), n, plan_layers, scores)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ScoringPass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, layers: list[MoeLayer]) -> None:
        total = sum(layer_bytes(self.ckpt, layer) for layer in layers)

        def progress(nbytes: int) -> None:
            if self._stop.is_set():
                raise _Stopped
            if self.progress is not None:
                self.progress(nbytes, total)

        def layer_done(i: int, m: WeightMoments) -> None:
            scores = score_layers({i: m}, self.criterion.name, self.seed)[i]
            chosen = select(scores, self.criterion.direction, self.n_prune, self.model.groups)
            self._done[i].set_result((scores, chosen))

        try:
            weight_moments(self.ckpt, self.model, progress, layers=layers, layer_done=layer_done)
        except BaseException as e:  # handed to whoever waits for a plan
            if isinstance(e, OSError):
                e = InputError(f"could not read {self.ckpt.path}: {e.strerror or e}")
            for f in self._done.values():
                if not f.done():
                    f.set_exception(e)
