"""Streaming text through the model with the cache held to a budget, policies side by side.

Every evaluation feeds tokens with the KV cache held to a budget by an eviction policy
(``generation_mode="evict"``) and compares policies on the same tokens in one run: they run
as blocks of batch rows of one forward pass (``memollm.policies.PolicyRows``); rows never
interact, and on a CPU a batch costs little more than one row. The ``full`` reference is one
causal forward pass per segment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..attention import attached
from ..cache import slot_units
from ..config import MemoryConfig
from ..policies import PolicyRows, make_policy
from ..session import MemorySession

EVICTING = ("ebbinghaus", "ebbinghaus_tuned", "ebbinghaus_fixed", "streaming", "h2o", "tova", "random")
"""The evicting policies compared by default; ``full`` (no eviction) is always added as the reference."""


def _spec(spec) -> tuple[str, str, MemoryConfig | None]:
    if isinstance(spec, str):
        return spec, spec, None
    label, name, cfg = spec
    return label, name, cfg


def eval_config(llm, budget: int, sink_tokens: int | None = None, recent_window: int | None = None,
                config: MemoryConfig | None = None) -> MemoryConfig:
    changes = {"memory_budget": budget, "sink_tokens": sink_tokens, "recent_window": recent_window}
    return (config or llm.config).replace(**{k: v for k, v in changes.items() if v is not None})


@dataclass
class StreamResult:
    logprob: torch.Tensor  # [policies, segments, steps]: log p(next token), NaN where not scored
    argmax: torch.Tensor  # [policies, segments, steps]: greedy prediction for the next token
    peak_kv_tokens: int
    seconds: float
    session: Any = None
    cache: Any = None
    last_logits: torch.Tensor | None = None  # [rows, vocab]


@torch.no_grad()
def stream(llm, ids: torch.Tensor, policies: Sequence, budget: int, *, sink_tokens: int | None = None,
           recent_window: int | None = None, chunk: int = 1, prefill: int = 0, prefill_chunk: int = 64,
           seed: int = 0, config: MemoryConfig | None = None, progress: bool = False,
           keep_session: bool = False) -> StreamResult:
    """Feed ``ids`` ``[segments, T]`` through the model once per policy, the cache held to ``budget``.

    The first ``prefill`` tokens are read in chunks of ``prefill_chunk`` (a long prompt),
    the rest in chunks of ``chunk`` (1 = token by token, the StreamingLLM protocol). Before
    each chunk the session evicts down to ``budget - len(chunk)``, so the cache never holds
    more than ``budget`` tokens. A ``prefill_chunk`` of at least ``prefill`` reads the prompt
    in one pass and compresses it afterwards (question-aware: the policies see what the
    prompt's last queries look at; the cache peaks at the whole prompt). ``policies``: names
    from ``POLICIES`` (not ``full``) or ``(label, name, MemoryConfig)`` tuples (variants); the
    eviction knobs and ``granularity`` come from ``config`` and hold for every row.
    """
    specs = [_spec(p) for p in policies]
    cfg = eval_config(llm, budget, sink_tokens, recent_window, config)
    one_pass = prefill > 0 and prefill_chunk >= prefill
    largest = max(chunk, prefill_chunk if prefill and not one_pass else 1)
    cfg.check_budget(budget, largest)
    model = llm.model
    device = llm.device
    seg, total = ids.shape
    rows = ids.to(device).repeat(len(specs), 1)  # row p * seg + s
    state_layers, units = slot_units(model, cfg)
    built = []
    for i, (label, name, pcfg) in enumerate(specs):
        if name == "full":
            raise ValueError("'full' never evicts: it is the reference, computed by full_logprobs")
        pc = (pcfg or cfg).replace(memory_budget=cfg.memory_budget, sink_tokens=cfg.sink_tokens,
                                   recent_window=cfg.recent_window, granularity=cfg.granularity,
                                   observation_window=cfg.observation_window,
                                   observation_pool=cfg.observation_pool, policy=name)
        built.append(make_policy(name, pc, state_layers, seed=seed + i, device=device))
    session = MemorySession(model, "evict", cfg.replace(policy="streaming"), seed=seed,
                            policy=PolicyRows(built, seg * units))

    cache = DynamicCache(config=model.config)
    logprob = torch.full((rows.shape[0], total - 1), float("nan"))
    argmax = torch.zeros((rows.shape[0], total - 1), dtype=torch.long)
    bounds = list(range(0, min(prefill, total), prefill_chunk)) + list(range(min(prefill, total), total, chunk))
    bounds.append(total)
    bar = tqdm(total=total, desc=f"budget {budget}", leave=False, disable=not progress)
    start = time.perf_counter()
    last = None
    with attached(model, session):
        for a, b in zip(bounds[:-1], bounds[1:]):
            out = model(rows[:, a:b], cache=cache, use_cache=True)
            logits = out.logits.float()
            last = logits[:, -1]
            hi = min(b, total - 1)
            if hi > a:
                lp = torch.log_softmax(logits[:, : hi - a], dim=-1)
                target = rows[:, a + 1: hi + 1]
                logprob[:, a:hi] = lp.gather(-1, target[..., None])[..., 0].cpu()
                argmax[:, a:hi] = lp.argmax(-1).cpu()
            bar.update(b - a)
    seconds = time.perf_counter() - start
    bar.close()
    shape = (len(specs), seg, total - 1)
    return StreamResult(logprob.reshape(shape), argmax.reshape(shape), session.peak_cached, seconds,
                        session if keep_session else None, cache if keep_session else None, last)


@torch.no_grad()
def full_logprobs(llm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(next token) and greedy predictions with the full cache: one causal pass per segment."""
    lps, arg = [], []
    for row in ids.to(llm.device):
        logits = llm.model(row[None]).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1)
        lps.append(lp.gather(-1, row[1:, None])[:, 0].cpu())
        arg.append(lp.argmax(-1).cpu())
    return torch.stack(lps), torch.stack(arg)


