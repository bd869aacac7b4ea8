"""The learned strength: the gate file, finding it, and the ebbinghaus_learned policy in generation."""

from __future__ import annotations

import json

import pytest
import torch

from memollm import ConfigError
from memollm.policies import make_policy
from memollm.strength import StrengthGate, find_gate, model_signature
from memollm_testutils import assert_clean, greedy_reference, one_thread, per_layer_masked_reference, random_gate

_one_thread = one_thread()

PROMPT = "Spaced repetition keeps what is used and lets the rest fade away. " * 3


@pytest.fixture
def gate_file(tiny, tmp_path):
    path = tmp_path / "gate.safetensors"
    random_gate(tiny.model).save(path)
    return str(path)


def test_a_gate_round_trips_with_its_metadata_and_the_same_gate_gives_the_same_bytes(tiny, tmp_path):
    gate = random_gate(tiny.model)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    gate.save(a)
    random_gate(tiny.model).save(b)
    assert a.read_bytes() == b.read_bytes()
    back = StrengthGate.load(a)
    assert back.layers == gate.layers and back.metadata["model"] == "tiny" and back.matches(tiny.model)
    hidden = torch.randn(5, gate.hidden_size)
    torch.testing.assert_close(back(1, hidden), gate(1, hidden))
    assert back(1, hidden).shape == (5, gate.kv_heads)
    stacked = torch.stack([hidden] * len(gate.layers))
    torch.testing.assert_close(back.log_strength_all(stacked)[1], gate(1, hidden))


def test_a_model_without_a_gate_gets_an_error_naming_the_training_command(tiny, tmp_path):
    llm = tiny
    with pytest.raises(ConfigError, match="memollm train-strength"):
        find_gate(llm.model)
    with pytest.raises(ConfigError, match="no such file"):
        find_gate(llm.model, tmp_path / "missing.safetensors")
    other = random_gate(llm.model)
    other.metadata["signature"] = json.dumps({**model_signature(llm.model), "hidden_size": 1})
    other.save(tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="train one"):
        find_gate(llm.model, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="memollm train-strength"):
        llm.generate(PROMPT, 3, "evict", chat=False, memory_budget=16, sink_tokens=2, recent_window=4,
                     policy="ebbinghaus_learned")
    assert_clean(llm.model)


def test_the_policy_ranks_by_retention_with_the_strength_it_learned():
    p = make_policy("ebbinghaus_learned", __import__("memollm").MemoryConfig(), 1)
    p.learn(torch.log(torch.tensor([[[100.0, 1.0, 1.0]]])))  # one state layer, one row, three new tokens
    p.append(1, 3)  # ages 2, 1, 0
    s = p.scores(torch.arange(3)[None])
    torch.testing.assert_close(s, torch.tensor([[-0.02, -1.0, 0.0]]))
    p.keep(torch.tensor([[0, 2]]))
    p.learn(torch.zeros(1, 1, 1))
    p.append(1, 1)
    torch.testing.assert_close(p.age, torch.tensor([[3.0, 1.0, 0.0]]))


def test_with_room_for_everything_it_gives_the_baselines_tokens(tiny, gate_file):
    llm = tiny
    r = llm.generate(PROMPT, 8, "evict", chat=False, memory_budget=4096, policy="ebbinghaus_learned",
                     strength_gate=gate_file, ignore_eos=True)
    plain = llm.generate(PROMPT, 8, "baseline", chat=False, ignore_eos=True)
    assert r["token_ids"] == plain["token_ids"] and r["evicted_tokens"] == 0
    assert_clean(llm.model)


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_eviction_equals_masking_the_same_positions(tiny, gate_file, granularity):
    llm = tiny
    ids = llm.encode(PROMPT, chat=False)
    n = 10
    r = llm.generate(PROMPT, n, "evict", chat=False, memory_budget=16, sink_tokens=2, recent_window=4,
                     policy="ebbinghaus_learned", strength_gate=gate_file, granularity=granularity, ignore_eos=True)
    assert r["kv_cache_tokens"] == 16 and r["evicted_tokens"] > 0
    if granularity == "shared":
        assert r["token_ids"] == greedy_reference(llm.model, ids, n, drop=r["evict_events"], eos=None)
    elif granularity == "layer":
        layers = [int(name.split("_")[1]) for name in r["kept_positions"]]
        assert per_layer_masked_reference(llm.model, ids, r["token_ids"], r["evict_events"], layers) == r["token_ids"]
    assert_clean(llm.model)


def test_the_gate_decides_what_is_kept(tiny, tmp_path):
    """Two gates, two different sets of kept positions: the strength is what ranks."""
    llm = tiny
    kept = []
    for seed in (0, 1):
        path = tmp_path / f"g{seed}.safetensors"
        random_gate(llm.model, seed).save(path)
        r = llm.generate(PROMPT, 4, "evict", chat=False, memory_budget=16, sink_tokens=2, recent_window=4,
                         policy="ebbinghaus_learned", strength_gate=str(path), granularity="shared", ignore_eos=True)
        kept.append(r["evict_events"])
    assert kept[0] != kept[1]
