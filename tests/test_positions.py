"""step/positions.py: which batches an epoch reads."""
from step.positions import inf_loop


def test_inf_loop_restarts_the_iterable():
    loop = inf_loop([1, 2])
    assert [next(loop) for _ in range(5)] == [1, 2, 1, 2, 1]
