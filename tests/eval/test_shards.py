"""How a pass over a dataset is shared out over processes and put back in the one-process order."""

import pytest

from ibot.distributed import DistInfo
from ibot.eval import shards


@pytest.fixture
def as_rank(monkeypatch):
    def set_rank(rank: int, world: int) -> None:
        monkeypatch.setattr(shards, "current", lambda: DistInfo(rank, world))

    return set_rank


def test_batches_go_round_robin_and_come_back_in_order(as_rank):
    one = shards.process_batches(11, 3)
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    per_rank = []
    for rank in range(3):
        as_rank(rank, 3)
        per_rank.append(shards.process_batches(11, 3))
    assert per_rank == [[[0, 1, 2], [9, 10]], [[3, 4, 5]], [[6, 7, 8]]]
    assert shards.interleave(per_rank) == one
    assert shards.process_batches(11, 3, sharded=False) == one  # not shared out: every batch


def test_slices_of_a_batch_make_up_the_batch(as_rank):
    batch = list(range(7))
    parts = []
    for rank in range(3):
        as_rank(rank, 3)
        parts.append(shards.process_slice(batch))
    assert parts == [[0, 1], [2, 3], [4, 5, 6]]
    as_rank(1, 8)
    assert shards.process_slice([5, 6]) == []  # fewer images than processes: some take none
