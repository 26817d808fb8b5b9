"""Seeding: every random choice of a run derives from the run seed and the chosen item's coordinates.

A stage never shares one generator across items: ``rng_for(seed, "explore", dag_id, step)`` is the
same generator whatever ran before, so a resumed, reordered or parallel run draws what a fresh
sequential one does.
"""

from __future__ import annotations

import random


def rng_for(seed: int, *coords) -> random.Random:
    """A generator derived from the run seed and an item's coordinates (scalars: ids, indices).

    >>> rng_for(0, "explore", "dag-1", 2).random() == rng_for(0, "explore", "dag-1", 2).random()
    True
    """
    # random.Random hashes a str seed with SHA-512: cheap, and the same on every machine
    return random.Random("\x1f".join(str(c) for c in (seed, *coords)))
