"""Eviction granularity: one set of slots for all layers, one per layer, or one per KV head.

The backbone again: with a budget >= the length every granularity gives baseline's tokens;
with a small budget, per-layer eviction equals masking each layer's evicted positions in
that layer only; the budget holds in every layer and head at every step.
"""

from __future__ import annotations

import pytest
import torch

from memollm_testutils import one_thread, per_layer_masked_reference

_one_thread = one_thread()

PROMPT = "Write a long story about a cat named Tom who lives in Paris and loves cheese."
N = 12
GRANULARITIES = ("shared", "layer", "head")


@pytest.fixture(scope="module")
def base(llm):
    return llm.generate(PROMPT, N, ignore_eos=True)["token_ids"]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_budget_over_the_length_gives_baseline_tokens(llm, base, granularity):
    r = llm.generate(PROMPT, N, "evict", memory_budget=512, granularity=granularity, ignore_eos=True)
    assert r["token_ids"] == base and r["evicted_tokens"] == 0 and r["granularity"] == granularity


@pytest.mark.parametrize("budget", [24, 40], ids=["prompt-over-budget", "decode-over-budget"])
def test_layer_eviction_equals_masking_each_layers_evicted_positions(llm, budget):
    r = llm.generate(PROMPT, N, "evict", memory_budget=budget, sink_tokens=4, recent_window=8,
                     granularity="layer", ignore_eos=True)
    events = r["evict_events"]
    assert r["evicted_tokens"] > 0 and all(isinstance(e, dict) for e in events.values())
    ids = llm.encode(PROMPT)
    masked = per_layer_masked_reference(llm.model, ids, r["token_ids"], events, range(30))
    assert masked == r["token_ids"]
    # and the layers did keep different tokens (else this would only re-test shared eviction)
    kept = list(r["kept_positions"].values())
    assert any(k != kept[0] for k in kept[1:])


ROTARY_AND_LEARNED = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gpt_neox"]


@pytest.mark.parametrize("arch", ROTARY_AND_LEARNED)
def test_granularities_on_every_architecture(make_tiny, arch):
    """The tiny-architecture matrix: baseline tokens with room for everything, the budget in every
    layer with a small one, and the same count of slots in every layer."""
    tiny = make_tiny(arch)
    base = tiny.generate(PROMPT, 8, chat=False, ignore_eos=True)["token_ids"]
    for granularity in ("layer", "head"):
        roomy = tiny.generate(PROMPT, 8, "evict", chat=False, memory_budget=512, granularity=granularity,
                              ignore_eos=True)
        assert roomy["token_ids"] == base, (arch, granularity)
        small = tiny.generate(PROMPT, 8, "evict", chat=False, memory_budget=12, sink_tokens=2, recent_window=4,
                              granularity=granularity, ignore_eos=True)
        kept = small["kept_positions"]
        assert small["kv_cache_tokens"] == 12 and all(len(p) == 12 and p[:2] == [0, 1] for p in kept.values())


def test_layer_masks_in_sparse_attention_equal_masking_each_layer(llm):
    """sparse_attention with granularity="layer": every full-attention layer masks the tokens whose
    retention *in that layer* fell under the threshold; the tokens equal an independent run that
    hides each layer's forget events in that layer only."""
    from memollm_testutils import forced_forgetting

    cfg = forced_forgetting(granularity="layer", reinforce=True)  # reviews differ by layer, so masks do
    r = llm.generate(PROMPT, N, "sparse_attention", config=cfg, ignore_eos=True)
    events = r["forget_events"]
    assert events and all(isinstance(e, dict) for e in events.values())
    masked = r["masked_positions"]
    assert len(masked) == 30 and any(m != masked["layer_0"] for m in masked.values())  # the layers differ
    assert all(p >= cfg.sink_tokens for m in masked.values() for p in m)  # sinks are never masked
    assert per_layer_masked_reference(llm.model, llm.encode(PROMPT), r["token_ids"], events, range(30)) == r["token_ids"]
    shared = llm.generate(PROMPT, N, "sparse_attention", config=cfg.replace(granularity="shared"), ignore_eos=True)
    assert isinstance(shared["masked_positions"], list)
    with pytest.raises(ValueError, match="KV head"):
        llm.generate(PROMPT, 2, "sparse_attention", config=cfg.replace(granularity="head"))
