import pytest

from ibot.schedules import cosine_schedule


def test_cosine_schedule_shape_and_ends():
    sched = cosine_schedule(1.0, 0.1, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    assert len(sched) == 50
    assert sched[0] == 0.0 and sched[9] == pytest.approx(1.0)  # linear warm-up ends at the base value
    assert sched[10] == pytest.approx(1.0) and sched[-1] == pytest.approx(0.1, abs=2e-3)
    assert all(sched[i] >= sched[i + 1] for i in range(10, 49))
    momentum = cosine_schedule(0.996, 1.0, epochs=3, steps_per_epoch=4)
    assert momentum[0] == pytest.approx(0.996) and momentum[-1] == pytest.approx(1.0, abs=1e-4)
