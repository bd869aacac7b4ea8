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


# -- a long prompt read in chunks (bounded memory) ------------------------------------------------
LONG = " ".join(f"Sentence {i} says that the number {i * 7} is on the list." for i in range(12))


@pytest.mark.parametrize("granularity", ["shared", "layer"])
def test_chunked_prefill_with_room_gives_one_pass_tokens(llm, granularity):
    one = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, ignore_eos=True)
    for chunk in (7, 32):
        r = llm.generate(LONG, 8, "evict", memory_budget=512, granularity=granularity, prefill_chunk=chunk,
                         ignore_eos=True)
        assert r["token_ids"] == one["token_ids"] and r["prompt_tokens"] == one["prompt_tokens"]
