"""memollm.evaluate: record formats and protocol checks on a tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from memollm import evaluate as E
from memollm.evaluate.passkey import _Capture
from memollm.evaluate.rows import greedy, rows_from_prefill
from memollm import viz
from memollm.texts import default_text, text_segments
from memollm.cli import main

TEXT = ("Eviction keeps a fixed number of tokens in the cache. The policy decides which ones stay. "
        "Attention sinks and a recent window are always kept. ") * 20
POLICIES = ["ebbinghaus", "streaming", "h2o"]


def test_stream_without_eviction_equals_full_cache(make_tiny):
    llm = make_tiny("llama")
    ids = text_segments(llm.tokenizer, TEXT, 48, 2)
    full, full_arg = E.full_logprobs(llm, ids)
    res = E.stream(llm, ids, POLICIES, budget=64, sink_tokens=4, recent_window=8, progress=False)
    for i in range(len(POLICIES)):
        torch.testing.assert_close(res.logprob[i], full, atol=1e-4, rtol=1e-4)
        assert torch.equal(res.argmax[i], full_arg)


def test_perplexity_records(make_tiny):
    llm = make_tiny("llama")
    recs = E.perplexity(llm, budgets=[24, 32], policies=POLICIES, max_tokens=64, text=TEXT, sink_tokens=4, recent_window=8,
                        progress=False)
    assert len(recs) == 2 * (len(POLICIES) + 1)
    for r in recs:
        assert {"policy", "budget", "tokens", "perplexity", "perplexity_after_budget", "peak_kv_tokens",
                "top1_agreement_after_budget"} <= set(r)
        assert 0.0 <= r["top1_agreement_after_budget"] <= 1.0
        assert r["tokens"] == 63 and r["perplexity"] > 1
        if r["policy"] != "full":
            assert r["peak_kv_tokens"] <= r["budget"]
    assert all(r["top1_agreement_after_budget"] == 1.0 for r in recs if r["policy"] == "full")
    full = [r["perplexity"] for r in recs if r["policy"] == "full"]
    assert full[0] == full[1]
    json.dumps(recs)
    assert "| ebbinghaus |" in E.table(recs, "perplexity")


def test_passkey_prompt_hides_the_key_at_the_depth(tokenizer):
    shallow = E.passkey_ids(tokenizer, 300, 0.1, 12345)
    deep = E.passkey_ids(tokenizer, 300, 0.9, 12345)
    assert abs(shallow.shape[0] - 300) <= 2 and shallow.shape == deep.shape
    text_s, text_d = tokenizer.decode(shallow), tokenizer.decode(deep)
    assert "12345" in text_s and text_s.index("12345") < text_d.index("12345")
    assert text_s.rstrip().endswith("The pass key is")
    with pytest.raises(ValueError):
        E.passkey_ids(tokenizer, 20, 0.5, 12345)


def test_passkey_records(make_tiny):
    llm = make_tiny("llama")
    recs = E.passkey(llm, budgets=[48], lengths=[120], depths=[0.2, 0.8], trials=2, policies=POLICIES, sink_tokens=4,
                     recent_window=8, prefill_chunk=16, answer_tokens=3, progress=False)
    assert len(recs) == 2 * (len(POLICIES) + 1)
    for r in recs:
        assert {"policy", "budget", "length", "depth", "trials", "correct", "accuracy", "answers"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["answers"]) == 2
        if r["policy"] != "full":
            assert r["peak_kv_tokens"] <= 48
    again = E.passkey(llm, budgets=[48], lengths=[120], depths=[0.2, 0.8], trials=2, policies=POLICIES, sink_tokens=4,
                      recent_window=8, prefill_chunk=16, answer_tokens=3, progress=False)
    assert again == recs  # deterministic under the seed


def test_agreement_records_and_no_eviction_agrees_fully(make_tiny):
    llm = make_tiny("llama")
    recs = E.agreement(llm, budgets=[40, 200], policies=POLICIES, prompt_tokens=24, new_tokens=40, text=TEXT,
                       sink_tokens=4, recent_window=8, prefill_chunk=8, progress=False)
    assert {r["budget"] for r in recs} == {40, 200}
    for r in recs:
        assert 0.0 <= r["agreement"] <= 1.0 and r["tokens"] == 40 and 0.0 < r["distinct_generated"] <= 1.0
        if r["budget"] == 200:
            assert r["agreement"] == 1.0  # nothing evicted: same predictions as the full cache


def test_stream_rejects_a_budget_without_room_for_the_chunk(make_tiny):
    llm = make_tiny("llama")
    with pytest.raises(ValueError):
        E.stream(llm, torch.zeros(1, 50, dtype=torch.long), ["h2o"], budget=20, sink_tokens=4, recent_window=8, chunk=16)
    with pytest.raises(ValueError):
        E.stream(llm, torch.zeros(1, 50, dtype=torch.long), ["full"], budget=40, sink_tokens=4, recent_window=8)


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_one_prefill_for_every_policy_equals_reading_the_prompt_per_policy(make_tiny, granularity):
    """passkey(read="whole") prefills once and hands copies to every policy (adopt_prefill): the
    same answers and the same kept positions as each policy reading the prompt itself."""
    from transformers import DynamicCache

    from memollm.attention import attached

    llm = make_tiny("llama")
    ids = torch.stack([E.passkey_ids(llm.tokenizer, 120, d, 12345) for d in (0.2, 0.7)])
    cfg = llm.config.replace(granularity=granularity, observation_window=8, observation_pool=3)
    policies = ["ebbinghaus", "tova", "h2o"]
    res = E.stream(llm, ids, policies, 40, sink_tokens=4, recent_window=8, prefill=ids.shape[1],
                   prefill_chunk=ids.shape[1], config=cfg, keep_session=True)
    with attached(llm.model, res.session):
        alone = greedy(llm.model, res.cache, 4, res.last_logits)
    cache = DynamicCache(config=llm.model.config)
    capture = _Capture(8)
    with torch.no_grad(), attached(llm.model, capture):
        logits = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
    run = E.eval_config(llm, 40, 4, 8, cfg)
    session, copy = rows_from_prefill(llm.model, policies, run, [(l.keys, l.values) for l in cache.layers],
                                      capture.received, rows_each=ids.shape[0])
    with attached(llm.model, session):
        shared = greedy(llm.model, copy, 4, logits.repeat(len(policies), 1))
    assert torch.equal(shared, alone)
    assert torch.equal(session.positions, res.session.positions)


def test_stream_summary_means_and_pairs_windows():
    recs = [{"evaluation": "stream", "policy": p, "positions": "cache", "budget": 64, "granularity": "layer",
             "window_start": w, "perplexity": 10.0 + w / 100 + (p == "ebbinghaus")}
            for p in ("streaming", "ebbinghaus") for w in range(0, 400, 100)]
    recs.append({"evaluation": "stream", "policy": "full", "positions": "true", "budget": None, "window_start": 0,
                 "perplexity": 9.0})
    rows = {r["policy"]: r for r in E.stream_summary(recs, context=200)}
    assert set(rows) == {"streaming", "ebbinghaus"}  # the full cache is the reference, not a line
    assert rows["streaming"]["before"] == 11.0  # the window ending in (100, 200]
    assert rows["streaming"]["after"] == 12.5 and rows["streaming"]["worst_after"] == 13.0  # starts 200, 300
    assert rows["streaming"]["vs_baseline"] is None
    assert rows["ebbinghaus"]["vs_baseline"][0] == pytest.approx(1.0)
