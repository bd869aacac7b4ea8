"""Perplexity at equal memory (the StreamingLLM protocol), and along a stream past the context.

``perplexity`` feeds passages one token at a time (``chunk=1``), evicting before each step,
and scores every next token; the first ``budget`` tokens are identical for all policies, so
``perplexity_after_budget`` scores only the tokens read once eviction started, where
policies differ. ``long_stream`` does the same along one text longer than the model's
context, in windows, once per position scheme.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import ConfigError, MemoryConfig
from ..stats import paired_difference
from ..texts import default_text, passages, split_ids, text_half, text_segments
from .core import EVICTING, full_logprobs, ppl, stream
from .rows import spec

def perplexity(llm, *, budgets: Sequence[int] = (64, 128, 256), policies: Sequence = EVICTING,
               max_tokens: int = 512, segments: int = 1, text: str | None = None, split: str = "report",
               sources: Sequence[str] | None = None, granularities: Sequence[str] = ("auto",),
               sink_tokens: int | None = None, recent_window: int | None = None, chunk: int = 1, seed: int = 0,
               config: MemoryConfig | None = None, progress: bool = True) -> list[dict]:
    """Perplexity per policy, granularity, budget and passage: the StreamingLLM protocol.

    Passages: ``segments`` disjoint passages of ``max_tokens`` tokens from each of
    ``sources`` (``memollm.texts.TEXT_SOURCES``: reference docs and a novel) in ``split``
    (``report`` to quote, ``tune`` to tune on), or consecutive segments of ``text``. One
    record per (policy, granularity, budget, passage): ``perplexity`` (all tokens, the
    StreamingLLM convention), ``perplexity_after_budget`` (tokens at positions >= budget only,
    where policies differ), ``top1_agreement_after_budget`` (greedy prediction equals the full
    cache's), ``peak_kv_tokens``, ``seconds``. The ``full`` reference appears once per budget.
    Summarise with ``memollm.stats.summarize(records, value, by=("policy", "granularity",
    "budget"), item="passage", lower_is_better=True)``.
    """
    if sources is not None:
        chosen = passages(llm.tokenizer, max_tokens, segments, sources=sources, split=split)
        ids = torch.stack([p.ids for p in chosen])
        keys = [p.key for p in chosen]
    else:
        ids = text_segments(llm.tokenizer, text if text is not None else default_text(), max_tokens, segments, split)
        keys = [f"text/{i}" for i in range(segments)]
    full_lp, full_arg = full_logprobs(llm, ids)
    records = []
    for budget in budgets:
        entries = [("full", None, full_lp, full_arg, max_tokens, 0.0)]
        for granularity in granularities:
            base = (config or llm.config).replace(granularity=granularity)
            res = stream(llm, ids, policies, budget, sink_tokens=sink_tokens, recent_window=recent_window,
                         chunk=chunk, seed=seed, config=base, progress=progress)
            entries += [(spec(p)[0], base.granularity_for("evict"), res.logprob[i], res.argmax[i], res.peak_kv_tokens, res.seconds)
                        for i, p in enumerate(policies)]
        for label, granularity, lp, arg, peak, secs in entries:
            same = (arg == full_arg).float()
            for j, key in enumerate(keys):
                records.append({
                    "evaluation": "ppl", "policy": label, "granularity": granularity, "budget": int(budget),
                    "passage": key, "tokens": int(lp[j].numel()), "perplexity": round(ppl(lp[j]), 4),
                    "perplexity_after_budget": round(ppl(lp[j, budget:]), 4),
                    "top1_agreement_after_budget": round(float(same[j, budget:].mean()), 4)
                    if budget < same.shape[1] else 1.0,
                    "peak_kv_tokens": int(peak), "split": split, "chunk": chunk, "seconds": round(secs, 2),
                })
    return records


def long_stream(llm, *, tokens: int = 20_000, budgets: Sequence[int] = (256, 1024),
                schemes: Sequence[str] = ("true", "cache"), policies: Sequence = ("streaming", "ebbinghaus"),
                window: int = 1000, chunk: int = 1, source: str = "docs", split: str = "report", seed: int = 0,
                config: MemoryConfig | None = None, progress: bool = True, text: str | None = None) -> list[dict]:
    """Perplexity along a stream longer than the model's context, in windows of ``window`` tokens.

    The first ``tokens`` tokens of one split of a source (``report``, or ``tune`` for choosing
    settings you will not report), or of one split of ``text`` (a user's text, cut in halves
    like a source; ``source`` then only names it in the records), are read ``chunk`` tokens at a
    time with the cache held to each budget, once per position scheme (``true``: positions grow
    past the trained range; ``cache``: StreamingLLM's positions inside the cache). The
    ``full`` cache is the reference while the stream fits the context. One record per
    (policy, positions, budget, window): ``window_start``, ``perplexity``; plus ``seconds``;
    and one ``stream_kept`` record per (policy, positions, budget): ``old_share_by_layer``, the
    share of each full-attention layer's slots (sinks aside) holding tokens read
    more than four budgets before the end, the mark of a policy that hoards.
    """
    ids = split_ids(llm.tokenizer, source, split) if text is None else text_half(llm.tokenizer, text, split)
    if ids.shape[0] < tokens:
        what = f"source {source!r}" if text is None else f"the text {source!r}"
        raise ConfigError(f"{what} has {ids.shape[0]} tokens in its {split} split (one half of it); "
                          f"{tokens} requested")
    text = {"source": source, "split": split}
    ids = ids[:tokens][None]
    starts = list(range(0, tokens - 1, window))
    records = []
    fits = min(tokens, llm.max_positions or tokens)
    full_lp, _ = full_logprobs(llm, ids[:, :fits])
    for a in starts:
        if a + window <= fits - 1:
            records.append({"evaluation": "stream", **text, "policy": "full", "positions": "true", "budget": None,
                            "window_start": a, "perplexity": round(ppl(full_lp[0, a:a + window]), 4),
                            "chunk": chunk, "seconds": 0.0})
    for budget in budgets:
        for scheme in schemes:
            base = (config or llm.config).replace(positions=scheme)
            res = stream(llm, ids, policies, budget, chunk=chunk, seed=seed, config=base, progress=progress,
                         keep_session=True)
            old = old_share_by_unit(res.session, tokens - 4 * budget)
            for i, p in enumerate(policies):
                records.append({"evaluation": "stream_kept", **text, "policy": spec(p)[0], "positions": scheme,
                                "budget": int(budget), "granularity": base.granularity_for("evict"),
                                "tokens": tokens, "old_share_by_layer": old[i]})
                for a in starts:
                    records.append({"evaluation": "stream", **text, "policy": spec(p)[0], "positions": scheme,
                                    "budget": int(budget), "granularity": base.granularity_for("evict"),
                                    "window_start": a,
                                    "perplexity": round(ppl(res.logprob[i, 0, a:a + window]), 4), "chunk": chunk,
                                    "seconds": round(res.seconds, 1)})
    return records


def old_share_by_unit(session, before: int) -> list[list[float]]:
    """Per batch row, the share of each slot unit's slots, sinks aside, holding a true position < ``before``."""
    rows = session.positions.reshape(-1, session.units, session.positions.shape[-1])
    sinks = session.config.sink_tokens
    old = ((rows < before) & (rows >= sinks)).sum(-1) / (rows >= sinks).sum(-1).clamp(min=1)
    return old.float().round(decimals=3).tolist()


def old_share(record: dict) -> tuple[float, float, float]:
    """(min, median, max) over layers of a ``stream_kept`` record's share of old slots."""
    share = sorted(record["old_share_by_layer"])
    return share[0], share[len(share) // 2], share[-1]


def stream_summary(records: Sequence[dict], context: int, *, baseline: str = "streaming") -> list[dict]:
    """One row per line of a ``long_stream`` run (policy, positions, budget, granularity).

    ``before``: mean perplexity of the windows that end in the second half of the trained
    context (4,000-8,000 for 8,192 positions and windows of 1,000); ``after``: mean of the
    windows that start past it, and ``worst_after`` their maximum; ``vs_baseline``: the
    paired difference to ``baseline`` at the
    same positions, budget and granularity over all windows, ``(mean, low, high)`` bootstrapped
    over windows. The windows come from one text and neighbours are not independent, so that
    interval is narrower than one over independent texts would be.
    """
    lines: dict[tuple, dict[int, float]] = {}
    for r in records:
        if r["evaluation"] == "stream" and r["policy"] != "full":
            key = (r["policy"], r["positions"], r["budget"], r.get("granularity"))
            lines.setdefault(key, {})[r["window_start"]] = r["perplexity"]
    rows = []
    for (policy, positions, budget, granularity), windows in lines.items():
        starts = sorted(windows)
        size = starts[1] - starts[0] if len(starts) > 1 else context
        before = [windows[a] for a in starts if context // 2 < a + size <= context]
        after = [windows[a] for a in starts if a >= context]
        base = lines.get((baseline, positions, budget, granularity))
        paired = None
        if policy != baseline and base is not None and sorted(base) == starts:
            paired = paired_difference([windows[a] for a in starts], [base[a] for a in starts])
        rows.append({"policy": policy, "positions": positions, "budget": budget, "granularity": granularity,
                     "before": sum(before) / len(before) if before else None,
                     "after": sum(after) / len(after) if after else None,
                     "worst_after": max(after) if after else None, "vs_baseline": paired})
    return rows
