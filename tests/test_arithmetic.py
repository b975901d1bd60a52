"""The arithmetic of a whole run (runner/arithmetic.py) and the figures `list` shows from the ladder."""
import pytest

import configs  # noqa: F401  (the built-in rows)
from ladder import BUILT_IN
from runner.arithmetic import run_tflop
from runner.ladder_files import TFLOP_TOLERANCE

# Version 1's MLP (784-100-10) by hand: a matrix product of m x k by k x n is 2mkn FLOP. A training image costs the
# forward pass, the gradients of both weight matrices and the gradient of the hidden layer's input (the image's own
# needs none); 60,000 training images and 10,000 test images, 25 epochs, a test pass each.
FORWARD = 2 * (784 * 100 + 100 * 10)
TRAINING = FORWARD + 2 * (784 * 100) + 2 * (100 * 10) * 2
VERSION_1 = 25 * (60_000 * TRAINING + 10_000 * FORWARD) / 1e12


def test_a_run_of_version_1_counts_what_the_mlp_does_by_hand():
    assert run_tflop(BUILT_IN[1]) == pytest.approx(VERSION_1, rel=1e-9)


def test_each_built_in_rows_stored_figure_is_its_counted_arithmetic():
    counted = {number: run_tflop(row) for number, row in BUILT_IN.items()}
    wrong = {number: (row.tflop, f"{counted[number]:.4g}") for number, row in BUILT_IN.items()
             if row.tflop is None or abs(row.tflop - counted[number]) > TFLOP_TOLERANCE * counted[number]}
    assert not wrong, f"stored and counted TFLOP: {wrong}"


def test_the_final_test_with_test_time_augmentation_costs_six_plain_passes():
    """As scripts/profile_steps.py measured on real images: 0.236 GFLOP for a plain test image of version 13."""
    from dataclasses import replace

    row = BUILT_IN[13]
    without = replace(row, recipe=replace(row.recipe, tta="none"))
    assert run_tflop(row) - run_tflop(without) == pytest.approx(6 * 10_000 * 0.236e9 / 1e12, rel=0.01)
