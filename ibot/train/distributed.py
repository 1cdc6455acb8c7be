"""Process-group set-up for the trainer: :mod:`ibot.distributed`, where evaluation finds it too."""

from ibot.distributed import (DistInfo, any_over_processes, barrier, cleanup, init_distributed,
                              union_over_processes)

__all__ = ["DistInfo", "any_over_processes", "barrier", "cleanup", "init_distributed", "union_over_processes"]
