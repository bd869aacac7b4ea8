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
from ..config import MemoryConfig
from ..reading import read
from ..stats import markdown
from .rows import rows_session, spec

EVICTING = ("ebbinghaus", "ebbinghaus_seed", "streaming", "h2o", "tova", "snapkv", "random")
"""The evicting policies compared by default; ``full`` (no eviction) is always added as the reference."""


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
    specs = [spec(p) for p in policies]
    cfg = eval_config(llm, budget, sink_tokens, recent_window, config)
    one_pass = prefill > 0 and prefill_chunk >= prefill
    largest = max(chunk, prefill_chunk if prefill and not one_pass else 1)
    cfg.check_budget(budget, largest)
    model = llm.model
    seg, total = ids.shape
    rows = ids.to(llm.device).repeat(len(specs), 1)  # row p * seg + s
    session = rows_session(model, specs, cfg, seed=seed, rows_each=seg)
    cache = DynamicCache(config=model.config)
    logprob = torch.full((rows.shape[0], total - 1), float("nan"))
    argmax = torch.zeros((rows.shape[0], total - 1), dtype=torch.long)
    bar = tqdm(total=total, desc=f"budget {budget}", leave=False, disable=not progress)

    def score(a: int, logits: torch.Tensor) -> None:
        """Log p and greedy prediction of every next token inside the text (the chunk read at ``a``)."""
        hi = min(a + logits.shape[1], total - 1)
        if hi > a:
            logprob[:, a:hi], argmax[:, a:hi] = next_token_scores(logits[:, : hi - a], rows[:, a + 1: hi + 1])
        bar.update(logits.shape[1])

    step = lambda x: model(x, cache=cache, use_cache=True).logits  # noqa: E731
    head = min(prefill, total)
    start = time.perf_counter()
    with attached(model, session):
        last = read(step, rows[:, :head], chunk=prefill_chunk, each=score)
        tail = read(step, rows[:, head:], chunk=chunk, each=lambda a, lg: score(head + a, lg))
    last = (tail if tail is not None else last).float()
    seconds = time.perf_counter() - start
    bar.close()
    shape = (len(specs), seg, total - 1)
    return StreamResult(logprob.reshape(shape), argmax.reshape(shape), session.peak_cached, seconds,
                        session if keep_session else None, cache if keep_session else None, last)


@torch.no_grad()
def full_logprobs(llm, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p(next token) and greedy predictions with the full cache: one causal pass per segment."""
    scored = [next_token_scores(llm.model(row[None]).logits[:, :-1], row[None, 1:]) for row in ids.to(llm.device)]
    return torch.cat([lp for lp, _ in scored]), torch.cat([arg for _, arg in scored])


def next_token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log p of ``targets`` ``[rows, n]`` under ``logits`` ``[rows, n, vocab]`` and the greedy
    predictions, both on the CPU."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    return lp.gather(-1, targets[..., None])[..., 0].cpu(), lp.argmax(-1).cpu()


def ppl(logprob: torch.Tensor) -> float:
    lp = logprob[torch.isfinite(logprob)]
    return float(torch.exp(-lp.mean())) if lp.numel() else float("nan")


def table(records: list[dict], value: str, *, cols: str = "budget", rows: str = "policy", fmt: str = "{:.2f}",
          reduce: str = "mean") -> str:
    """A markdown table of ``value`` by ``rows`` x ``cols`` (averaged where several records share a cell)."""
    row_keys = list(dict.fromkeys(r[rows] for r in records))
    col_keys = list(dict.fromkeys(r[cols] for r in records))
    cells: dict[tuple, list[float]] = {}
    for r in records:
        cells.setdefault((r[rows], r[cols]), []).append(float(r[value]))

    def mean(v: list[float] | None) -> str:
        return fmt.format(sum(v) / len(v)) if v else ""

    head = [rows, *(f"{cols} {c}" if c is not None else "no limit" for c in col_keys)]
    return markdown(head, [[rk, *(mean(cells.get((rk, ck))) for ck in col_keys)] for rk in row_keys])

