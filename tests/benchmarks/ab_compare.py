"""The two sides of ``ab.py`` and how their rounds are compared.

A difference between A and B counts only beyond the noise the run itself shows: the spread
between one side's own rounds (A against A, B against B), on the same machine, minutes apart.
"""

from __future__ import annotations

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
    """Slowest over fastest of one side's per-round figures: the noise between its rounds."""
    return round(max(values) / min(values), 3) if min(values) > 0 else float("inf")


def reading(ratio: float, noise: float) -> str:
    if ratio > noise:
        return "slower beyond noise"
    if ratio < 1 / noise:
        return "faster beyond noise"
    return "within noise"


def compare_sides(
    *, a_rounds: list[float], b_rounds: list[float], a: float, b: float
) -> dict[str, Any]:
    """B against A: the ratio of the medians (``a``, ``b``), each side's spread between its own
    rounds, how many rounds B was the slower (paired in the order they ran), and whether the
    ratio lies beyond the larger spread."""
    ratio = round(b / a, 3)
    return {
        "ratio_b_a": ratio,
        "spread_a": spread(a_rounds),
        "spread_b": spread(b_rounds),
        "b_slower_rounds": sum(y > x for x, y in zip(a_rounds, b_rounds, strict=True)),
        "rounds": len(a_rounds),
        "reading": reading(ratio, max(spread(a_rounds), spread(b_rounds))),
    }
