"""Whole-run progress of a local retrain (fruitpipe.backends.local_run.Progress): one percent that
never goes backwards, stage weights from measured durations, an ETA."""

from __future__ import annotations

from fruitpipe.backends.local_run import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_percent_is_monotonic_across_stages_that_restart_their_own_percent():
    clock = Clock()
    p = Progress([("prepare", 2), ("embed", 10), ("fit", 40), ("evaluate", 8)], clock=clock)
    seen = []
    for stage, seconds, steps in (("prepare", 2, 2), ("embed", 12, 4), ("fit", 30, 5), ("evaluate", 8, 4)):
        p.enter(stage)
        for i in range(1, steps + 1):
            clock.t += seconds / steps
            p.within(i / steps)  # each stage's own progress goes 0 -> 100 again
            seen.append(p.percent())
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen
    assert seen[-1] <= 99.0 and seen[0] > 0
    measured = p.finish()
    assert [name for name, _ in measured] == ["prepare", "embed", "fit", "evaluate"]
    assert [round(s) for _, s in measured] == [2, 12, 30, 8]


def test_weights_follow_the_plan_and_unknown_stages_do_not_jump():
    clock = Clock()
    p = Progress([("a", 10), ("b", 90)], clock=clock)
    p.enter("a")
    p.within(1.0)
    assert p.percent() == 10.0  # a is done: 10 of 100 expected seconds
    p.enter("surprise")  # not in the plan: weightless
    clock.t += 50
    assert p.percent() == 10.0
    p.enter("b")
    p.within(0.5)
    assert p.percent() == 55.0


def test_time_moves_a_stage_without_progress_lines_but_not_past_95_percent_of_it():
    clock = Clock()
    p = Progress([("fit", 100)], clock=clock)
    p.enter("fit")
    clock.t = 50
    assert p.percent() == 50.0
    clock.t = 500
    assert p.percent() == 95.0


def test_eta_scales_with_the_observed_speed():
    clock = Clock()
    p = Progress([("a", 10), ("b", 10)], clock=clock)
    p.enter("a")
    clock.t = 20  # twice as slow as expected
    p.within(1.0)
    assert p.eta() == 20.0  # 10 expected seconds left, at half speed
