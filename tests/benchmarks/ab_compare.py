"""The two sides of ``ab.py`` and how their rounds are compared.

A difference between A and B counts only beyond the noise the run itself shows between
rounds of the same code (A against A, B against B), on the same machine, minutes apart, and
only when most rounds agree on its direction.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tree:
    """One side: the tree whose code runs (its folder is the processes' cwd and first on
    their ``sys.path``) and the commit it holds."""

    side: str  # "A" (the base ref) or "B" (this tree)
    root: Path
    commit: str


def spread(values: list[float]) -> float:
    """Slowest over fastest of one side's per-round figures (drift over the whole run)."""
    return round(max(values) / min(values), 3)


def neighbour_noise(*sides: list[float]) -> float:
    """The typical factor between two neighbouring rounds of the same code (A against the A
    before it, B against the B before it): the median of max(x/y, y/x) over those pairs.
    Neighbouring rounds are as far apart in time as a round of A and its round of B."""
    factors = [max(x / y, y / x) for rounds in sides for x, y in itertools.pairwise(rounds)]
    return round(statistics.median(factors), 3) if factors else 1.0


def reading(*, paired: float, noise: float, b_slower: int, rounds: int) -> str:
    """A change only when B's paired ratio lies beyond the A/A noise and most rounds agree
    (three in four); anything else is within noise."""
    if paired > noise and b_slower * 4 >= rounds * 3:
        return "slower beyond noise"
    if paired < 1 / noise and (rounds - b_slower) * 4 >= rounds * 3:
        return "faster beyond noise"
    return "within noise"


def compare_sides(
    *, a_rounds: list[float], b_rounds: list[float], a: float, b: float
) -> dict[str, Any]:
    """B against A: the ratio of the medians (``a``, ``b``); the median of the per-round
    ratios (B's round over A's in the same round, which cancels slow drift); the ratio of
    the best rounds; the noise between neighbouring rounds of the same code; how many rounds
    B was the slower."""
    paired = round(statistics.median(y / x for x, y in zip(a_rounds, b_rounds, strict=True)), 3)
    noise = neighbour_noise(a_rounds, b_rounds)
    b_slower = sum(y > x for x, y in zip(a_rounds, b_rounds, strict=True))
    return {
        "ratio_b_a": round(b / a, 3),
        "paired_ratio_b_a": paired,
        # The least disturbed round of each: on a shared machine, the closest to the code's cost.
        "best_ratio_b_a": round(min(b_rounds) / min(a_rounds), 3),
        "noise": noise,
        "spread_a": spread(a_rounds),
        "spread_b": spread(b_rounds),
        "b_slower_rounds": b_slower,
        "rounds": len(a_rounds),
        "reading": reading(paired=paired, noise=noise, b_slower=b_slower, rounds=len(a_rounds)),
    }
