"""The backbone: every mode equals an independent reference, token for token, on the bundled
model (greedy, a few tokens). The same equivalences run on tiny random models of several
architectures in test_architectures.py.
"""

from __future__ import annotations

import pytest

from memollm_testutils import forced_forgetting, greedy_reference, one_thread

_one_thread = one_thread()

PROMPT = "What is deep learning?"
N = 10


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
                     sink_tokens=4, recent_window=8, granularity="shared")  # per layer: test_granularity.py
    events = r["evict_events"]
    assert r["evicted_tokens"] == sum(len(v) for v in events.values()) > 0
    # a prompt over the budget is prefilled whole, then compressed: the peak says so
    assert r["kv_cache_tokens"] == budget and r["peak_kv_cache_tokens"] == max(budget, r["prompt_tokens"])
    hidden = greedy_reference(llm.model, ids, N, hide=events, eos=llm.tokenizer.eos_token_id)
    assert r["token_ids"] == hidden
