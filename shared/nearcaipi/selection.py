"""Selection strategies of the interactive loop: which pool images a reviewer gets, and what joins training.

| strategy    | chooses                               | adds to training                                     |
| random      | b random pool images                  | them, labelled                                       |
| al          | the b least confident (lowest max p)  | them, labelled                                       |
| near_al     | as al                                 | them, plus near hit and near miss of each wrong one  |
| caipi       | as al; the explanation is reviewed    | them, plus refutations of each                       |
| near_caipi  | as caipi                              | them, their near hits and misses, refutations of all |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # Only a type here: without PyTorch at import time, the settings and the console can read the strategies.
    from nearcaipi.similarity import SimilarityIndex

STRATEGIES = ("random", "al", "near_al", "caipi", "near_caipi")
STRATEGY_TITLES = {
    "random": "Random add",
    "al": "AL",
    "near_al": "Near AL",
    "caipi": "CAIPI",
    "near_caipi": "Near CAIPI",
}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return name


def uses_neighbours(strategy: str) -> bool:
    return strategy in ("near_al", "near_caipi")


def uses_refutations(strategy: str) -> bool:
    return strategy in ("caipi", "near_caipi")


def choose_for_review(
    strategy: str, pool_keys: Sequence[str], p_nok: np.ndarray, budget: int, rng: np.random.Generator
) -> list[str]:
    """Pick up to ``budget`` pool images: at random for "random", else the least confident first.

    Confidence is the larger of p_nok and 1 - p_nok; ties keep pool order, so the choice is deterministic.
    """
    check_strategy(strategy)
    count = min(budget, len(pool_keys))
    if strategy == "random":
        picked = rng.choice(len(pool_keys), size=count, replace=False)
    else:
        confidence = np.maximum(p_nok, 1.0 - p_nok)
        picked = np.argsort(confidence, kind="stable")[:count]
    return [pool_keys[index] for index in picked]


@dataclass(frozen=True)
class Additions:
    """Images that one iteration moves from the pool into training."""

    reviewed: list[str]
    neighbours: list[str]
    refute: list[str]
    """Keys whose refutations join training as well (the reviewed and, for near_caipi, their neighbours)."""


def plan_additions(
    strategy: str,
    reviewed: Sequence[str],
    predicted_class: dict[str, int],
    true_class: dict[str, int],
    index: SimilarityIndex | None,
) -> Additions:
    """Decide the training additions of one iteration after the (simulated) reviewer labelled ``reviewed``.

    Near hits and misses are looked up for each wrongly predicted reviewed image, by its reviewed label, in an
    index of the pool whose classes are predictions. The reviewed images themselves are never neighbours.
    """
    check_strategy(strategy)
    reviewed = list(reviewed)
    neighbours: list[str] = []

    if uses_neighbours(strategy):
        if index is None:
            raise ValueError(f"strategy {strategy} needs a similarity index of the pool")
        already_added = set(reviewed)
        for key in reviewed:
            if predicted_class[key] == true_class[key]:
                continue
            found = index.nearest_to_key(key, true_class[key])
            for neighbour in (found.near_hit, found.near_miss):
                if neighbour is not None and neighbour.key not in already_added:
                    neighbours.append(neighbour.key)
                    already_added.add(neighbour.key)

    refute: list[str] = []
    if uses_refutations(strategy):
        refute = reviewed + neighbours if strategy == "near_caipi" else list(reviewed)
    return Additions(reviewed=reviewed, neighbours=neighbours, refute=refute)
