"""Invariants of the memory, the eviction choice and the masks, tested with hypothesis over random
operation sequences and parameters."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memollm import EbbinghausMemory, MemoryConfig
from memollm.attention import combine_mask, received_attention
from memollm.cache import select_keep
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()

FAST = settings(max_examples=60, deadline=None)

configs = st.builds(
    MemoryConfig,
    initial_strength=st.floats(0.05, 50.0),
    time_step=st.floats(1e-4, 5.0),
    review_threshold=st.floats(0.1, 4.0),
    strength_gain=st.floats(0.0, 10.0),
    soft_delete_floor=st.floats(0.0, 1.0),
    sparse_threshold=st.floats(1e-6, 0.9),
    layer_consensus=st.floats(0.01, 1.0),
    review=st.sampled_from(["none", "share", "top_p"]),
    review_top_p=st.floats(0.05, 1.0),
    stability=st.sampled_from(["additive", "fsrs"]),
    trace=st.sampled_from(["none", "max", "sum"]),
)

# an operation: ("append", n) | ("reinforce", seed) | ("keep", seed)
ops = st.lists(st.one_of(st.tuples(st.just("append"), st.integers(1, 6)),
                         st.tuples(st.just("reinforce"), st.integers(0, 2**31 - 1)),
                         st.tuples(st.just("keep"), st.integers(0, 2**31 - 1))), min_size=1, max_size=25)


def _attention(mem: EbbinghausMemory, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(mem.num_layers, mem.strength.shape[1], mem.num_tokens, generator=g) * 3
    return torch.softmax(logits, -1)


@FAST
@given(cfg=configs, layers=st.integers(1, 4), batch=st.integers(1, 3), seq=ops, traces=st.booleans())
def test_memory_invariants(cfg, layers, batch, seq, traces):
    mem = EbbinghausMemory(layers, cfg, traces=traces)
    tokens = 0
    for op, arg in seq:
        before = mem.retention().clone() if mem.num_tokens else None
        if op == "append":
            mem.append(batch, arg)
            tokens += arg
            if before is not None:  # aging without reinforcement never raises R
                assert torch.all(mem.retention()[..., :before.shape[-1]] <= before)
            assert torch.all(mem.retention()[..., -1] == 1.0)  # the newest token is fresh
        elif op == "reinforce" and mem.num_tokens:
            received = _attention(mem, arg)
            mem.reinforce(received, mem.num_tokens)
            assert torch.all(mem.retention() >= before)  # reinforcement never lowers R
            if cfg.review == "none":
                assert torch.equal(mem.retention(), before)
        elif op == "keep" and mem.num_tokens:
            g = torch.Generator().manual_seed(arg)
            n_keep = int(torch.randint(1, mem.num_tokens + 1, (1,), generator=g))
            idx = torch.sort(torch.randperm(mem.num_tokens, generator=g)[:n_keep]).values
            mem.keep(idx.expand(batch, -1))
            torch.testing.assert_close(mem.retention(), before[..., idx])
            tokens = n_keep
        r = mem.retention()
        assert r.shape == (layers, batch, tokens) if tokens else r.numel() == 0
        assert torch.all((r >= 0) & (r <= 1)) and not torch.isnan(r).any()
        # state size follows the cached tokens and nothing else: 4 bytes per per-token float,
        # traces only when a policy ranks by them
        assert (mem.trace is not None) == (traces and cfg.trace != "none")
        floats = 2 + (0 if mem.trace is None else mem.trace.shape[0])
        assert mem.nbytes == 4 * floats * layers * batch * tokens
        if tokens:
            w = mem.soft_weights()
            assert torch.all((w >= cfg.soft_delete_floor - 1e-6) & (w <= 1 + 1e-6))


@FAST
@given(data=st.data(), total=st.integers(1, 60), batch=st.integers(1, 3), sinks=st.integers(0, 6),
       window=st.integers(1, 10), nan=st.booleans())
def test_select_keep_invariants(data, total, batch, sinks, window, nan):
    n_keep = data.draw(st.integers(1, total + 5), label="n_keep")
    # true positions: strictly increasing per row, starting at 0 (sinks are the first positions)
    gaps = data.draw(st.lists(st.integers(1, 3), min_size=total, max_size=total), label="gaps")
    pos = torch.tensor([0] + gaps[:-1]).cumsum(0)[None].expand(batch, -1).clone()
    scores = torch.tensor(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=total * batch,
                                             max_size=total * batch), label="scores")).reshape(batch, total)
    if nan:
        scores[0, data.draw(st.integers(0, total - 1), label="nan_at")] = math.nan
    protected = (pos < sinks) | (torch.arange(total) >= total - window)
    if n_keep < total and int(protected[0].sum()) > n_keep:
        return  # the session never asks for fewer slots than it protects (budget >= sinks + window + 1)
    keep, fallback = select_keep(scores, pos, n_keep, sink_tokens=sinks, recent_window=window)
    assert fallback == (nan and n_keep < total)
    assert keep.shape == (batch, min(n_keep, total))
    for b in range(batch):
        row = keep[b].tolist()
        assert all(x < y for x, y in zip(row, row[1:])), "slots (so positions) strictly increasing"
        assert set(torch.nonzero(protected[b]).flatten().tolist()) <= set(row), "sinks and window kept"
        assert total - 1 in row, "the newest token is kept"
        if n_keep < total:
            ranked = pos[b].float() if fallback else scores[b]
            dropped = sorted(set(range(total)) - set(row))
            free = [k for k in row if not protected[b, k]]
            if free and dropped:  # every kept competitor scores at least as high as every dropped one
                assert min(float(ranked[k]) for k in free) >= max(float(ranked[d]) for d in dropped)


@FAST
@given(batch=st.integers(1, 3), cached=st.integers(0, 20), q_len=st.integers(1, 4), seed=st.integers(0, 2**16),
       float_mask=st.booleans())
def test_masks_never_hide_every_key(batch, cached, q_len, seed, float_mask):
    """Whatever is forgotten, the session's mask (cached keys allowed or not, new tokens
    always allowed) leaves every query at least one key, and attention stays a distribution."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(batch, cached, generator=g) < torch.rand(1, generator=g)  # anything, all False included
    allowed = torch.cat([keep, torch.ones(batch, q_len, dtype=torch.bool)], dim=-1)
    kv = cached + q_len
    base = None
    if float_mask:
        causal = torch.arange(kv)[None, :] <= (torch.arange(q_len)[:, None] + cached)
        base = torch.zeros(1, 1, q_len, kv).masked_fill(~causal, torch.finfo(torch.float32).min)
    mask = combine_mask(base, allowed, q_len, kv, torch.float32)
    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(torch.float32).min
    visible = visible.expand(batch, 1, q_len, kv)
    assert torch.all(visible.any(-1)), "a query row with every key hidden"
    assert torch.all(visible[..., :cached] <= keep[:, None, None, :]), "a forgotten key stayed visible"
    q = torch.randn(batch, 4, q_len, 8, generator=g)
    k = torch.randn(batch, 2, kv, 8, generator=g)
    got = received_attention(q, k, mask, None)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(-1), torch.ones(batch))


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("qwen2")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget_extra=st.integers(1, 12), sinks=st.integers(0, 6), window=st.integers(1, 8),
       policy=st.sampled_from(["ebbinghaus", "h2o", "tova", "random", "streaming"]), n=st.integers(1, 16),
       granularity=st.sampled_from(["shared", "layer"]))
