"""memollm.cache: the slot layout, worked out once, and the lessons' hand-written decode loop."""

from __future__ import annotations

import torch

from memollm.cache import SlotLayout, full_attention_layers, kv_heads, memory_layer_ids
from memollm.lessons import decode_loop

torch.set_num_threads(1)


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


def test_decode_loop_matches_generate_and_forcing_itself(make_tiny):
    llm = make_tiny("llama")
    ids = llm.tokenizer("The lessons decode by hand.", return_tensors="pt").input_ids
    out = decode_loop(llm.model, ids, 5)
    with torch.no_grad():
        ref = llm.model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5,
                                 pad_token_id=llm.tokenizer.pad_token_id)
    assert out["token_ids"] == ref[0, ids.shape[1]:].tolist()
    assert out["logits"].shape == (5, llm.model.config.vocab_size)
    assert out["kv_cache_tokens"] == list(range(ids.shape[1], ids.shape[1] + 5))
    forced = decode_loop(llm.model, ids, 5, forced_tokens=out["token_ids"])
    torch.testing.assert_close(forced["logits"], out["logits"])
    dropped = decode_loop(llm.model, ids, 3, drop={1: [1, 2]})
    assert 1 not in dropped["positions"] and dropped["kv_cache_tokens"][1] == ids.shape[1] - 1
