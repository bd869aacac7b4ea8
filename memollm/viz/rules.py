"""Lesson figures for the review rules from memory research (notebook 01): what a review adds
when it is massed or spaced, and whether routine attention keeps a token young.

Both simulate one token with the library's own :class:`~memollm.memory.EbbinghausMemory`, so
the curves are exactly what generation does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import SEED_RULE, MemoryConfig
from ..memory import EbbinghausMemory


def _step(mem: EbbinghausMemory, share: float = 0.0, *, token: int = 0) -> None:
    """Read one new token; ``token`` receives ``share`` times the uniform attention."""
    mem.append(1, 1)
    n = mem.num_tokens
    received = torch.zeros(1, 1, n)
    received[0, 0, token] = share / n
    mem.reinforce(received, n)


def strength_after_reviews(config: MemoryConfig, gap: int, reviews: int = 5, share: float = 3.0) -> np.ndarray:
    """Strength S of one token after each of ``reviews`` reviews ``gap`` tokens apart (S0 first)."""
    mem = EbbinghausMemory(1, config)
    mem.append(1, 2)  # token 0 is a sink (never a top-p review); token 1 is the one reviewed
    out = [float(mem.strength[0, 0, 1])]
    for _ in range(reviews):
        for _ in range(gap - 1):
            _step(mem)
        _step(mem, share, token=1)
        out.append(float(mem.strength[0, 0, 1]))
    return np.array(out)


def retention_under_routine(config: MemoryConfig, steps: int = 400, share: float = 3.0) -> np.ndarray:
    """Retention R of a token that gets ``share`` x uniform attention at every step (like " the")."""
    mem = EbbinghausMemory(1, config)
    mem.append(1, 2)
    out = []
    for _ in range(steps):
        _step(mem, share, token=1)
        out.append(float(mem.retention()[0, 0, 1]))
    return np.array(out)


def plot_review_rules(gaps: Sequence[int] = (5, 300), *, reviews: int = 5, steps: int = 400):
    """Left: strength after massed and spaced reviews under the seed's additive rule and FSRS's.
    Right: retention of a routinely attended token with and without the surprise test."""
    import matplotlib.pyplot as plt

    seed = MemoryConfig(sink_tokens=1, **SEED_RULE)
    fsrs = seed.replace(stability="fsrs")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    # the seed's additive rule gives the same strengths whatever the gap: one line for all gaps
    left.plot(range(reviews + 1), strength_after_reviews(seed, gaps[0], reviews), color="black", marker="o", ms=4,
              label="seed (additive), any gap")
    for gap, colour in zip(gaps, ("C0", "C1")):
        left.plot(range(reviews + 1), strength_after_reviews(fsrs, gap, reviews), "--", color=colour, marker="o",
                  ms=4, label=f"FSRS, a review every {gap} tokens")
    left.set_xlabel("reviews so far")
    left.set_ylabel("strength S")
    left.set_title("massed vs spaced reviews", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    x = np.arange(1, steps + 1)
    right.plot(x, retention_under_routine(seed, steps), label="seed: every glance is a review")
    right.plot(x, retention_under_routine(seed.replace(review_surprise=2.0), steps), "--",
               label="surprise 2: only above twice its usual share")
    right.set_xlabel("tokens read")
    right.set_ylabel("retention R")
    right.set_ylim(0, 1.05)
    right.set_title("a token attended at every step (3x uniform)", fontsize=10)
    right.legend(fontsize=8, loc="lower left")
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig
