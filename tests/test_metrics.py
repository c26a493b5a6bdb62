"""Metrics against hand-computed 3x3 matrices."""

import json

import numpy as np
import pytest

from forgetless.metrics import compute, harmonic_mean

ACC = [
    [0.8, 0.1, 0.2],
    [0.6, 0.9, 0.3],
    [0.5, 0.7, 0.6],
]
BASE = [0.1, 0.2, 0.25]


def test_hand_computed_3x3():
    m = compute(ACC, BASE)
    assert m["n_tasks"] == 3
    assert m["ap"] == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert m["learning_accuracy"] == pytest.approx((0.8 + 0.9 + 0.6) / 3)
    assert m["bwt"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)  # -0.25
    assert m["bwt_per_task"] == pytest.approx([-0.3, -0.2])
    assert m["fwt"] == pytest.approx(((0.1 - 0.2) + (0.3 - 0.25)) / 2)  # -0.025
    assert m["fwt_per_task"] == pytest.approx([-0.1, 0.05])
    assert m["forgetting_per_task"] == pytest.approx([0.3, 0.2])
    assert m["forgetting"] == pytest.approx(0.25)
    json.dumps(m)  # plain Python values


def test_forgetting_differs_from_bwt_when_peak_is_later_and_can_be_negative():
    acc = [
        [0.5, 0.0, 0.0],
        [0.9, 0.6, 0.1],
        [0.4, 0.8, 0.7],
    ]
    m = compute(acc)
    assert m["bwt"] == pytest.approx(((0.4 - 0.5) + (0.8 - 0.6)) / 2)  # 0.05
    # task 0 peaked after task 1 (0.9), task 1 improved afterwards: forgetting is not clipped.
    assert m["forgetting_per_task"] == pytest.approx([0.9 - 0.4, 0.6 - 0.8])
    assert m["forgetting"] == pytest.approx(0.15)
    assert m["fwt"] is None and m["fwt_per_task"] == []


def test_forgetting_max_includes_rows_before_the_task_was_trained():
    acc = [
        [0.9, 0.8, 0.0],
        [0.9, 0.5, 0.0],
        [0.9, 0.4, 0.9],
    ]
    m = compute(acc)
    # column 1: max over rows 0..1 is 0.8 (row 0, before training task 1), not 0.5.
    assert m["forgetting_per_task"] == pytest.approx([0.0, 0.4])


def test_single_task_has_no_backward_quantities():
    m = compute([[0.7]], [0.1])
    assert m["ap"] == pytest.approx(0.7)
    assert m["learning_accuracy"] == pytest.approx(0.7)
    assert m["bwt"] is None and m["forgetting"] is None and m["fwt"] is None
    assert m["forgetting_per_task"] == [] and m["bwt_per_task"] == []


def test_accepts_numpy_and_perfect_retention():
    acc = np.triu(np.ones((4, 4))) + np.tril(np.ones((4, 4)), -1)
    m = compute(acc, np.zeros(4))
    assert m["ap"] == 1.0 and m["bwt"] == 0.0 and m["forgetting"] == 0.0 and m["fwt"] == 1.0


@pytest.mark.parametrize(
    "acc, match",
    [
        ([[0.1, 0.2]], "square"),
        ([0.1, 0.2], "square"),
        (np.zeros((0, 0)), "square"),
        ([[0.5, 1.2], [0.1, 0.2]], r"\[0, 1\]"),
        ([[0.5, -0.1], [0.1, 0.2]], r"\[0, 1\]"),
        ([[0.5, float("nan")], [0.1, 0.2]], "NaN"),
    ],
)
def test_invalid_matrix(acc, match):
    with pytest.raises(ValueError, match=match):
        compute(acc)


def test_invalid_baseline():
    with pytest.raises(ValueError, match="length T=2"):
        compute([[0.5, 0.1], [0.4, 0.6]], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="baseline"):
        compute([[0.5, 0.1], [0.4, 0.6]], [0.1, 2.0])


def test_harmonic_mean():
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert harmonic_mean(0.2, 0.8) == pytest.approx(2 * 0.2 * 0.8 / 1.0)  # 0.32
    assert harmonic_mean(0.0, 0.9) == 0.0 and harmonic_mean(0.9, 0.0) == 0.0
    with pytest.raises(ValueError):
        harmonic_mean(-0.1, 0.5)
