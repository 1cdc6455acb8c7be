"""Process-group set-up for the trainer: :mod:`ibot.distributed`, where evaluation finds it too."""

from ibot.distributed import (DistInfo, all_gather_objects, any_over_processes, barrier, cleanup, init_distributed,
                              union_over_processes)

__all__ = ["DistInfo", "all_gather_objects", "any_over_processes", "barrier", "cleanup", "init_distributed",
           "union_over_processes"]
