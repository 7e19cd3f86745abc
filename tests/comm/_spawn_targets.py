"""Tiny spawn targets for the tests of ``longlive_kernels.comm._spawn`` (no heavy imports)."""

import time


def fail_on_rank_1(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("boom")
    return rank


def hang_on_rank_1(rank: int, world_size: int) -> int:
    if rank == 1:
        time.sleep(600)
    return rank