def test_eviction_invariants_in_generation(tiny, budget_extra, sinks, window, policy, n, granularity):
    prompt = "The quick brown fox jumps over the lazy dog."
    budget = sinks + window + budget_extra
    r = tiny.generate(prompt, n, "evict", chat=False, memory_budget=budget, sink_tokens=sinks, recent_window=window,
                      policy=policy, granularity=granularity, ignore_eos=True, return_attention_weights=True)
    total = r["prompt_tokens"] + n - 1  # tokens that went through the model
    assert r["kv_cache_tokens"] == min(budget, total)
    assert r["peak_kv_cache_tokens"] <= max(budget, r["prompt_tokens"])  # a long prompt is prefilled whole
    if granularity == "shared":  # one set of slots; events list positions
        kept = {"shared": r["token_weights"]["positions"]} if r["token_weights"] else {}
        drops = {"shared": [p for ps in r["evict_events"].values() for p in ps]}
    else:  # every layer its own slots; events list positions per layer
        kept, drops = r["kept_positions"], {name: [] for name in r["kept_positions"]}
        for event in r["evict_events"].values():
            for name, gone in event.items():
                drops[name].extend(gone)
    for name, pos in kept.items():
        assert len(pos) == r["kv_cache_tokens"], name
        assert all(a < b for a, b in zip(pos, pos[1:])), name
        assert pos[:min(sinks, len(pos))] == list(range(min(sinks, len(pos)))), name
        assert pos[-1] == total - 1, name
    for name, dropped in drops.items():
        assert len(dropped) == len(set(dropped)) == total - r["kv_cache_tokens"], name
        assert not any(p < sinks for p in dropped), f"a sink was evicted in {name}"
    assert_clean(tiny.model)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strength=st.floats(0.2, 3.0), step=st.floats(0.05, 1.0), sinks=st.integers(0, 6),
       consensus=st.floats(0.1, 1.0), review=st.sampled_from(["none", "share", "top_p"]))
def test_sparse_masking_invariants_in_generation(tiny, strength, step, sinks, consensus, review):
    cfg = MemoryConfig(initial_strength=strength, time_step=step, sink_tokens=sinks, layer_consensus=consensus,
                       review=review)
    r = tiny.generate("The quick brown fox jumps over the lazy dog.", 10, "sparse_attention", chat=False,
                      config=cfg, ignore_eos=True)
    events = r["forget_events"]
    flat = [p for ps in events.values() for p in ps]
    assert len(flat) == len(set(flat)), "a masked token is never masked twice (it never comes back)"
    assert sorted(flat) == r["masked_positions"]
    assert not any(p < sinks for p in flat), "sinks are never masked"
    assert len(r["masked_positions"]) < r["kv_cache_tokens"], "never every key"
    assert_clean(tiny.model)
