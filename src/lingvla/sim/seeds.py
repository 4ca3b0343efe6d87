"""Seed ranges: demonstrations and evaluation never share an initial pose.

Demonstrations use seeds [DEMO_SEED_START, EVAL_SEED_START); evaluation uses seeds from
EVAL_SEED_START up to the largest seed NumPy's RandomState accepts. Every producer of
demonstrations calls `check_demo_seeds`, every evaluator `check_eval_seeds`.
"""

from __future__ import annotations

from collections.abc import Iterable

DEMO_SEED_START = 0
EVAL_SEED_START = 100_000
SEED_END = 2**32  # exclusive: RandomState seeds are 32-bit


class SeedRangeError(ValueError):
    """A seed outside the range its use is allowed."""


def check_demo_seeds(seeds: Iterable[int]) -> None:
    for seed in seeds:
        if not DEMO_SEED_START <= seed < EVAL_SEED_START:
            raise SeedRangeError(
                f"demonstration seed {seed} is outside [{DEMO_SEED_START}, {EVAL_SEED_START}); "
                f"seeds from {EVAL_SEED_START} on are reserved for evaluation")


def check_eval_seeds(seeds: Iterable[int]) -> None:
    for seed in seeds:
        if not EVAL_SEED_START <= seed < SEED_END:
            raise SeedRangeError(
                f"evaluation seed {seed} is outside [{EVAL_SEED_START}, {SEED_END}); seeds below "
                f"{EVAL_SEED_START} are demonstration seeds")


def demo_seeds(count: int, start: int = DEMO_SEED_START) -> range:
    seeds = range(start, start + count)
    check_demo_seeds([seeds.start, seeds.stop - 1] if count else [])
    return seeds


def eval_seeds(count: int, start: int = EVAL_SEED_START) -> range:
    seeds = range(start, start + count)
    check_eval_seeds([seeds.start, seeds.stop - 1] if count else [])
    return seeds
