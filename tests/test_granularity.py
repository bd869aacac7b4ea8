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


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("policy", ["ebbinghaus", "h2o", "tova", "streaming"])
def test_the_budget_holds_in_every_layer_and_head_at_every_step(llm, granularity, policy):
    lengths: list[set[int]] = []  # per forward step: the distinct lengths of every layer's keys and values

    def record(module, args, kwargs, output):
        cache = kwargs["cache"]
        lengths.append({t.shape[-2] for layer in cache.layers for t in (layer.keys, layer.values)})

    handle = llm.model.register_forward_hook(record, with_kwargs=True)  # ahead of the session's hooks
    try:
        r = llm.generate(PROMPT, N, "evict", memory_budget=30, recent_window=8, granularity=granularity,
                         policy=policy, ignore_eos=True)
    finally:
        handle.remove()
    prompt = r["prompt_tokens"]
    # the prompt is prefilled whole (then compressed); every later step holds at most the budget,
    # the same count in every layer and head
    assert lengths[0] == {prompt} and all(len(s) == 1 and max(s) <= 30 for s in lengths[1:])
    assert r["kv_cache_tokens"] == 30 and r["peak_kv_cache_tokens"] == max(30, prompt)
    kept = r.get("kept_positions", {"shared": None})
    units = {"shared": 1, "layer": 30, "head": 90}[granularity]
    assert len(kept) == units
    if granularity != "shared":
        for name, pos in kept.items():
            assert len(pos) == 30 and pos[:4] == [0, 1, 2, 3], name  # sinks everywhere
            assert pos == sorted(pos) and pos[-8:] == list(range(prompt + N - 2 - 7, prompt + N - 1)), name
        drops = {}
        for event in r["evict_events"].values():
            for name, gone in event.items():
                drops.setdefault(name, set()).update(gone)
        for name, pos in kept.items():  # what a unit holds plus what it dropped is everything it read
            assert drops[name].isdisjoint(pos) and drops[name] | set(pos) == set(range(prompt + N - 1))


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


def test_granularity_is_validated_and_reported(llm):
    with pytest.raises(ValueError, match="granularity"):
        llm.generate(PROMPT, 2, "evict", granularity="token")
    with pytest.raises(ValueError, match="observation_pool"):
        llm.config.replace(observation_pool=4)
    r = llm.generate(PROMPT, 2, "evict", memory_budget=40, granularity="head")
    assert r["config"]["granularity"] == "head"


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
