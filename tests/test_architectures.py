"""Every mode on tiny random models of several architectures, with the equivalence tests;
models with sliding-window layers (Gemma 3) evict and mask on their full-attention layers, and
what cannot be supported (a model with only sliding layers) fails with an error that says why."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from conftest import ARCHS
from memollm import EbbinghausLLM, MemoryConfig
from memollm.attention import attached
from memollm.session import MemorySession
from memollm_testutils import assert_clean, forced_forgetting, greedy_reference, one_thread, per_layer_masked_reference

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."
N = 20


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, make_tiny):
    llm = make_tiny(request.param)
    ids = llm.encode(PROMPT, chat=False)
    base = llm.generate(PROMPT, N, chat=False)["token_ids"]
    return llm, ids, base


def _eos(llm):
    return llm.tokenizer.eos_token_id


def test_baseline_equals_model_generate_and_the_reference_loop(tiny):
    llm, ids, base = tiny
    out = llm.model.generate(ids, max_new_tokens=N, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id)
    assert base == out[0, ids.shape[1]:].tolist()
    assert base == greedy_reference(llm.model, ids, N, eos=_eos(llm))  # the reference is fair
    assert_clean(llm.model)


def test_soft_delete_floor_one_equals_baseline(tiny):
    llm, ids, base = tiny
    r = llm.generate(PROMPT, N, "soft_delete", config=forced_forgetting(soft_delete_floor=1.0), chat=False)
    assert r["token_ids"] == base
    assert_clean(llm.model)


def test_evict_with_budget_above_length_equals_baseline(tiny):
    llm, ids, base = tiny
    r = llm.generate(PROMPT, N, "evict", memory_budget=ids.shape[1] + N, chat=False)
    assert r["token_ids"] == base
    assert r["evicted_tokens"] == 0
    assert_clean(llm.model)


def test_sparse_attention_equals_dropping_the_forgotten_positions(tiny):
    llm, ids, base = tiny
    r = llm.generate(PROMPT, N, "sparse_attention", config=forced_forgetting(), chat=False)
    assert r["forget_events"], "forgetting must happen for the test to mean anything"
    assert r["token_ids"] == greedy_reference(llm.model, ids, N, drop=r["forget_events"], eos=_eos(llm))
    assert_clean(llm.model)


def test_evict_equals_masking_and_dropping_the_evicted_positions(tiny):
    _check_evict_equivalence(tiny[0], tiny[1], "ebbinghaus")


@pytest.mark.parametrize("policy", ["h2o", "tova", "snapkv", "random", "ebbinghaus_seed"])
def test_other_policies_equal_masking_too(make_tiny, policy):
    llm = make_tiny("llama")
    _check_evict_equivalence(llm, llm.encode(PROMPT, chat=False), policy)


def _check_evict_equivalence(llm, ids, policy):
    budget = 16  # below the prompt length: the prompt is compressed, then one token per step goes
    kwargs = dict(memory_budget=budget, sink_tokens=2, recent_window=4, policy=policy, chat=False)
    r = llm.generate(PROMPT, N, "evict", granularity="shared", **kwargs)
    events = r["evict_events"]
    assert r["evicted_tokens"] == sum(map(len, events.values())) == ids.shape[1] + len(r["token_ids"]) - 1 - budget
    assert r["kv_cache_tokens"] == budget
    assert r["token_ids"] == greedy_reference(llm.model, ids, N, hide=events, eos=_eos(llm))
    assert r["token_ids"] == greedy_reference(llm.model, ids, N, drop=events, eos=_eos(llm))
    # the default, one ranking per layer: equal to hiding each layer's evicted positions in that layer
    r = llm.generate(PROMPT, N, "evict", ignore_eos=True, **kwargs)
    assert r["granularity"] == "layer" and r["kv_cache_tokens"] == budget
    layers = [int(name.split("_")[1]) for name in r["kept_positions"]]
    assert per_layer_masked_reference(llm.model, ids, r["token_ids"], r["evict_events"], layers) == r["token_ids"]
    assert_clean(llm.model)


@pytest.mark.parametrize("target", ["values", "logits"])
def test_soft_delete_changes_decode_logits_but_never_the_cache(tiny, target):
    """Soft delete does weigh fading tokens (decode logits move), on the fly: the prefill is
    untouched and the cached keys and values stay those of a plain run (the seed's
    multiply-the-cache design would compound them step after step)."""
    llm, ids, base = tiny
    kwargs = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True,
                  pad_token_id=llm.tokenizer.pad_token_id, min_new_tokens=4)
    plain = llm.model.generate(ids, **kwargs)
    cfg = forced_forgetting(soft_delete_floor=0.0, soft_delete_target=target)
    with attached(llm.model, MemorySession(llm.model, "soft_delete", cfg)):
        soft = llm.model.generate(ids, **kwargs)
    assert_clean(llm.model)
    torch.testing.assert_close(soft.logits[0], plain.logits[0])
    assert (soft.logits[1] - plain.logits[1]).abs().max() > 1e-3
    prompt_len = ids.shape[1]
    for a, b in zip(plain.past_key_values.layers, soft.past_key_values.layers):
        assert torch.equal(a.keys[..., :prompt_len, :], b.keys[..., :prompt_len, :])
        assert torch.equal(a.values[..., :prompt_len, :], b.values[..., :prompt_len, :])


# -- sliding-window models ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma3(tokenizer):
    """Gemma 3: sliding-window layers interleaved with full-attention layers."""
    torch.manual_seed(0)
    cfg = tf.Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                              max_position_embeddings=1024, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"] * 2)
    return EbbinghausLLM(model=tf.Gemma3ForCausalLM(cfg).eval(), tokenizer=tokenizer)


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_gemma3_evict_with_room_equals_baseline(gemma3, granularity):
    base = gemma3.generate(PROMPT, N, chat=False)["token_ids"]
    n = gemma3.encode(PROMPT, chat=False).shape[1]
    r = gemma3.generate(PROMPT, N, "evict", memory_budget=n + N, granularity=granularity, chat=False)
    assert r["token_ids"] == base and r["evicted_tokens"] == 0
    chunked = gemma3.generate(PROMPT, N, "evict", memory_budget=n + N, prefill_chunk=8, recent_window=8,
                              chat=False)
    assert chunked["token_ids"] == base
    assert_clean(gemma3.model)


def test_gemma3_evict_acts_on_full_attention_layers_only(gemma3):
    """The full-attention layers (1, 3) are held to the budget; the sliding layers (0, 2) keep their
    own window; and the tokens equal dropping, or masking, the evicted positions in the full layers."""
    ids = gemma3.encode(PROMPT, chat=False)
    budget, window = 16, gemma3.model.config.sliding_window
    r = gemma3.generate(PROMPT, N, "evict", memory_budget=budget, sink_tokens=2, recent_window=4, chat=False,
                        granularity="shared")
    events = r["evict_events"]
    assert r["evicted_tokens"] == ids.shape[1] + len(r["token_ids"]) - 1 - budget > 0
    assert r["kv_cache_tokens"] == budget
    eos = _eos(gemma3)
    assert r["token_ids"] == greedy_reference(gemma3.model, ids, N, drop=events, eos=eos)
    assert r["token_ids"] == greedy_reference(gemma3.model, ids, N, hide=events, eos=eos)
    per_layer = gemma3.generate(PROMPT, N, "evict", memory_budget=budget, sink_tokens=2, recent_window=4, chat=False,
                                ignore_eos=True)  # the default: the full layers 1 and 3 rank their own tokens
    assert set(per_layer["kept_positions"]) == {"layer_1", "layer_3"}
    assert per_layer_masked_reference(gemma3.model, ids, per_layer["token_ids"], per_layer["evict_events"],
                                      [1, 3]) == per_layer["token_ids"]
    cfg = MemoryConfig(memory_budget=budget, sink_tokens=2, recent_window=4)
    with attached(gemma3.model, MemorySession(gemma3.model, "evict", cfg)):
        out = gemma3.model.generate(ids, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                    return_dict_in_generate=True, pad_token_id=gemma3.tokenizer.pad_token_id)
    held = [layer.keys.shape[-2] for layer in out.past_key_values.layers]
    assert held == [window - 1, budget, window - 1, budget]
    assert_clean(gemma3.model)


def test_gemma3_sparse_attention_equals_dropping_in_full_layers(gemma3):
    ids = gemma3.encode(PROMPT, chat=False)
    r = gemma3.generate(PROMPT, N, "sparse_attention", config=forced_forgetting(), chat=False)
    assert r["forget_events"], "forgetting must happen for the test to mean anything"
    assert r["token_ids"] == greedy_reference(gemma3.model, ids, N, drop=r["forget_events"], eos=_eos(gemma3))
    assert_clean(gemma3.model)


def test_gemma3_cache_positions_get_a_clear_error(gemma3):
    with pytest.raises(ValueError, match="sliding-window"):
        gemma3.generate(PROMPT, 3, "evict", memory_budget=64, positions="cache", chat=False)
    assert_clean(gemma3.model)


def test_gemma3_soft_delete_runs_on_its_full_attention_layers(gemma3):
    base = gemma3.generate(PROMPT, N, chat=False)["token_ids"]
    # default config: reinforcement reads the attention of every memory layer (it used to crash
    # when a sliding layer, which holds only its window, was a memory layer)
    r = gemma3.generate(PROMPT, N, "soft_delete", chat=False, return_attention_weights=True)
    assert set(r["memory_stats"]) == {"layer_1"}  # first half of the full-attention layers 1 and 3
    assert len(r["token_weights"]["attention"]["layer_1"]) == r["memory_stats"]["layer_1"]["num_tokens"]
    same = gemma3.generate(PROMPT, N, "soft_delete", chat=False, config=forced_forgetting(soft_delete_floor=1.0))
    assert same["token_ids"] == base
    faded = gemma3.generate(PROMPT, N, "soft_delete", chat=False, config=forced_forgetting(soft_delete_floor=0.0))
    assert faded["token_ids"] != base
    assert_clean(gemma3.model)


def test_all_sliding_model_gets_a_clear_error(tokenizer):
    torch.manual_seed(0)
    cfg = tf.MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
    llm = EbbinghausLLM(model=tf.MistralForCausalLM(cfg).eval(), tokenizer=tokenizer)
    assert llm.generate(PROMPT, 3, chat=False)["num_tokens"] == 3
    for mode in ("soft_delete", "sparse_attention", "evict"):
        with pytest.raises(NotImplementedError, match="sliding"):
            llm.generate(PROMPT, 3, mode, chat=False)
    assert_clean(llm.model)


def test_sparse_equivalence_holds_with_reinforcement(make_tiny):
    """With reinforcement on, attended tokens regain strength and escape the mask; the result
    still equals dropping exactly the masked positions."""
    llm = make_tiny("qwen3")
    ids = llm.encode(PROMPT, chat=False)
    n = 30
    plain = llm.generate(PROMPT, n, "sparse_attention", chat=False, config=forced_forgetting())
    cfg = forced_forgetting(review="share", review_threshold=1.2)
    r = llm.generate(PROMPT, n, "sparse_attention", chat=False, config=cfg)
    assert 0 < len(r["masked_positions"]) < len(plain["masked_positions"])
    assert r["memory_stats"]["layer_0"]["avg_strength"] > cfg.initial_strength
    assert r["token_ids"] == greedy_reference(llm.model, ids, n, drop=r["forget_events"], eos=_eos(llm))
    assert_clean(llm.model)


# -- granularities -----------------------------------------------------------------------------
ROTARY_AND_LEARNED = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gpt_neox"]
STORY = "Write a long story about a cat named Tom who lives in Paris and loves cheese."


@pytest.mark.parametrize("arch", ROTARY_AND_LEARNED)
def test_granularities_on_every_architecture(make_tiny, arch):
    """The tiny-architecture matrix: baseline tokens with room for everything, the budget in every
    layer with a small one, and the same count of slots in every layer."""
    tiny = make_tiny(arch)
    base = tiny.generate(STORY, 8, chat=False, ignore_eos=True)["token_ids"]
    for granularity in ("layer", "head"):
        roomy = tiny.generate(STORY, 8, "evict", chat=False, memory_budget=512, granularity=granularity,
                              ignore_eos=True)
        assert roomy["token_ids"] == base, (arch, granularity)
        small = tiny.generate(STORY, 8, "evict", chat=False, memory_budget=12, sink_tokens=2, recent_window=4,
                              granularity=granularity, ignore_eos=True)
        kept = small["kept_positions"]
        assert small["kv_cache_tokens"] == 12 and all(len(p) == 12 and p[:2] == [0, 1] for p in kept.values())
