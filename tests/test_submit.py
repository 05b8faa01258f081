"""How a step's dispatches are cut into submits (``runtime.executor.submit_cuts``)."""

from __future__ import annotations

import pytest

from runtime.executor import FIRST_SHARE, LONG_STEP_ROWS, submit_cuts


@pytest.mark.parametrize("dispatches", [1, 5, 31, 32, 145, 259, 1000])
@pytest.mark.parametrize("seq", [1, 17, LONG_STEP_ROWS, 512])
def test_cuts_cover_the_step_in_order(dispatches, seq):
    cuts = submit_cuts(dispatches, seq)
    assert cuts[0] == 0 and cuts[-1] == dispatches
    assert all(a < b for a, b in zip(cuts, cuts[1:], strict=False))  # no empty submit


def test_short_steps_two_pieces_long_prefills_growing_ones():
    """Decode and short turns: the first ``FIRST_SHARE`` of the dispatches, then the rest (one
    submit below 32 dispatches); a long prefill: pieces ending at 4, 16, 64 (those below half the
    step), then the rest."""
    assert submit_cuts(145, 1) == [0, int(145 * FIRST_SHARE), 145]
    assert submit_cuts(20, 1) == [0, 20]
    assert submit_cuts(259, 512) == [0, 4, 16, 64, 259]
    assert submit_cuts(259, LONG_STEP_ROWS - 1) == [0, int(259 * FIRST_SHARE), 259]
    assert submit_cuts(40, 512) == [0, 4, 16, 40]
