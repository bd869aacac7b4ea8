"""memollm.evaluate.rows: policies side by side, each variant with its own knobs and the run's."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from memollm.attention import attached
from memollm.config import MemoryConfig
from memollm.evaluate.passkey import _Capture
from memollm.evaluate.rows import copy_prefill, greedy, rows_from_prefill, rows_session, spec

torch.set_num_threads(1)


def test_spec_accepts_names_and_variants():
    cfg = MemoryConfig(strength_gain=2.0)
    assert spec("h2o") == ("h2o", "h2o", None)
    assert spec(("strong", "ebbinghaus", cfg)) == ("strong", "ebbinghaus", cfg)


def test_rows_session_has_no_placeholder_policy(make_tiny):
    llm = make_tiny("llama")
    run = llm.config.replace(memory_budget=40, sink_tokens=2, recent_window=4, policy="tova")
    session = rows_session(llm.model, ["h2o", "streaming"], run, seed=5, rows_each=2)
    assert session.config == run
    assert [p.config.policy for p in session.policy.policies] == ["h2o", "streaming"]
    assert session.policy.rows_each == 2 * session.units
    with pytest.raises(ValueError, match="full"):
        rows_session(llm.model, ["full"], run)


def test_copy_prefill_leaves_the_prefill_intact(make_tiny):
    llm = make_tiny("llama")
    ids = llm.tokenizer("Copies of one prefill, decoded apart.", return_tensors="pt").input_ids
    cache = DynamicCache(config=llm.model.config)
    with torch.no_grad():
        first = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
    prefill = [(l.keys, l.values) for l in cache.layers]
    copy = copy_prefill(llm.model, prefill, 2)
    assert copy.layers[0].keys.shape[0] == 2
    tokens = greedy(llm.model, copy, 3, first.repeat(2, 1))
    assert tokens.shape == (2, 3) and torch.equal(tokens[0], tokens[1])
    assert cache.layers[0].keys.shape[-2] == ids.shape[1]  # decoding appended to the copy only


def test_variant_configs_kept(llm):
    """A variant keeps its own knobs; budget, sinks, window, granularity and observation come from the run."""
    ids = llm.tokenizer("A short prompt to prefill once for two policies.", return_tensors="pt").input_ids
    capture, cache = _Capture(4), DynamicCache(config=llm.model.config)
    with torch.no_grad(), attached(llm.model, capture):
        llm.model(ids, cache=cache, use_cache=True)
    run = llm.config.replace(memory_budget=48, sink_tokens=2, recent_window=8, observation_window=4)
    specs = [("plain", "ebbinghaus", None), ("gain3", "ebbinghaus", MemoryConfig(strength_gain=3.0, sink_tokens=9))]
    session, _ = rows_from_prefill(llm.model, specs, run, [(l.keys, l.values) for l in cache.layers], capture.received)
    plain, gain = (p.config for p in session.policy.policies)
    assert gain.strength_gain == 3.0 and plain.strength_gain == run.strength_gain
    assert gain.memory_budget == plain.memory_budget == 48 and gain.sink_tokens == 2 and gain.recent_window == 8
