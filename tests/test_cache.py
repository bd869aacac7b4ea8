"""memollm.cache: the slot layout (SlotLayout), choosing the slots to keep (select_keep), gathering
them (gather_cache), the cache's size in bytes, and RoPE re-rotation of cached keys (rerotate).
The lessons' decode_loop: test_lessons.py."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from memollm.cache import (SlotLayout, full_attention_layers, gather_cache, kv_cache_bytes, kv_heads, memory_layer_ids,
                           rerotate, rotary_embedding, select_keep)

torch.set_num_threads(1)

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
ROTARY = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt_neox"]  # gpt_neox: partial rotary (25% of channels)


# -- the slot layout ---------------------------------------------------------------------------
def test_slot_layout_per_granularity(make_tiny):
    llm = make_tiny("llama")
    model, cfg = llm.model, llm.config
    full = full_attention_layers(model)
    shared = SlotLayout.of(model, cfg.replace(granularity="shared"))
    assert shared.layer_ids == memory_layer_ids(model, cfg) and (shared.state_layers, shared.units) == (
        len(memory_layer_ids(model, cfg)), 1)
    layer = SlotLayout.of(model, cfg.replace(granularity="layer"))
    assert layer.layer_ids == full and (layer.state_layers, layer.units, layer.heads) == (1, len(full), 1)
    head = SlotLayout.of(model, cfg.replace(granularity="head"))
    assert (head.heads, head.units) == (kv_heads(model), len(full) * kv_heads(model))
    masks = SlotLayout.of(model, cfg.replace(granularity="layer"), "sparse_attention")
    assert (masks.units, masks.state_layers) == (1, len(full))  # masks never move slots
    assert SlotLayout.of(model, cfg, "soft_delete").granularity == "shared" and not layer.sliding


# -- which slots to keep, and the gather -------------------------------------------------------
def test_select_keep_protects_sinks_and_window():
    positions = torch.arange(10)[None]
    scores = torch.tensor([[0.0, 0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 0.0, 0.0, 0.0]])
    keep, fallback = select_keep(scores, positions, 6, sink_tokens=2, recent_window=2)
    assert not fallback
    assert keep.tolist() == [[0, 1, 2, 4, 8, 9]]


def test_select_keep_falls_back_to_recency_on_non_finite_scores():
    positions = torch.arange(10)[None]
    for bad in (math.nan, math.inf, -math.inf):
        scores = torch.rand(1, 10)
        scores[0, 3] = bad
        keep, fallback = select_keep(scores, positions, 6, sink_tokens=2, recent_window=2)
        assert fallback
        assert keep.tolist() == [[0, 1, 6, 7, 8, 9]]


def test_gather_cache_and_bytes():
    from transformers import DynamicCache, LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32)
    cache = DynamicCache(config=cfg)
    for i in range(2):
        k = torch.arange(2 * 2 * 6 * 8, dtype=torch.float32).reshape(2, 2, 6, 8)
        cache.update(k, k + 1000, i)
    assert kv_cache_bytes(cache) == 2 * 2 * (2 * 2 * 6 * 8) * 4
    assert kv_cache_bytes(None) == 0
    ref = cache.layers[0].keys.clone()
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    gather_cache(cache, keep)
    assert cache.get_seq_length() == 3
    for row in range(2):
        torch.testing.assert_close(cache.layers[1].keys[row], ref[row][:, keep[row]])
        torch.testing.assert_close(cache.layers[1].values[row], ref[row][:, keep[row]] + 1000)


# -- re-rotating keys to new positions ---------------------------------------------------------
@torch.no_grad()
def _layer0_keys(llm, ids, offset):
    cache = DynamicCache(config=llm.model.config)
    n = ids.shape[1]
    llm.model(ids, cache=cache, use_cache=True, position_ids=torch.arange(offset, offset + n)[None])
    return cache.layers[0].keys


@pytest.mark.parametrize("arch", ROTARY)
def test_rerotating_a_key_equals_computing_it_at_the_new_position(make_tiny, arch):
    """Layer 0's keys depend only on the token and its position: an independent reference."""
    llm = make_tiny(arch)
    ids = llm.encode(PROMPT, chat=False)
    far, near = _layer0_keys(llm, ids, 700), _layer0_keys(llm, ids, 3)
    shift = torch.full((1, 1, ids.shape[1]), 3 - 700)
    torch.testing.assert_close(rerotate(far, shift, rotary_embedding(llm.model)), near, atol=2e-5, rtol=1e-4)


def test_bundled_model_rerotation_and_per_head_turns(llm):
    ids = llm.encode(PROMPT, chat=False)
    far, near = _layer0_keys(llm, ids, 5000), _layer0_keys(llm, ids, 10)
    n, heads = ids.shape[1], far.shape[1]
    shift = torch.full((1, heads, n), 10 - 5000)  # one turn per KV head, as per-head eviction needs
    # angles of ~5,000 radians carry float32 rounding of ~1e-4 in the reference itself
    torch.testing.assert_close(rerotate(far, shift, rotary_embedding(llm.model)), near, atol=2e-3, rtol=1e-3)
