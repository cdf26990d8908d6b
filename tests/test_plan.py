"""The plan rules (docs/criteria.md §7): how many experts go per layer, feasibility, and which ones.

Pure and fast: no checkpoint is read.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeprune.arch.spec import Groups
from moeprune.errors import PlanError
from moeprune.plan import (
    HIGHER_PRUNED,
    LOWER_PRUNED,
    LayerPlan,
    PrunePlan,
    check_feasible,
    make_plan,
    n_to_prune,
    rank_for_pruning,
    select,
)
from moeprune.scoring.criteria import WEIGHT_CRITERIA, WeightMoments, score_layers

# --- n_to_prune: the rounding rule ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "n", "expected"),
    [
        (0.25, 8, 2),
        (0.5, 8, 4),
        (0.25, 64, 16),
        (0.5, 128, 64),
        (0.3, 5, 1),  # 1.5: exact half rounds down
        (0.5, 5, 2),  # 2.5 -> 2
        (0.1, 25, 2),  # 2.5 -> 2
        (0.7, 10, 7),  # 0.7 * 10 = 7.000000000000001 in floats
        (0.35, 20, 7),
        (0.15, 10, 1),  # 1.5 -> 1
        (0.45, 10, 4),  # 4.5 -> 4
        (0.35, 10, 3),  # 3.5 -> 3
        # float noise must not matter: in floats these products are just above the half
        (0.035, 100, 3),  # 3.5000000000000004 in floats
        (0.275, 100, 27),  # 27.500000000000004
        (0.545, 100, 54),  # 54.50000000000001
        (0.555, 100, 55),  # 55.50000000000001
        (0.29, 100, 29),  # 28.999999999999996
        (0.57, 100, 57),  # 56.99999999999999
        (0.6, 5, 3),
        (0.26, 8, 2),  # 2.08 -> 2
        (0.32, 8, 3),  # 2.56 -> 3
        (0.3, 8, 2),  # 2.4 -> 2
        (0.99, 8, 8),  # rounds to all of them; check_feasible refuses it later
    ],
)
def test_ratio_rounds_to_nearest_halves_down(ratio: float, n: int, expected: int) -> None:
    assert n_to_prune(n, ratio=ratio) == expected


@pytest.mark.parametrize(("ratio", "n"), [(0.125, 4), (0.05, 8), (0.0625, 8), (0.007, 64), (1e-9, 128)])
def test_ratio_rounding_to_zero_is_an_error(ratio: float, n: int) -> None:
    with pytest.raises(PlanError, match="rounds to 0"):
        n_to_prune(n, ratio=ratio)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1, -1.0, 2.0])
def test_ratio_outside_open_interval_is_an_error(ratio: float) -> None:
    with pytest.raises(PlanError, match="between 0 and 1"):
        n_to_prune(8, ratio=ratio)


@pytest.mark.parametrize("ratio", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_ratio_is_an_error(ratio: float) -> None:
    with pytest.raises(PlanError):
        n_to_prune(8, ratio=ratio)


@pytest.mark.parametrize(("prune", "n"), [(1, 8), (3, 8), (6, 8), (64, 128)])
def test_prune_count_is_used_as_given(prune: int, n: int) -> None:
    assert n_to_prune(n, prune=prune) == prune


@pytest.mark.parametrize("prune", [0, -1])
def test_prune_count_below_one_is_an_error(prune: int) -> None:
    with pytest.raises(PlanError, match="--prune"):
        n_to_prune(8, prune=prune)


def test_ratio_and_prune_are_exclusive_and_one_is_required() -> None:
    with pytest.raises(PlanError, match="exactly one"):
        n_to_prune(8, ratio=0.5, prune=4)
    with pytest.raises(PlanError, match="exactly one"):
        n_to_prune(8)


@given(
    n=st.integers(1, 512),
    ratio=st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)
    | st.integers(1, 999).map(lambda d: d / 1000)  # short decimals, as typed, hit exact halves
    | st.integers(1, 99).map(lambda d: d / 100),
)
def test_ratio_rule_matches_exact_decimal_arithmetic(n: int, ratio: float) -> None:
    """p is the nearest integer to ratio * n computed on the decimal the user typed."""
    from decimal import ROUND_HALF_DOWN, Decimal

    exact = Decimal(repr(ratio)) * n
    want = int(exact.to_integral_value(rounding=ROUND_HALF_DOWN))
    if want < 1:
        with pytest.raises(PlanError):
            n_to_prune(n, ratio=ratio)
    else:
        assert n_to_prune(n, ratio=ratio) == want
        assert abs(want - ratio * n) <= 0.5 + 1e-9


# --- check_feasible ------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "p"), [(8, 2, 6), (8, 1, 7), (128, 8, 120), (64, 6, 1)])
def test_feasible_flat(n: int, k: int, p: int) -> None:
    check_feasible(n, k, p, None)


@pytest.mark.parametrize(("n", "k", "p"), [(8, 2, 7), (8, 2, 8), (8, 1, 8), (128, 8, 121), (8, 2, 20)])
def test_fewer_kept_than_top_k_is_an_error(n: int, k: int, p: int) -> None:
    with pytest.raises(PlanError, match="top-k"):
        check_feasible(n, k, p, None)


def test_groups_feasible() -> None:
    # DeepSeek-V3: 256 experts, 8 groups of 32, top-4 groups, top-8 experts; min 2 per group
    v3 = Groups(8, 4, min_per_group=2)
    for p in (8, 64, 128, 240):
        check_feasible(256, 8, p, v3)
    check_feasible(8, 2, 2, Groups(2, 1, 2))
    check_feasible(8, 2, 4, Groups(2, 1, 2))


@pytest.mark.parametrize("p", [1, 3, 5, 7, 9, 100])
def test_groups_need_a_multiple_of_n_group(p: int) -> None:
    with pytest.raises(PlanError, match="multiple of 8"):
        check_feasible(256, 8, p, Groups(8, 4, 2))


def test_groups_need_min_per_group_left() -> None:
    # 8 groups of 32: removing 248 leaves 1 per group, V3 needs 2 (and 8 kept still covers top-8)
    with pytest.raises(PlanError, match="at least 2"):
        check_feasible(256, 8, 248, Groups(8, 8, 2))
    check_feasible(256, 8, 248, Groups(8, 8, 1))  # V2 greedy needs only one


def test_groups_need_top_k_reachable_in_topk_group_groups() -> None:
    # 8 groups of 32, top-4 groups: removing 240 leaves 2 per group, 4 x 2 = 8 = top-k: fine
    check_feasible(256, 8, 240, Groups(8, 4, 2))
    # top-2 groups only: 2 x 2 = 4 < 8
    with pytest.raises(PlanError, match="reachable"):
        check_feasible(256, 8, 240, Groups(8, 2, 2))
    # tiny DeepSeek-V3: 2 groups of 4, top-1 group, top-2: removing 6 leaves 1 per group
    with pytest.raises(PlanError):
        check_feasible(8, 2, 6, Groups(2, 1, 1))


def test_groups_that_do_not_split_evenly_are_an_error() -> None:
    with pytest.raises(PlanError, match="equal groups"):
        check_feasible(10, 2, 3, Groups(3, 1, 1))


def test_make_plan_checks_feasibility() -> None:
    scores = {1: [0.0] * 8}
    with pytest.raises(PlanError):
        make_plan("aimer", HIGHER_PRUNED, scores, 8, 2, 1, Groups(2, 1, 2))
    with pytest.raises(PlanError):
        make_plan("aimer", HIGHER_PRUNED, scores, 8, 2, 7, None)


# --- select: hand examples -----------------------------------------------------------------------


def test_select_lower_pruned() -> None:
    scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6]
    assert select(scores, LOWER_PRUNED, 3, None) == LayerPlan(kept=[0, 2, 4, 6, 7], pruned=[1, 3, 5])
    assert select(scores, LOWER_PRUNED, 1, None).pruned == [1]


def test_select_higher_pruned() -> None:
    scores = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6]
    assert select(scores, HIGHER_PRUNED, 3, None) == LayerPlan(kept=[0, 1, 3, 5, 7], pruned=[2, 4, 6])
    assert select(scores, HIGHER_PRUNED, 1, None).pruned == [2]


def test_select_ties_prune_lower_id_first() -> None:
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert select(scores, LOWER_PRUNED, 2, None).pruned == [1, 3]
    assert select(scores, HIGHER_PRUNED, 2, None).pruned == [0, 2]
    assert select([0.5] * 6, LOWER_PRUNED, 4, None).pruned == [0, 1, 2, 3]
    assert select([0.5] * 6, HIGHER_PRUNED, 4, None).pruned == [0, 1, 2, 3]


def test_select_negative_and_zero_scores() -> None:
    scores = [-1.0, 0.0, -3.0, 2.0]
    assert select(scores, LOWER_PRUNED, 2, None).pruned == [0, 2]
    assert select(scores, HIGHER_PRUNED, 2, None).pruned == [1, 3]


def test_select_groups_remove_the_worst_of_each_group() -> None:
    # two contiguous groups of 4; globally the 2 lowest are both in group 0 (ids 0, 1)
    scores = [0.1, 0.2, 0.9, 0.8, 0.5, 0.7, 0.4, 0.6]
    groups = Groups(2, 1, 2)
    assert select(scores, LOWER_PRUNED, 2, None).pruned == [0, 1]
    assert select(scores, LOWER_PRUNED, 2, groups) == LayerPlan(kept=[1, 2, 3, 4, 5, 7], pruned=[0, 6])
    assert select(scores, LOWER_PRUNED, 4, groups).pruned == [0, 1, 4, 6]
    assert select(scores, HIGHER_PRUNED, 2, groups).pruned == [2, 5]
    assert select(scores, HIGHER_PRUNED, 4, groups).pruned == [2, 3, 5, 7]


def test_select_four_groups() -> None:
    scores = [float(x) for x in [3, 1, 2, 9, 8, 7, 0, 5, 4, 6, 6, 1]]  # groups of 3
    assert select(scores, LOWER_PRUNED, 4, Groups(4, 2, 1)).pruned == [1, 5, 6, 11]
    assert select(scores, HIGHER_PRUNED, 4, Groups(4, 2, 1)).pruned == [0, 3, 7, 9]


def test_rank_for_pruning() -> None:
    assert rank_for_pruning([0.3, 0.1, 0.3, 0.2], LOWER_PRUNED) == [2, 0, 3, 1]
    assert rank_for_pruning([0.3, 0.1, 0.3, 0.2], HIGHER_PRUNED) == [0, 3, 1, 2]


def test_make_plan_and_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    scores = {1: [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6], 2: [float(j) for j in range(8)]}
    plan = make_plan("magnitude", LOWER_PRUNED, scores, 8, 2, 2, None)
    assert plan.layers[1].pruned == [1, 5]
    assert plan.layers[2].pruned == [0, 1]
    assert (plan.n_pruned, plan.n_kept, plan.ratio) == (2, 6, 0.25)
    plan.save(tmp_path)
    back = PrunePlan.load(tmp_path / "moeprune_plan.json")
    assert back.layers == plan.layers
    assert (back.criterion, back.direction, back.n_experts) == ("magnitude", LOWER_PRUNED, 8)
    assert json.loads((tmp_path / "moeprune_plan.json").read_text())["n_pruned_per_layer"] == 2


# --- select: properties --------------------------------------------------------------------------


@st.composite
def layer_case(draw: st.DrawFn) -> tuple[list[float], str, int, Groups | None]:
    n_group = draw(st.sampled_from([1, 1, 2, 4, 8]))
    size = draw(st.integers(2, 12))
    n = n_group * size
    top_k = draw(st.integers(1, min(8, n - 1)))
    # few distinct values, so ties are common
    scores = draw(
        st.lists(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 3.0]) | st.floats(-10, 10), min_size=n, max_size=n)
    )
    direction = draw(st.sampled_from([LOWER_PRUNED, HIGHER_PRUNED]))
    if n_group == 1:
        groups = None
        p = draw(st.integers(1, n - top_k))
    else:
        min_per = draw(st.sampled_from([1, 2]))
        topk_group = draw(st.integers(1, n_group))
        feasible = [
            q * n_group
            for q in range(1, size)
            if size - q >= min_per and topk_group * (size - q) >= top_k and n - q * n_group >= top_k
        ]
        if not feasible:
            topk_group, min_per, top_k = n_group, 1, 1
            feasible = [q * n_group for q in range(1, size)]
        groups = Groups(n_group, topk_group, min_per)
        p = draw(st.sampled_from(feasible))
    check_feasible(n, top_k, p, groups)
    return scores, direction, p, groups


@settings(max_examples=300, deadline=None)
@given(case=layer_case())
def test_select_properties(case: tuple[list[float], str, int, Groups | None]) -> None:
    scores, direction, p, groups = case
    n = len(scores)
    lp = select(scores, direction, p, groups)
    assert len(lp.pruned) == p
    assert len(lp.kept) == n - p
    assert sorted(lp.kept + lp.pruned) == list(range(n))
    assert not set(lp.kept) & set(lp.pruned)
    assert lp.pruned == sorted(lp.pruned)
    assert lp.kept == sorted(lp.kept)
    g = groups.n_group if groups else 1
    size = n // g
    sign = -1.0 if direction == HIGHER_PRUNED else 1.0

    def key(j: int) -> tuple[float, int]:  # pruning order: smaller goes first
        return (sign * scores[j], j)

    for start in range(0, n, size):
        block = set(range(start, start + size))
        pruned = [j for j in lp.pruned if j in block]
        kept = [j for j in lp.kept if j in block]
        assert len(pruned) == p // g
        if pruned and kept:
            # no kept expert is strictly worse than a pruned one of its group; ties go lower id first
            assert max(key(j) for j in pruned) < min(key(j) for j in kept)
            if direction == LOWER_PRUNED:
                assert max(scores[j] for j in pruned) <= min(scores[j] for j in kept)
            else:
                assert min(scores[j] for j in pruned) >= max(scores[j] for j in kept)
    assert select(list(scores), direction, p, groups) == lp


@settings(max_examples=100, deadline=None)
@given(case=layer_case())
def test_select_negated_scores_in_the_other_direction_agree(case: tuple[list[float], str, int, Groups | None]) -> None:
    scores, direction, p, groups = case
    flipped = HIGHER_PRUNED if direction == LOWER_PRUNED else LOWER_PRUNED
    assert select([-s for s in scores], flipped, p, groups) == select(scores, direction, p, groups)


# --- the random criterion ------------------------------------------------------------------------


def _random(layers: list[int], seed: int, n: int = 8) -> dict[int, list[float]]:
    return score_layers({i: WeightMoments.zeros(n) for i in layers}, "random", seed)


def test_random_is_seeded_by_seed_and_layer() -> None:
    c = WEIGHT_CRITERIA["random"]
    assert c.direction == LOWER_PRUNED
    assert not c.needs_weights
    a = c.score(WeightMoments.zeros(8), 3, 0)
    assert a == c.score(WeightMoments.zeros(8), 3, 0)
    assert len(a) == 8 and len(set(a)) == 8
    assert all(0.0 <= v < 1.0 for v in a)
    assert a != c.score(WeightMoments.zeros(8), 3, 1)  # another seed
    assert a != c.score(WeightMoments.zeros(8), 4, 0)  # another layer
    assert c.score(WeightMoments.zeros(8), 1, 2) != c.score(WeightMoments.zeros(8), 2, 1)  # (seed, layer) is ordered


def test_random_is_independent_of_layer_order_and_of_other_layers() -> None:
    full = _random([1, 2, 3, 4], seed=5)
    backwards = _random([4, 3, 2, 1], seed=5)
    assert full == backwards
    assert _random([3], seed=5)[3] == full[3]
    assert _random([7, 3], seed=5)[3] == full[3]


def test_random_does_not_depend_on_the_weights() -> None:
    m = WeightMoments(np.full(8, 10.0), np.arange(8.0), np.arange(8.0) ** 2)
    assert WEIGHT_CRITERIA["random"].score(m, 2, 9) == WEIGHT_CRITERIA["random"].score(WeightMoments.zeros(8), 2, 9)


def test_random_selection_varies_with_seed() -> None:
    picks = {tuple(select(_random([1], seed=s)[1], LOWER_PRUNED, 4, None).pruned) for s in range(20)}
    assert len(picks) > 5