def ppl(logprob: torch.Tensor) -> float:
    lp = logprob[torch.isfinite(logprob)]
    return float(torch.exp(-lp.mean())) if lp.numel() else float("nan")


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty on the tokens in ``seen`` ``[rows, k]``."""
    if penalty == 1.0:
        return logits
    got = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(got > 0, got / penalty, got * penalty))


@torch.no_grad()
def _greedy_continue(llm, cache, n: int, first_logits: torch.Tensor, *,
                     context: torch.Tensor | None = None, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Greedy tokens ``[rows, n]`` after a prefilled cache (the session, if any, stays attached by the caller).

    With ``repetition_penalty`` > 1, tokens already in ``context`` or generated are penalised first.
    """
    seen = context if context is not None else torch.zeros(first_logits.shape[0], 0, dtype=torch.long)
    seen = seen.to(first_logits.device)
    nxt = _penalise(first_logits, seen, repetition_penalty).argmax(-1, keepdim=True)
    out = [nxt]
    for _ in range(n - 1):
        seen = torch.cat([seen, nxt], dim=-1)
        logits = llm.model(nxt, cache=cache, use_cache=True).logits[:, -1]
        nxt = _penalise(logits, seen, repetition_penalty).argmax(-1, keepdim=True)
        out.append(nxt)
    return torch.cat(out, dim=-1)


def table(records: list[dict], value: str, *, cols: str = "budget", rows: str = "policy", fmt: str = "{:.2f}",
          reduce: str = "mean") -> str:
    """A markdown table of ``value`` by ``rows`` x ``cols`` (averaged where several records share a cell)."""
    row_keys = list(dict.fromkeys(r[rows] for r in records))
    col_keys = list(dict.fromkeys(r[cols] for r in records))
    cells: dict[tuple, list[float]] = {}
    for r in records:
        cells.setdefault((r[rows], r[cols]), []).append(float(r[value]))
    head = f"| {rows} | " + " | ".join(f"{cols} {c}" if c is not None else "no limit" for c in col_keys) + " |"
    lines = [head, "|" + "---|" * (len(col_keys) + 1)]
    for rk in row_keys:
        vals = []
        for ck in col_keys:
            v = cells.get((rk, ck))
            vals.append(fmt.format(sum(v) / len(v)) if v else "")
        lines.append(f"| {rk} | " + " | ".join(vals) + " |")
    return "\n".join(lines)

