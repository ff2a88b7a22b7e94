"""Deterministic subsets of items: the same questions on every run and for every model."""

from __future__ import annotations

import hashlib
import math

from paw.errors import PawError
from paw.tasks.items import MCItem


def _rank(item: MCItem, seed: int) -> bytes:
    # A content hash, not random.Random over positions: an item's rank depends only on (seed, task, id), so a
    # smaller ratio picks a subset of a larger one, and Python's per-process hash salt plays no part.
    return hashlib.sha256(f"{seed}\0{item.task}\0{item.id}".encode()).digest()


def sample_items(items: list[MCItem], ratio: float, seed: int = 1234) -> list[MCItem]:
    """The `ratio` share of `items` (rounded half up) with the lowest seeded hash of their ids, in input order.

    Nested: for one seed, the items kept at a smaller ratio are all kept at a larger one. ratio 1.0 keeps all.
    """
    if not 0.0 < ratio <= 1.0:
        raise PawError(f"sample ratio {ratio} is out of range; valid: 0 < ratio <= 1; pass e.g. 0.1 for 10%")
    count = math.floor(ratio * len(items) + 0.5)
    if count == 0:
        raise PawError(
            f"sample ratio {ratio} of {len(items)} items selects none; valid: ratio >= {0.5 / max(len(items), 1):.2g}; "
            "raise the ratio or load more items"
        )
    if count == len(items):
        return list(items)
    ranked = sorted(range(len(items)), key=lambda index: (_rank(items[index], seed), index))
    return [items[index] for index in sorted(ranked[:count])]
