"""Lesson figures for the review rules from memory research (notebook 01): what a review adds
when it is massed or spaced, and the fading trace that the default eviction policy ranks by.

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


def trace_after_retrievals(config: MemoryConfig, retrievals: Sequence[int], steps: int = 400,
                           attention: float = 0.3) -> np.ndarray:
    """The trace (``config.trace``) of one token that a query retrieves with ``attention`` at the
    tokens read in ``retrievals`` and never otherwise, as the eviction policy keeps it."""
    mem = EbbinghausMemory(1, config, traces=True)
    mem.append(1, 2)  # token 0 is a sink; token 1 is the one retrieved
    out = []
    for t in range(1, steps + 1):
        mem.append(1, 1)
        received = torch.zeros(1, 1, mem.num_tokens)
        if t in retrievals:
            received[0, 0, 1] = attention
        mem.reinforce(received, mem.num_tokens)
        out.append(float(mem.trace_score()[0, 0, 1]))
    return np.array(out)


def plot_review_rules(gaps: Sequence[int] = (5, 300), *, reviews: int = 5, steps: int = 400, budget: int = 256):
    """Left: strength after massed and spaced reviews under the seed's additive rule and FSRS's.
    Right: the default's fading trace of a token retrieved once, or every 100 tokens (``budget``)."""
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
    default = MemoryConfig(sink_tokens=1, memory_budget=budget)
    right.plot(x, trace_after_retrievals(default, [10], steps), label="retrieved once, at token 10")
    right.plot(x, trace_after_retrievals(default, range(10, steps, 100), steps), "--",
               label="retrieved every 100 tokens")
    right.set_xlabel("tokens read")
    right.set_ylabel("trace (attention, fading)")
    right.set_title(f"the trace the default ranks by (budget {budget})", fontsize=10)
    right.set_ylim(0, 0.42)
    right.legend(fontsize=8, loc="upper right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig
