"""memollm.llm (EbbinghausLLM.generate and GenerateArgs): the seed's result dict, lists of prompts,
sampling, logging and progress, every bad argument named, reading a prompt in chunks
(prefill_chunk), and the model's context limits."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf

from memollm import MODES, ConfigError, EbbinghausLLM, MemoryConfig
from memollm.config import knobs_for
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."
FOX_CAT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
EVICT = dict(chat=False, memory_budget=24, sink_tokens=2, recent_window=4, ignore_eos=True)
SEED_KEYS = {"generated_text", "num_tokens", "generation_time", "memory_stats", "tokens_per_second",
             "kv_cache_tokens", "kv_cache_bytes", "mode", "config", "token_ids", "warnings"}


@pytest.fixture(scope="module")
def prompt_len(tiny):
    return tiny.encode(PROMPT, chat=False).shape[1]


# -- the result dict ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_result_has_the_seeds_keys(tiny, prompt_len, mode):
    r = tiny.generate(PROMPT, 6, mode, chat=False, **knobs_for(mode, {"memory_budget": 40}))
    assert SEED_KEYS <= set(r)
    assert r["mode"] == mode
    assert r["num_tokens"] == len(r["token_ids"]) == 6
    assert r["generated_text"] == tiny.tokenizer.decode(r["token_ids"], skip_special_tokens=True)
    assert r["generation_time"] > 0
    assert r["tokens_per_second"] == pytest.approx(6 / r["generation_time"])
    assert r["prompt_tokens"] == prompt_len
    per_token = 4 * 2 * 2 * 16 * 4  # layers * (K and V) * kv heads * head dim * fp32 bytes
    assert r["kv_cache_bytes"] == r["kv_cache_tokens"] * per_token
    expected_kv = prompt_len + 6 - 1 if mode != "evict" else min(40, prompt_len + 5)
    assert r["kv_cache_tokens"] == expected_kv
    assert MemoryConfig(**r["config"]).memory_budget == (40 if mode == "evict" else 512)
    json.dumps(r)  # the whole result is plain data
    if mode == "baseline":
        assert r["memory_stats"] == {} and r["warnings"] == []
    else:
        # evict ranks per layer by default (every layer keeps state); the others: first half of 4 layers
        expected = {"layer_0", "layer_1", "layer_2", "layer_3"} if mode == "evict" else {"layer_0", "layer_1"}
        assert set(r["memory_stats"]) == expected
        for stats in r["memory_stats"].values():
            assert 0.0 <= stats["min_retention"] <= stats["avg_retention"] <= 1.0
            assert stats["avg_strength"] >= 5.0 and stats["avg_age"] >= 0.0
            assert stats["num_tokens"] == r["kv_cache_tokens"]
    assert_clean(tiny.model)


def test_a_list_of_prompts_gives_a_list_of_results(tiny):
    prompts = [PROMPT, "A short one.", "Another prompt about foxes and dogs."]
    for mode in ("baseline", "evict"):
        knobs = knobs_for(mode, dict(memory_budget=12, sink_tokens=2, recent_window=4))
        batch = tiny.generate(prompts, 5, mode, chat=False, **knobs)
        assert isinstance(batch, list) and len(batch) == 3
        for p, r in zip(prompts, batch):
            assert r["token_ids"] == tiny.generate(p, 5, mode, chat=False, **knobs)["token_ids"]
    with pytest.raises(ValueError, match="prompt"):
        tiny.generate([], 5)


def test_sampling_with_a_seed_is_reproducible(tiny):
    kw = dict(chat=False, temperature=1.5, top_k=50, seed=7)
    for mode in ("baseline", "evict"):
        knobs = knobs_for(mode, dict(memory_budget=16, sink_tokens=2, recent_window=4))
        a = tiny.generate(PROMPT, 8, mode, **knobs, **kw)
        b = tiny.generate(PROMPT, 8, mode, **knobs, **kw)
        assert a["token_ids"] == b["token_ids"]
    greedy = tiny.generate(PROMPT, 8, chat=False)
    assert a["token_ids"] != greedy["token_ids"]  # it did sample (temperature 1.5 on a random model)


def test_verbose_logs_instead_of_printing(tiny, capsys, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="memollm"):
        tiny.generate(PROMPT, 3, "evict", chat=False, verbose=True, memory_budget=40)
    assert capsys.readouterr().out == ""
    assert any("tok/s" in rec.getMessage() for rec in caplog.records)


def test_verbose_shows_progress_in_every_mode(tiny, capsys, monkeypatch):
    import memollm.llm

    counted = []

    class Bar(memollm.llm.tqdm):  # tqdm that remembers how far it got
        def close(self):
            counted.append(self.n)
            super().close()

    monkeypatch.setattr(memollm.llm, "tqdm", Bar)
    for mode in ("baseline", "evict"):
        tiny.generate(FOX_CAT, 4, mode, verbose=True, **(EVICT if mode == "evict" else dict(chat=False)))
        assert f"{mode}: 4 tokens" in capsys.readouterr().err
    assert counted and set(counted) == {4}  # every bar reached the number of new tokens


# -- bad input ---------------------------------------------------------------------------------
BAD = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"generation_mode": "fast"}, "generation_mode"),
    ({"generation_mode": "evict", "memory_budget": 10}, "memory_budget"),
    ({"generation_mode": "evict", "memory_budget": 5, "sink_tokens": 2, "recent_window": 3}, "memory_budget"),
    ({"generation_mode": "evict", "policy": "nope"}, "policy"),
    ({"config": MemoryConfig(), "sink_tokens": -1}, "sink_tokens"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": "x"}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"seed": -1}, "seed"),
    ({"do_sample": "yes"}, "do_sample"),
    ({"chat": True}, "chat"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_input_gets_a_value_error_naming_the_parameter(tiny, kwargs, name):
    args = {"prompt": PROMPT, "max_new_tokens": 4, **kwargs}
    if "chat" not in kwargs:
        args["chat"] = False
    with pytest.raises(ValueError, match=name):
        if name == "chat":
            _no_template(tiny).generate(**args)
        else:
            tiny.generate(**args)
    assert_clean(tiny.model)


def _no_template(llm):
    import copy

    tok = copy.copy(llm.tokenizer)
    tok.chat_template = None
    return EbbinghausLLM(model=llm.model, tokenizer=tok)


def test_unknown_keyword_is_rejected_with_the_valid_ones(tiny):
    with pytest.raises(TypeError, match=r"max_tokens.*valid:.*max_new_tokens.*generation_mode"):
        tiny.generate(PROMPT, max_tokens=5)
    with pytest.raises(TypeError, match="config must be a MemoryConfig"):
        tiny.generate(PROMPT, 4, config={"time_step": 1.0})
    with pytest.raises(TypeError, match="config must be a MemoryConfig"):
        EbbinghausLLM(model=tiny.model, tokenizer=tiny.tokenizer, config={"time_step": 1.0})
    with pytest.raises(ValueError, match="model= and tokenizer="):
        EbbinghausLLM(model=tiny.model)


def test_a_knob_the_mode_never_reads_is_the_same_error_in_generate_and_chat(tiny):
    for call in (lambda: tiny.generate(FOX_CAT, 3, "soft_delete", chat=False, memory_budget=64),
                 lambda: tiny.chat("soft_delete", memory_budget=64)):
        with pytest.raises(ConfigError, match=r"memory_budget does nothing in generation_mode='soft_delete': "
                                              r"only evict reads it"):
            call()
    with pytest.raises(ConfigError, match="time_step does nothing in generation_mode='baseline'"):
        tiny.generate(FOX_CAT, 3, "baseline", chat=False, time_step=0.5)
    with pytest.raises(ConfigError, match="soft_delete_floor"):
        tiny.chat("evict", soft_delete_floor=0.5)
    with pytest.raises(ValueError, match="memory_budget"):
        tiny.generate(FOX_CAT, 3, "evict", chat=False, memory_budget=5)
    # a budget too small for eviction is only an error where eviction runs
    small = MemoryConfig(memory_budget=8, recent_window=32)
    assert tiny.generate(FOX_CAT, 3, "soft_delete", chat=False, config=small)["num_tokens"] == 3


# -- a long prompt read in chunks (bounded memory) ---------------------------------------------
LONG = " ".join(f"Sentence {i} says that the number {i * 7} is on the list." for i in range(12))


def test_prefill_chunk_needs_evict(llm):
    with pytest.raises(ValueError, match="prefill_chunk"):
        llm.generate(LONG, 2, "soft_delete", prefill_chunk=16)
    with pytest.raises(ValueError, match="memory_budget"):
        llm.generate(LONG, 2, "evict", memory_budget=40, prefill_chunk=16)  # 4 sinks + 32 recent + 16 > 40


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


# -- the model's context -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_context(tokenizer):
    """Tiny rotary (llama) and absolute-position (gpt2) models with a 32-position context."""
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               max_position_embeddings=32)).eval()
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                            n_positions=32)).eval()
    return {name: EbbinghausLLM(model=m, tokenizer=tokenizer) for name, m in (("llama", llama), ("gpt2", gpt2))}


def test_prompt_longer_than_the_context(short_context):
    long = PROMPT * 2  # 38 tokens > 32 positions
    for name, llm in short_context.items():
        for mode in ("baseline", "soft_delete", "sparse_attention", "evict"):  # a prompt is read in one pass
            with pytest.raises(ValueError, match="context of 32 positions"):
                llm.generate(long, 4, mode, chat=False,
                             **knobs_for(mode, dict(memory_budget=16, sink_tokens=2, recent_window=4)))
        assert_clean(llm.model)


def test_generation_past_the_context(short_context):
    evict = dict(chat=False, memory_budget=16, sink_tokens=2, recent_window=4, ignore_eos=True)
    # rotary positions stream: evict keeps a bounded cache past the context, and says where positions go
    r = short_context["llama"].generate(PROMPT, 30, "evict", **evict)
    assert r["kv_cache_tokens"] == 16 and len(r["warnings"]) == 1 and "positions='cache'" in r["warnings"][0]
    r = short_context["llama"].generate(PROMPT, 30, "evict", positions="cache", **evict)
    assert r["kv_cache_tokens"] == 16 and r["warnings"] == []
    with pytest.raises(ValueError, match="policy 'full'"):  # never evicts: it cannot go past the context
        short_context["llama"].generate(PROMPT, 30, "evict", policy="full", **evict)
    # learned absolute positions cannot go past their table, nor re-rotate keys
    with pytest.raises(ValueError, match="absolute positions"):
        short_context["gpt2"].generate(PROMPT, 30, "evict", **evict)
    with pytest.raises(ValueError, match="rotary"):
        short_context["gpt2"].generate(PROMPT, 4, "evict", positions="cache", **evict)
    with pytest.raises(ValueError, match="max_new_tokens"):
        short_context["gpt2"].generate("Short.", 40, chat=False)
    for llm in short_context.values():
        assert_clean(llm.model)
