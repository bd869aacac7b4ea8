"""Attention capture: how much of the next query's attention lands on the tokens a policy kept.

A cheaper, model-free proxy for perplexity at a budget, and the measurement a learned strength
is fitted for. One full-cache pass per passage (eager attention) gives every query's attention
per layer and KV head; each (layer, head) is then simulated as its own cache of ``M`` slots:
4 sinks and the 16 newest tokens are always kept, and when a token arrives into a full cache
the policy evicts, for good, the lowest-scored other token. Scores use only queries before the
step (causal), except the ``oracle``'s, which reads the coming query's own attention: one step's
upper bound, not a policy. The capture of query ``q`` is the share of its attention mass on
kept slots (query ``q`` itself is the newest slot), averaged over the queries from the one that
fills the cache on, and over layers and heads. ``capture_old`` is the kept share of the mass
that lands on tokens more than ``4 M`` tokens back (where recency cannot help): the kept old
mass over all old mass, pooled over queries, layers and heads (None where there is none).

All ``(policy, budget, layer, head)`` caches step together as rows of one tensor; the loop over
tokens stays, since eviction is sequential (an evicted token never returns).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..cache import full_attention_layers
from ..stats import markdown, paired
from ..strength import StrengthGate, find_gate
from ..training import SINKS, eager_pass, passage_list

CAPTURE_POLICIES = ("streaming", "h2o", "tova", "learned", "oracle")
WINDOW = 16
"""The newest tokens every cache keeps (the query's own token among them)."""


def simulate(attn: torch.Tensor, budgets: Sequence[int], policies: Sequence[str] = CAPTURE_POLICIES,
             log_strength: torch.Tensor | None = None, *, sinks: int = SINKS,
             window: int = WINDOW) -> dict[str, torch.Tensor]:
    """Capture per policy, budget and row for ``attn`` ``[rows, T, T]`` (rows: layers x KV heads).

    ``log_strength`` ``[rows, T]``: the gate's ``log S`` of each token for that row (``learned``).
    Returns ``capture`` ``[policies, budgets, rows]`` (mean over counted queries), and ``old_kept``
    ``[policies, budgets, rows]`` and ``old_total`` ``[budgets, rows]`` (attention mass summed over
    those queries on tokens older than ``4 M``).
    """
    rows, t_len, _ = attn.shape
    n_p, n_b = len(policies), len(budgets)
    if min(budgets) < sinks + window + 1:
        raise ValueError(f"budgets must be >= sinks + window + 1 = {sinks + window + 1}, got {list(budgets)}")
    if "learned" in policies and log_strength is None:
        raise ValueError("the learned policy needs log_strength")
    pos = torch.arange(t_len)
    budget = torch.tensor(budgets)[None, :, None].expand(n_p, n_b, rows).reshape(-1)
    protect = torch.tensor([[max(window, b // 2) if p == "h2o" else window for b in budgets] for p in policies])
    protect = protect[:, :, None].expand(n_p, n_b, rows).reshape(-1, 1)
    start = torch.tensor([min(b - 1, t_len - 1) for b in budgets])  # the query that fills the cache
    first = int(start.min())
    old_before = torch.tensor([4 * b for b in budgets])[:, None]  # q - k > 4M
    inv_s = torch.exp(-log_strength) if log_strength is not None else None
    kept = (pos < first).expand(n_p * n_b * rows, t_len).clone()
    acc = attn[:, :first].sum(1)  # h2o's accumulated attention
    total = torch.zeros(n_p, n_b, rows)
    old_kept, old_total = torch.zeros(n_p, n_b, rows), torch.zeros(n_b, rows)
    everyone = torch.arange(kept.shape[0])
    for q in range(first, t_len):
        kept[:, q] = True
        prev = attn[:, q - 1] if q else torch.zeros(rows, t_len)
        score = {"streaming": pos.float().expand(rows, t_len), "h2o": acc, "tova": prev, "oracle": attn[:, q]}
        if inv_s is not None:
            score["learned"] = (pos - q) * inv_s  # log retention -age / S
        s = torch.stack([score[p] for p in policies])[:, None].expand(n_p, n_b, rows, t_len).reshape(-1, t_len)
        evictable = kept & (pos >= sinks) & (pos <= q - protect)
        victim = torch.where(evictable, s, torch.inf).argmin(-1)
        full = kept.sum(-1) > budget
        kept[everyone, victim] &= ~full
        acc = acc + attn[:, q]
        counted = (q >= start).float()[None, :, None]  # [1, budgets, 1]
        on_kept = kept.view(n_p, n_b, rows, t_len) * attn[:, q]
        old = ((q - pos)[None] > old_before)[:, None].float()  # [budgets, 1, T]
        total += on_kept.sum(-1) * counted
        old_kept += (on_kept * old).sum(-1) * counted
        old_total += (attn[:, q] * old).sum(-1) * counted[0]
    return {"capture": total / (t_len - start)[None, :, None], "old_kept": old_kept, "old_total": old_total}


def capture(llm, *, passages: int = 6, tokens: int = 1024, budgets: Sequence[int] = (64, 128, 256),
            policies: Sequence[str] = CAPTURE_POLICIES, gate: StrengthGate | None = None, split: str = "report",
            progress: bool = True) -> list[dict]:
    """Records ``{policy, budget, passage, capture, capture_old, split}``, one per policy, budget and
    passage (``passages`` passages of ``tokens`` tokens, alternating docs and prose)."""
    bad = [p for p in policies if p not in CAPTURE_POLICIES]
    if bad:
        raise ValueError(f"unknown capture policies {bad}; choose from {CAPTURE_POLICIES}")
    layers = full_attention_layers(llm.model)
    if "learned" in policies:
        if gate is None:
            gate = find_gate(llm.model)
        if list(gate.layers) != layers:
            raise ValueError(f"the gate maps layers {gate.layers}, the model's full-attention layers are {layers}")
    records = []
    for p in tqdm(passage_list(llm.tokenizer, passages, tokens, split), desc="capture", leave=False,
                  disable=not progress):
        hidden, attn = eager_pass(llm.model, p.ids, layers)  # [L, T, H], [L, K, T, T]
        n_l, kv, t_len, _ = attn.shape
        log_s = None
        if "learned" in policies:
            with torch.no_grad():
                log_s = gate.log_strength_all(hidden).permute(0, 2, 1).reshape(n_l * kv, t_len)
        out = simulate(attn.reshape(n_l * kv, t_len, t_len), budgets, policies, log_s)
        for i, policy in enumerate(policies):
            for j, budget in enumerate(budgets):
                old_total = float(out["old_total"][j].sum())
                records.append({"policy": policy, "budget": int(budget), "passage": p.key,
                                "capture": float(out["capture"][i, j].mean()),
                                "capture_old": float(out["old_kept"][i, j].sum()) / old_total if old_total > 0 else None,
                                "split": split})
    return records


def capture_table(records: Sequence[dict], baseline: str = "tova") -> str:
    """Mean capture and old capture per policy and budget, and each policy minus ``baseline``
    paired over passages (Student-t 95% interval; bold where it excludes zero upwards)."""
    def values(policy, budget, key):
        return {r["passage"]: r[key] for r in records if r["policy"] == policy and r["budget"] == budget}

    policies = list(dict.fromkeys(r["policy"] for r in records))
    budgets = sorted({r["budget"] for r in records})
    rows = []
    for budget in budgets:
        for policy in policies:
            cap, old = values(policy, budget, "capture"), values(policy, budget, "capture_old")
            olds = [v for v in old.values() if v is not None]
            cells = [policy, budget, len(cap), f"{sum(cap.values()) / len(cap):.3f}",
                     f"{sum(olds) / len(olds):.3f}" if olds else "–"]
            base = values(baseline, budget, "capture")
            if policy == baseline or set(base) != set(cap):
                cells.append("–")
            else:
                keys = sorted(cap)
                d = paired([cap[k] for k in keys], [base[k] for k in keys])
                text = f"{d.mean:+.3f}" if math.isnan(d.low) else f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                cells.append(f"**{text}**" if d.low > 0 else text)
            rows.append(cells)
    return markdown(["policy", "budget", "n", "capture", "capture old", f"Δ vs {baseline} [95% t interval]"], rows, "lrrrrr")


__all__ = ["CAPTURE_POLICIES", "capture", "capture_table", "simulate"]
