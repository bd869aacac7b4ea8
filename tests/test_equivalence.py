"""The backbone: every mode equals an independent reference, token for token, on the bundled
model (greedy, a few tokens): baseline equals model.generate; with nothing to forget, every mode,
granularity and position scheme gives baseline's tokens; sparse attention equals dropping the
masked positions; eviction equals hiding the evicted positions, shared or in each layer. The same
equivalences run on tiny random models of several architectures in test_architectures.py.
"""

from __future__ import annotations

import pytest

from memollm_testutils import assert_clean, forced_forgetting, greedy_reference, one_thread, per_layer_masked_reference

_one_thread = one_thread()

PROMPT = "What is deep learning?"
N = 10
STORY = "Write a long story about a cat named Tom who lives in Paris and loves cheese."
STORY_TOKENS = 12
GRANULARITIES = ("shared", "layer", "head")
FOX_CAT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
LONG = " ".join(f"Sentence {i} says that the number {i * 7} is on the list." for i in range(12))


@pytest.fixture(scope="module")
def base(llm):
    ids = llm.encode(PROMPT)
    r = llm.generate(PROMPT, max_new_tokens=N)
    return ids, r["token_ids"]


def test_baseline_equals_model_generate(llm, base):
    ids, tokens = base
    out = llm.model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id)
    assert tokens == out[0, ids.shape[1]:].tolist()
    assert len(tokens) == N
    # the hand-written loop the other tests compare against agrees too (a fair reference)
    assert greedy_reference(llm.model, ids, N, eos=llm.tokenizer.eos_token_id) == tokens


def test_soft_delete_with_floor_one_equals_baseline(llm, base):
    r = llm.generate(PROMPT, max_new_tokens=N, generation_mode="soft_delete",
                     config=forced_forgetting(soft_delete_floor=1.0))
    assert r["token_ids"] == base[1]
    assert r["memory_stats"]["layer_0"]["min_retention"] < 1e-3  # the curve did fall: weights were all 1


def test_evict_with_budget_above_length_equals_baseline(llm, base):
    ids, tokens = base
    r = llm.generate(PROMPT, max_new_tokens=N, generation_mode="evict", memory_budget=ids.shape[1] + N)
    assert r["token_ids"] == tokens
    assert r["evicted_tokens"] == 0 and r["evict_events"] == {}
    assert r["kv_cache_tokens"] == ids.shape[1] + N - 1


def test_sparse_attention_equals_dropping_the_same_positions(llm, base):
    ids, tokens = base
    r = llm.generate(PROMPT, max_new_tokens=N, generation_mode="sparse_attention", config=forced_forgetting())
    events = r["forget_events"]
    assert events and min(events) >= 1, "forgetting must happen for this test to mean anything"
    assert all(p >= 4 for ps in events.values() for p in ps), "attention sinks are never masked"
    assert sorted(p for ps in events.values() for p in ps) == r["masked_positions"]
    ref = greedy_reference(llm.model, ids, N, drop=events, eos=llm.tokenizer.eos_token_id)
    assert r["token_ids"] == ref
    assert r["token_ids"] != tokens  # masking most of the prompt changes the answer


@pytest.mark.parametrize("budget", [24, 40], ids=["prompt-over-budget", "decode-over-budget"])
def test_evict_equals_masking_the_evicted_positions(llm, base, budget):
    ids, tokens = base
    r = llm.generate(PROMPT, max_new_tokens=N, generation_mode="evict", memory_budget=budget,
                     sink_tokens=4, recent_window=8, granularity="shared")  # per layer: further down
    events = r["evict_events"]
    assert r["evicted_tokens"] == sum(len(v) for v in events.values()) > 0
    # a prompt over the budget is prefilled whole, then compressed: the peak says so
    assert r["kv_cache_tokens"] == budget and r["peak_kv_cache_tokens"] == max(budget, r["prompt_tokens"])
    hidden = greedy_reference(llm.model, ids, N, hide=events, eos=llm.tokenizer.eos_token_id)
    assert r["token_ids"] == hidden


# -- granularity: one set of slots, one per layer, or one per KV head --------------------------
@pytest.fixture(scope="module")
def story_base(llm):
    return llm.generate(STORY, STORY_TOKENS, ignore_eos=True)["token_ids"]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_budget_over_the_length_gives_baseline_tokens(llm, story_base, granularity):
    r = llm.generate(STORY, STORY_TOKENS, "evict", memory_budget=512, granularity=granularity, ignore_eos=True)
    assert r["token_ids"] == story_base and r["evicted_tokens"] == 0 and r["granularity"] == granularity


@pytest.mark.parametrize("budget", [24, 40], ids=["prompt-over-budget", "decode-over-budget"])
def test_layer_eviction_equals_masking_each_layers_evicted_positions(llm, budget):
    r = llm.generate(STORY, STORY_TOKENS, "evict", memory_budget=budget, sink_tokens=4, recent_window=8,
                     granularity="layer", ignore_eos=True)
    events = r["evict_events"]
    assert r["evicted_tokens"] > 0 and all(isinstance(e, dict) for e in events.values())
    ids = llm.encode(STORY)
    masked = per_layer_masked_reference(llm.model, ids, r["token_ids"], events, range(30))
    assert masked == r["token_ids"]
    # and the layers did keep different tokens (else this would only re-test shared eviction)
    kept = list(r["kept_positions"].values())
    assert any(k != kept[0] for k in kept[1:])


def test_layer_masks_in_sparse_attention_equal_masking_each_layer(llm):
    """sparse_attention with granularity="layer": every full-attention layer masks the tokens whose
    retention *in that layer* fell under the threshold; the tokens equal an independent run that
    hides each layer's forget events in that layer only."""
    from memollm_testutils import forced_forgetting

    cfg = forced_forgetting(granularity="layer", review="top_p")  # reviews differ by layer, so masks do
    r = llm.generate(STORY, STORY_TOKENS, "sparse_attention", config=cfg, ignore_eos=True)
    events = r["forget_events"]
    assert events and all(isinstance(e, dict) for e in events.values())
    masked = r["masked_positions"]
    assert len(masked) == 30 and any(m != masked["layer_0"] for m in masked.values())  # the layers differ
    assert all(p >= cfg.sink_tokens for m in masked.values() for p in m)  # sinks are never masked
    assert per_layer_masked_reference(llm.model, llm.encode(STORY), r["token_ids"], events, range(30)) == r["token_ids"]
    shared = llm.generate(STORY, STORY_TOKENS, "sparse_attention", config=cfg.replace(granularity="shared"), ignore_eos=True)
    assert isinstance(shared["masked_positions"], list)
    with pytest.raises(ValueError, match="KV head"):
        llm.generate(STORY, 2, "sparse_attention", config=cfg.replace(granularity="head"))


# -- positions counted in the cache, and a prompt read in chunks -------------------------------
@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_nothing_evicted_gives_baseline_tokens(llm, granularity):
    base = llm.generate(FOX_CAT, 10, ignore_eos=True)
    r = llm.generate(FOX_CAT, 10, "evict", positions="cache", granularity=granularity, ignore_eos=True)
    assert r["token_ids"] == base["token_ids"] and r["evicted_tokens"] == 0
    assert_clean(llm.model)


@pytest.mark.parametrize("granularity", ["shared", "layer"])
def test_chunked_prefill_with_room_gives_one_pass_tokens(llm, granularity):
    one = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, ignore_eos=True)
    for chunk in (7, 32):
        r = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, prefill_chunk=chunk,
                         ignore_eos=True)
        assert r["token_ids"] == one["token_ids"] and r["prompt_tokens"] == one["prompt_tokens"]
