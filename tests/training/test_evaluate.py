"""The "sure" threshold is chosen on held-out answers, for precision shown with 90 % confidence, and the
figures it implies; the paired statistics of two models scored on the same photos."""

from __future__ import annotations

import numpy as np
import pytest

from mountainid.training.evaluate import (
    calibration,
    choose_answer_threshold,
    choose_unknown_threshold,
    confident_figures,
    mcnemar_p,
    metrics,
    open_set_threshold,
    paired_difference_interval,
    summary_line,
    without_own,
)


def probs_of(confidences: list[float], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities whose top class has the given confidence; the target matches it or not."""
    probs = np.array([[c, 1 - c] for c in confidences])
    return probs, np.array([0 if ok else 1 for ok in correct])


def test_threshold_answers_the_most_photos_it_can_promise_are_90_percent_right() -> None:
    # By confidence: 60 right, then one wrong in every five. 91 of all 100 are right, a share that reaches 0.9,
    # but only the 80 most confident show it with 90 % confidence: 76 of 80 (Wilson lower bound 0.909; 76 of
    # 81: 0.895).
    confidences = [0.999 - 0.005 * i for i in range(100)]
    correct = [True] * 60 + ([False] + [True] * 4) * 8
    probs, targets = probs_of(confidences, correct)
    threshold = choose_unknown_threshold(probs, targets)
    assert threshold == confidences[79]
    figures = confident_figures(probs, targets, threshold)
    assert (figures["coverage"], figures["confident_precision"]) == (0.8, 76 / 80)
    assert figures["confident_interval"][0] < 76 / 80 < figures["confident_interval"][1]


def test_ten_right_answers_promise_less_than_thirty() -> None:
    probs, targets = probs_of([0.9 - 0.01 * i for i in range(10)], [True] * 10)
    assert choose_unknown_threshold(probs, targets) > 0.9  # 10 of 10: lower bound 0.859, nothing promised
    probs, targets = probs_of([0.95 - 0.01 * i for i in range(30)], [True] * 30)
    assert choose_unknown_threshold(probs, targets) == pytest.approx(0.66)  # 30 of 30: 0.948, all answered


def test_ties_are_answered_together_and_an_unreachable_precision_answers_nothing() -> None:
    # 40 photos at 0.9 (36 right, the 4 wrong last among them), 20 at 0.8, all right.
    probs, targets = probs_of([0.9] * 40 + [0.8] * 20, [True] * 36 + [False] * 4 + [True] * 20)
    # At 80 %: 36 of 40 give a lower bound of 0.823, 56 of 60 of 0.879; both tie groups are answered.
    assert choose_unknown_threshold(probs, targets, precision=0.8) == 0.8
    # At 90 %: the first 36 alone would show it (0.956), but they are half a tie group; 40 and 60 fall short.
    never = choose_unknown_threshold(probs, targets, precision=0.9)
    assert never > 0.9
    figures = confident_figures(probs, targets, never)
    assert (figures["coverage"], figures["confident_precision"]) == (0.0, 0.0)


def test_unknown_mountains_are_named_at_most_as_often_as_can_be_promised() -> None:
    # 82 held-out photos' best other mountain: 0.99, 0.98, ... Naming 4 of 82 keeps the share under 10 % with
    # 90 % confidence (upper bound 0.089), 5 would not (0.104); the share alone would have allowed 8.
    others = np.stack([np.linspace(0.99, 0.18, 82), 1 - np.linspace(0.99, 0.18, 82)], axis=1)
    threshold = open_set_threshold(others)
    assert int(np.sum(others.max(axis=1) >= threshold)) == 4
    assert open_set_threshold(others[:3]) > 0.99  # three photos promise nothing: above every one of them


def test_summary_line_carries_the_confident_figures() -> None:
    probs, targets = probs_of([0.95, 0.9, 0.6, 0.55], [True, True, False, True])
    figures = metrics(probs, targets, ["a", "b"], threshold=0.9)
    assert summary_line(figures) == "top1=0.750 top3=1.000 n=4 confident_precision=1.000 coverage=0.500"


def test_the_answer_threshold_also_keeps_unknown_mountains_from_being_named() -> None:
    """A model that is right but torn between two neighbours: without its own mountain, one neighbour
    dominates, so a photo of a mountain it does not know would be named; the threshold rises above that."""
    targets = np.arange(40) % 4
    probs = np.full((40, 4), 0.02)
    probs[np.arange(40), targets] = 0.60
    probs[np.arange(40), (targets + 1) % 4] = 0.36  # the neighbour takes the rest
    precise = choose_unknown_threshold(probs, targets)
    assert precise <= 0.60  # every answer is right: precision alone would answer all
    answer = choose_answer_threshold(probs, targets)
    assert answer > 0.60 and answer == pytest.approx(open_set_threshold(without_own(probs, targets)), abs=1e-5)
    # Unknown-mountain stand-ins (own class out, renormalised) reach 0.36 / 0.40 = 0.9: above every answer here.
    assert confident_figures(probs, targets, answer)["coverage"] == 0.0


@pytest.mark.parametrize(("live_only", "new_only", "p"), [
    (1, 9, 22 / 1024),  # R: binom.test(1, 10)$p.value = 0.02148
    (2, 8, 112 / 1024),
    (0, 5, 2 / 32),      # 5 to 0 is not yet significant at 5 % ...
    (6, 0, 2 / 64),      # ... 6 to 0 is
    (5, 5, 1.0),
    (0, 0, 1.0),         # no discordant photo: no evidence either way
])
def test_mcnemar_exact_p_values(live_only: int, new_only: int, p: float) -> None:
    assert mcnemar_p(live_only, new_only) == pytest.approx(p)
    assert mcnemar_p(new_only, live_only) == pytest.approx(p)  # two-sided


def test_mcnemar_stays_exact_on_large_counts() -> None:
    # 600 against 500 discordant photos: the normal approximation with continuity correction gives 0.0028.
    assert mcnemar_p(600, 500) == pytest.approx(0.0028, rel=0.1)
    assert mcnemar_p(5000, 5000) == 1.0


def test_paired_bootstrap_interval_matches_the_normal_one_and_is_seeded() -> None:
    # 10 photos right for the live model only, 20 for the new one, of 100: new - live = +0.10; the per-photo
    # difference has variance 0.30 - 0.01, so a standard error of 0.054.
    low, high = paired_difference_interval(10, 20, 100)
    assert low == pytest.approx(0.10 - 1.96 * 0.0539, abs=0.015)
    assert high == pytest.approx(0.10 + 1.96 * 0.0539, abs=0.015)
    assert paired_difference_interval(10, 20, 100) == (low, high)  # deterministic: the same run, the same figures
    assert paired_difference_interval(10, 20, 100, seed=1) != (low, high)


def test_paired_bootstrap_interval_of_models_that_agree_is_zero() -> None:
    assert paired_difference_interval(0, 0, 100) == (0.0, 0.0)
    assert paired_difference_interval(0, 0, 0) == (-1.0, 1.0)  # no photo: nothing is known


def test_calibration_says_how_often_each_confidence_was_right() -> None:
    """Half the 0.95 answers right is an overconfident model: the error is their gap, weighted by photos."""
    probs, targets = probs_of([0.95] * 10 + [0.55] * 10, [True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    figures = calibration(probs, targets)
    assert [(row["n"], row["accuracy"]) for row in figures["bins"]] == [(10, 0.5), (10, 0.5)]
    assert figures["ece"] == pytest.approx((0.45 * 10 + 0.05 * 10) / 20)
    assert figures["top_share_precision"] == pytest.approx(5 / 6)  # the 6 most confident: 5 right, then 1 wrong
