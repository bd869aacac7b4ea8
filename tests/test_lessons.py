"""The lessons' tools: decode_loop, the greedy loop the notebooks write out by hand (checked against
model.generate, forced tokens and dropped positions)."""

from __future__ import annotations

import torch

from memollm.lessons import decode_loop

torch.set_num_threads(1)


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
