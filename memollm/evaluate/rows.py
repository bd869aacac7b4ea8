"""Policies side by side: one evicting session whose batch rows are ranked by several policies.

Batch rows never interact in a forward pass, so P policies on the same text run as P blocks
of rows of one batch (``memollm.policies.PolicyRows``), each getting what it would get alone.
Every evaluation builds its rows here, and answers with the one greedy decoder.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from ..attention import model_lock
from ..cache import SlotLayout
from ..config import MemoryConfig
from ..policies import PolicyRows, make_policy
from ..reading import decode
from ..session import MemorySession

Spec = Union[str, tuple[str, str, Union[MemoryConfig, None]]]
"""A policy name, or ``(label, name, MemoryConfig)``: a variant with its own settings."""

RUN_KNOBS = ("memory_budget", "sink_tokens", "recent_window", "granularity", "observation_window", "observation_pool")
"""What a run sets for every row; a variant keeps its other knobs."""


def spec(p: Spec) -> tuple[str, str, MemoryConfig | None]:
    """``(label, policy name, own config or None)`` of a policy spec."""
    if isinstance(p, str):
        return p, p, None
    label, name, cfg = p
    return label, name, cfg


def rows_session(model: torch.nn.Module, specs: Sequence[Spec], config: MemoryConfig, *, seed: int = 0,
                 rows_each: int = 1) -> MemorySession:
    """One evicting session ranking ``rows_each`` batch rows per spec, in order. Each variant's
    own config is honoured, with the run's ``RUN_KNOBS`` from ``config``; policy ``i`` is seeded
    ``seed + i``."""
    layout = SlotLayout.of(model, config, "evict")
    device = next(model.parameters()).device
    built = []
    for i, (_, name, own) in enumerate(spec(p) for p in specs):
        if name == "full":
            raise ValueError("'full' never evicts: it is the reference, run it without a session")
        cfg = (own or config).replace(**{k: getattr(config, k) for k in RUN_KNOBS}, policy=name)
        built.append(make_policy(name, cfg, layout.state_layers, seed=seed + i, device=device))
    return MemorySession(model, "evict", config, seed=seed, layout=layout,
                         policy=PolicyRows(built, rows_each * layout.units))


def copy_prefill(model: torch.nn.Module, prefilled, copies: int) -> DynamicCache:
    """A new cache holding ``copies`` copies of a prefill's ``(keys, values)`` per layer (decoding
    appends by concatenation, so the prefill itself stays intact for the next reader)."""
    cache = DynamicCache(config=model.config)
    for i, (k, v) in enumerate(prefilled):
        cache.update(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1), i)
    return cache


def rows_from_prefill(model: torch.nn.Module, specs: Sequence[Spec], config: MemoryConfig, prefilled, received,
                      *, seed: int = 0, rows_each: int = 1) -> tuple[MemorySession, DynamicCache]:
    """``rows_session`` over copies of one prefill that it compresses at once, as if each
    policy had read the prompt itself (``received``: the attention the prefill's last queries
    gave each token, per layer)."""
    session = rows_session(model, specs, config, seed=seed, rows_each=rows_each)
    n = len(specs)
    cache = copy_prefill(model, prefilled, n)
    with model_lock(model):
        session.adopt_prefill(cache, {l: r.repeat(n, 1, 1) for l, r in received.items()})
    return session, cache


@torch.no_grad()
def greedy(model: torch.nn.Module, cache, n: int, first_logits: torch.Tensor, *, context: torch.Tensor | None = None,
           repetition_penalty: float = 1.0, processors: LogitsProcessorList | None = None) -> torch.Tensor:
    """Greedy tokens ``[rows, n]`` after a prefilled cache (a session, if any, stays attached by
    the caller); with ``repetition_penalty`` the tokens of ``context`` and those generated are penalised."""
    procs = LogitsProcessorList(processors or [])
    if repetition_penalty != 1.0:
        procs.insert(0, RepetitionPenaltyLogitsProcessor(repetition_penalty))
    step = lambda x: model(x, cache=cache, use_cache=True).logits  # noqa: E731
    return decode(step, first_logits, n, processors=procs or None, context=context).tokens


__all__ = ["RUN_KNOBS", "Spec", "copy_prefill", "greedy", "rows_from_prefill", "rows_session", "spec"]
