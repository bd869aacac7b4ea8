"""Positions after eviction: ``positions="true"`` (today's default) and ``positions="cache"``
(StreamingLLM: every cached token at its rank in the cache, keys re-rotated when slots shift)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from memollm.cache import rerotate, rotary_embedding
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
ROTARY = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt_neox"]  # gpt_neox: partial rotary (25% of channels)


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_nothing_evicted_gives_baseline_tokens(llm, granularity):
    base = llm.generate(PROMPT, 10, ignore_eos=True)
    r = llm.generate(PROMPT, 10, "evict", positions="cache", granularity=granularity, ignore_eos=True)
    assert r["token_ids"] == base["token_ids"] and r["evicted_tokens"] == 0
    assert_clean(llm.model)


@pytest.mark.parametrize("arch", ROTARY)
def test_positions_stay_inside_the_budget(make_tiny, arch):
    llm = make_tiny(arch)
    seen: list[int] = []

    def record(module, args, kwargs):
        seen.append(int(kwargs["position_ids"].max()))

    # registered after the session's hook would see generate's positions: read them in the session's order
    r = None
    handle = llm.model.register_forward_pre_hook(record, with_kwargs=True, prepend=False)
    try:
        r = llm.generate(PROMPT, 40, "evict", chat=False, memory_budget=16, sink_tokens=2, recent_window=4,
                         positions="cache", ignore_eos=True)
    finally:
        handle.remove()
    assert r["kv_cache_tokens"] == 16 and r["warnings"] == []
    # true positions are still what the result reports (events name true positions)
    dropped = sorted(p for event in r["evict_events"].values() for ps in event.values() for p in ps)  # per layer
    assert dropped and max(dropped) < r["prompt_tokens"] + 39
    assert_clean(llm.model)


def test_position_scheme_is_checked_up_front(make_tiny):
    with pytest.raises(ValueError, match="positions"):
        make_tiny("llama").generate(PROMPT, 2, "evict", positions="relative", chat=False)
    with pytest.raises(ValueError, match="rotary"):
        make_tiny("gpt2").generate(PROMPT, 2, "evict", positions="cache", chat=False, memory_budget=40)


# -- a long prompt read in chunks (bounded memory) ------------------------------------------------
LONG = " ".join(f"Sentence {i} says that the number {i * 7} is on the list." for i in range(12))


@pytest.mark.parametrize("granularity", ["shared", "layer"])
def test_chunked_prefill_with_room_gives_one_pass_tokens(llm, granularity):
    one = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, ignore_eos=True)
    for chunk in (7, 32):
        r = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, prefill_chunk=chunk,
                         ignore_eos=True)
        assert r["token_ids"] == one["token_ids"] and r["prompt_tokens"] == one["prompt_tokens"]


@pytest.mark.parametrize("positions", ["true", "cache"])
def test_chunked_prefill_never_exceeds_the_budget(llm, positions):
    lengths: list[int] = []

    def record(module, args, kwargs, output):
        lengths.append(kwargs["cache"].get_seq_length())

    handle = llm.model.register_forward_hook(record, with_kwargs=True)
    try:
        r = llm.generate(LONG, 6, "evict", memory_budget=64, recent_window=8, prefill_chunk=16,
                         positions=positions, ignore_eos=True, return_attention_weights=True)
    finally:
        handle.remove()
    assert r["prompt_tokens"] > 150 and max(lengths) <= 64 and r["peak_kv_cache_tokens"] <= 64
    tw = r["token_weights"]
    assert len(tw["tokens"]) == 64 and tw["positions"][-1] == r["prompt_tokens"] + 4
    assert_clean(llm.model)


def test_prefill_chunk_needs_evict(llm):
    with pytest.raises(ValueError, match="prefill_chunk"):
        llm.generate(LONG, 2, "soft_delete", prefill_chunk=16)
    with pytest.raises(ValueError, match="memory_budget"):
        llm.generate(LONG, 2, "evict", memory_budget=40, prefill_chunk=16)  # 4 sinks + 32 recent + 16 > 40


def test_cache_positions_silence_the_misleading_length_reminder():
    """transformers reminds that a generation "exceeded the model's predefined maximum length" by
    counting tokens; with positions="cache" no position exceeds the budget, so the reminder is
    filtered out during such a call (and only then)."""
    import logging

    from memollm.llm import _quiet_length_reminder

    logger = logging.getLogger("transformers.generation.stopping_criteria")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with _quiet_length_reminder(True):
            logger.warning("the call has exceeded the model's predefined maximum length (8192)")
            logger.warning("another warning")
        logger.warning("exceeded the model's predefined maximum length (8192)")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", "exceeded the model's predefined maximum length (8192)"]
    assert not logger.filters
