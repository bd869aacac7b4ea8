"""Policies side by side: one evicting session whose batch rows are ranked by several policies.

Batch rows never interact in a forward pass, so P policies on the same text run as P blocks
of rows of one batch (``memollm.policies.PolicyRows``), each getting what it would get alone.
Every evaluation builds its rows here, and answers with the one greedy decoder.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from transformers import DynamicCache, LogitsProcessorList, RepetitionPenaltyLogitsProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..attention import model_lock, received_attention
from ..cache import SlotLayout
from ..config import POLICIES, MemoryConfig
from ..policies import PolicyRows, make_policy
from ..reading import decode
from ..session import MemorySession
from ..strength import find_gate

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


class PrefillCapture:
    """Attached for one full-cache prefill that several sessions then adopt: sdpa for the output,
    and per layer the attention each token gets from the last ``observation_window`` queries, per
    KV head (what a session scores, before pooling). Where a spec's policy learns its strength,
    the gate also reads every token's attention input, as a session would (``strengths``)."""

    def __init__(self, model: torch.nn.Module, specs: Sequence[Spec], config: MemoryConfig) -> None:
        self.window = config.observation_window
        self.received: dict[int, torch.Tensor] = {}
        self.strengths: dict[int, torch.Tensor] = {}  # per layer, [batch, kv heads, tokens] log S
        learns = any(POLICIES[name].needs_strength for _, name, _ in map(spec, specs) if name in POLICIES)
        self.gate = find_gate(model, config.strength_gate) if learns else None

    @property
    def reads_inputs(self) -> bool:
        return self.gate is not None

    def attention_input(self, module, args, kwargs):
        if module.layer_idx in self.gate.index:
            self.strengths[module.layer_idx] = self.gate.read_input(module, args, kwargs)
        return None

    def pre_forward(self, module, args, kwargs):
        return args, kwargs

    def post_forward(self, module, args, kwargs, output):
        return output

    def attend(self, module, query, key, value, attention_mask, **kwargs):
        out = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        self.received[module.layer_idx] = received_attention(query, key, attention_mask, kwargs.get("scaling"),
                                                             window=self.window, per_kv_head=True)
        return out


def rows_from_prefill(model: torch.nn.Module, specs: Sequence[Spec], config: MemoryConfig, prefilled,
                      capture: PrefillCapture, *, seed: int = 0,
                      rows_each: int = 1) -> tuple[MemorySession, DynamicCache]:
    """``rows_session`` over copies of one prefill that it compresses at once, as if each
    policy had read the prompt itself (``capture``: what the prefill's last queries gave each
    token, and the learned strengths where a policy needs them)."""
    session = rows_session(model, specs, config, seed=seed, rows_each=rows_each)
    n = len(specs)
    cache = copy_prefill(model, prefilled, n)
    with model_lock(model):
        session.adopt_prefill(cache, {l: r.repeat(n, 1, 1) for l, r in capture.received.items()},
                              {l: s.repeat(n, 1, 1) for l, s in capture.strengths.items()})
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


__all__ = ["RUN_KNOBS", "PrefillCapture", "Spec", "copy_prefill", "greedy", "rows_from_prefill", "rows_session", "spec"]
