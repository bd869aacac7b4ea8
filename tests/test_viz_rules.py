"""memollm.viz.rules: the review-rule lesson figures simulate what the memory does."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from memollm import MemoryConfig  # noqa: E402
from memollm.config import SEED_RULE  # noqa: E402
from memollm.viz.rules import plot_review_rules, retention_under_routine, strength_after_reviews  # noqa: E402

SEED = MemoryConfig(sink_tokens=1, **SEED_RULE)


def test_seed_rule_adds_the_same_strength_whatever_the_gap():
    assert strength_after_reviews(SEED, 5).tolist() == strength_after_reviews(SEED, 300).tolist()
    assert strength_after_reviews(SEED, 5)[-1] == 5.0 + 5 * 3.0  # S0 + reviews x gain x share


def test_fsrs_rewards_spacing():
    fsrs = SEED.replace(stability="fsrs")
    massed, spaced = strength_after_reviews(fsrs, 5), strength_after_reviews(fsrs, 300)
    assert massed[-1] < 6.0 < 20.0 < spaced[-1]


def test_surprise_lets_a_routine_token_fade():
    assert retention_under_routine(SEED).min() == 1.0  # reviewed at every step: never ages
    assert retention_under_routine(SEED.replace(review_surprise=2.0))[-1] < 0.8


def test_figure_has_two_labelled_panels():
    fig = plot_review_rules()
    left, right = fig.axes
    assert len(left.get_legend().get_texts()) == 3 and len(right.get_lines()) == 2
