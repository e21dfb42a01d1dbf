"""lst.plots: which recordings of a walk the path figures show."""
import numpy as np

from lst.plots import walk_frames


def test_walk_frames_stop_where_the_walk_stopped_and_thin_out_evenly():
    results = {"log_iters": np.arange(0, 400, 5), "passes": np.array([[0, 41], [401, 0]])}
    # an adaptive walk of 40 steps: recorded at iterations 0, 5, ..., 35, then repeats itself
    assert walk_frames(results, 0, 1) == list(range(8))
    assert walk_frames(results, 0, 1, limit=3) == [0, 4, 7]  # first, middle, last
    # a fixed walk: all 80 recordings, or 12 of them spread from the first to the last
    assert walk_frames(results, 1, 0) == list(range(80))
    twelve = walk_frames(results, 1, 0, limit=12)
    assert len(twelve) == 12 and twelve[0] == 0 and twelve[-1] == 79
    assert walk_frames({"log_iters": np.arange(0, 20, 5)}, 0, 1) == [0, 1, 2, 3]  # no passes
    assert walk_frames(results, 0, 0) == [0]  # a walk that never started (skipped source)
