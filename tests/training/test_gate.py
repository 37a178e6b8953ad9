"""The promotion gate on per-photo correctness: noise decides nothing, a significant loss keeps the live model."""

from __future__ import annotations

import numpy as np
import pytest

from mountainid.training.gate import decide

MIN_TEST = 50  # the default of MOUNTAINID_PROMOTION_MIN_TEST


def right(both: int, live_only: int, new_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-photo correctness of a live and a new model over the same photos, from the four counts."""
    live = [True] * both + [True] * live_only + [False] * new_only + [False] * neither
    new = [True] * both + [False] * live_only + [True] * new_only + [False] * neither
    return np.array(live), np.array(new)


def test_a_clearly_better_model_is_promoted() -> None:
    gate = decide(*right(60, 2, 15, 23), MIN_TEST)
    assert gate.promote and gate.reason == "significantly better"
    assert gate.p_value < 0.05 and gate.difference_interval[0] > 0
    assert (gate.live_top1, gate.new_top1, gate.compared_on) == (0.62, 0.75, 100)


def test_a_clearly_worse_model_is_kept_out() -> None:
    gate = decide(*right(60, 15, 2, 23), MIN_TEST)
    assert not gate.promote and gate.reason == "significantly worse"
    assert gate.difference_interval[1] < 0


@pytest.mark.parametrize(("live_only", "new_only"), [(6, 3), (3, 6), (4, 4), (0, 0)])
def test_a_difference_within_noise_promotes_the_new_model(live_only: int, new_only: int) -> None:
    """Slightly worse, slightly better or equal on enough photos: not significantly worse, so promoted."""
    gate = decide(*right(60, live_only, new_only, 40 - live_only - new_only), MIN_TEST)
    assert gate.promote and gate.reason == "not significantly worse"
    low, high = gate.difference_interval
    assert low <= (new_only - live_only) / 100 <= high


def test_the_exact_test_needs_six_to_none_on_discordant_photos() -> None:
    assert decide(*right(50, 5, 0, 45), MIN_TEST).promote  # p = 0.0625: could be chance
    assert not decide(*right(50, 6, 0, 44), MIN_TEST).promote  # p = 0.031


def test_a_coin_flip_on_a_tiny_test_set_keeps_the_live_model() -> None:
    live, new = right(10, 1, 4, 5)  # the new model looks 15 points better, on 20 photos
    gate = decide(live, new, MIN_TEST)
    assert not gate.promote and gate.reason == "too few test photos to compare"
    assert gate.new_top1 > gate.live_top1 and gate.compared_on == 20
    assert decide(live, new, 20).promote  # at the minimum it is compared
    empty = decide(np.zeros(0, bool), np.zeros(0, bool), MIN_TEST)  # every test photo was a live training photo
    assert not empty.promote and empty.compared_on == 0


def test_the_decision_and_its_figures_go_to_the_log_and_metrics() -> None:
    assert decide(*right(60, 15, 2, 23), MIN_TEST).figures() == {
        "decision": "keep", "reason": "significantly worse", "compared_on": 100, "test_top1_same_photos": 0.75,
        "test_top1_new": 0.62, "right_only_live": 15, "right_only_new": 2, "mcnemar_p": 0.0023,
        "difference_interval": [-0.21, -0.06], "min_test": 50}


def test_models_scored_on_different_photos_are_refused() -> None:
    with pytest.raises(ValueError, match="different photos"):
        decide(np.ones(10, bool), np.ones(9, bool), MIN_TEST)
