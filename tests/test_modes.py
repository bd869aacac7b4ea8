"""The result dict, statistics, budgets, batches, bad input and the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from memollm import MODES, EbbinghausLLM, MemoryConfig
from memollm.cli import main
from memollm_testutils import assert_clean, forced_forgetting, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."
SEED_KEYS = {"generated_text", "num_tokens", "generation_time", "memory_stats", "tokens_per_second",
             "kv_cache_tokens", "kv_cache_bytes", "mode", "config", "token_ids", "warnings"}


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("llama")


@pytest.fixture(scope="module")
def prompt_len(tiny):
    return tiny.encode(PROMPT, chat=False).shape[1]


# -- the result dict -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_result_has_the_seeds_keys(tiny, prompt_len, mode):
    r = tiny.generate(PROMPT, 6, mode, chat=False, memory_budget=40)
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
    assert MemoryConfig(**r["config"]).memory_budget == 40
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


def test_sparse_stats_count_the_masked_tokens(tiny):
    r = tiny.generate(PROMPT, 8, "sparse_attention", chat=False, config=forced_forgetting())
    masked = r["masked_positions"]
    assert masked and masked == sorted(set(masked))
    assert sorted(p for ps in r["forget_events"].values() for p in ps) == masked
    for stats in r["memory_stats"].values():
        assert stats["masked_tokens"] == len(masked)
        assert stats["forgotten_tokens"] >= len(masked)  # masked tokens stay under the threshold


def test_token_weights_on_request(tiny, prompt_len):
    # no pooling: a prompt's scores are then a mean of attention rows (pooling takes a max over neighbours)
    r = tiny.generate(PROMPT, 5, "soft_delete", chat=False, return_attention_weights=True,
                      config=tiny.config.replace(observation_pool=1))
    tw = r["token_weights"]
    n = prompt_len + 4  # every token with a KV entry
    assert tw["positions"] == list(range(n))
    assert len(tw["tokens"]) == n and all(isinstance(t, str) for t in tw["tokens"])
    assert "".join(tw["tokens"][:3]) == tiny.tokenizer.decode(tiny.encode(PROMPT, chat=False)[0, :3])
    for layer in ("layer_0", "layer_1"):
        assert len(tw["retention"][layer]) == n and all(0 <= x <= 1 for x in tw["retention"][layer])
        att = tw["attention"][layer]
        assert len(att) == n and all(x >= 0 for x in att)
        # summed over the steps: each step hands out one unit of attention
        assert sum(att) == pytest.approx(5.0, rel=1e-4)
    assert "token_weights" not in tiny.generate(PROMPT, 2, "soft_delete", chat=False)
    assert tiny.generate(PROMPT, 2, chat=False, return_attention_weights=True)["token_weights"] is None


def test_memory_overhead_is_at_most_20_bytes_per_token_per_layer(tiny):
    for mode, kw in [("soft_delete", {}), ("sparse_attention", {}), ("evict", {"memory_budget": 24, "recent_window": 8}),
                     ("soft_delete", {"return_attention_weights": True})]:
        r = tiny.generate(PROMPT, 8, mode, chat=False, **kw)
        layers = len(r["memory_stats"])
        tokens = next(iter(r["memory_stats"].values()))["num_tokens"]
        per = r["memory_state_bytes"] / tokens / layers
        assert 0 < per <= 20, (mode, per)
    for policy in ("h2o", "tova"):  # one float per token of their own, counted too
        r = tiny.generate(PROMPT, 8, "evict", chat=False, memory_budget=24, recent_window=8, policy=policy)
        units = len(r.get("kept_positions", {"shared": None}))  # per layer by default: one row per layer
        assert r["memory_state_bytes"] == 4 * r["kv_cache_tokens"] * units


# -- eviction budget -----------------------------------------------------------------------
@pytest.mark.parametrize("budget,sinks,window", [(12, 4, 4), (16, 2, 8), (24, 4, 16), (6, 0, 5)])
def test_evict_respects_the_budget(tiny, prompt_len, budget, sinks, window):
    r = tiny.generate(PROMPT, 12, "evict", chat=False, memory_budget=budget, sink_tokens=sinks,
                      recent_window=window, return_attention_weights=True, ignore_eos=True,
                      granularity="shared")  # one set of positions; per layer: test_granularity.py
    assert r["kv_cache_tokens"] == budget  # a prompt over the budget was compressed to it
    assert r["peak_kv_cache_tokens"] == max(budget, prompt_len)  # ... after it was prefilled whole
    pos = r["token_weights"]["positions"]
    assert len(pos) == budget
    assert all(a < b for a, b in zip(pos, pos[1:])), "positions strictly increasing"
    assert pos[:sinks] == list(range(sinks)), "the sinks are kept"
    newest = prompt_len + r["num_tokens"] - 2  # the last token fed to the model
    assert pos[-window:] == list(range(newest - window + 1, newest + 1)), "the recent window is kept"
    dropped = sorted(p for ps in r["evict_events"].values() for p in ps)
    assert sorted(set(range(newest + 1)) - set(pos)) == dropped


# -- batches -------------------------------------------------------------------------------
def test_a_list_of_prompts_gives_a_list_of_results(tiny):
    prompts = [PROMPT, "A short one.", "Another prompt about foxes and dogs."]
    for mode in ("baseline", "evict"):
        batch = tiny.generate(prompts, 5, mode, chat=False, memory_budget=12, sink_tokens=2, recent_window=4)
        assert isinstance(batch, list) and len(batch) == 3
        for p, r in zip(prompts, batch):
            assert r["token_ids"] == tiny.generate(p, 5, mode, chat=False, memory_budget=12, sink_tokens=2,
                                                   recent_window=4)["token_ids"]
    with pytest.raises(ValueError, match="prompt"):
        tiny.generate([], 5)


def test_verbose_logs_instead_of_printing(tiny, capsys, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="memollm"):
        tiny.generate(PROMPT, 3, "evict", chat=False, verbose=True, memory_budget=40)
    assert capsys.readouterr().out == ""
    assert any("tok/s" in rec.getMessage() for rec in caplog.records)


def test_sampling_with_a_seed_is_reproducible(tiny):
    kw = dict(chat=False, temperature=1.5, top_k=50, seed=7)
    for mode in ("baseline", "evict"):
        a = tiny.generate(PROMPT, 8, mode, memory_budget=16, sink_tokens=2, recent_window=4, **kw)
        b = tiny.generate(PROMPT, 8, mode, memory_budget=16, sink_tokens=2, recent_window=4, **kw)
        assert a["token_ids"] == b["token_ids"]
    greedy = tiny.generate(PROMPT, 8, chat=False)
    assert a["token_ids"] != greedy["token_ids"]  # it did sample (temperature 1.5 on a random model)


# -- bad input -----------------------------------------------------------------------------
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
                llm.generate(long, 4, mode, chat=False, memory_budget=16, sink_tokens=2, recent_window=4)
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


# -- the command line ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    """The tiny model saved as a local folder (safetensors), as a user would pass with --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return str(path)


def test_cli_compare_prints_one_table_and_writes_json(model_dir, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code = main(["generate", "--model", model_dir, "--compare", "--max_tokens", "3", "--budget", "40",
                 "--no-chat", "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.split(" ")[0] in MODES]
    assert [line.split()[0] for line in lines] == list(MODES)
    assert all(line.split()[1] == "3" for line in lines)
    results = json.loads(out_json.read_text())
    assert [r["mode"] for r in results] == list(MODES)
    assert all(r["num_tokens"] == 3 for r in results)


def test_cli_single_mode(model_dir, capsys):
    assert main(["generate", "--model", model_dir, "--mode", "evict", "--budget", "40", "--max_tokens", "2",
                 "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert "[evict] 2 tokens" in err
    assert '"mode": "evict"' in out


CLI_ERRORS = [
    (["--budget", "3"], "memory_budget"),
    (["--policy", "nope"], "policy"),
    (["--seed", "-1"], "--seed"),
    (["--temperature", "0"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--dtype", "float8"], "dtype"),
    (["--device", "nonsense"], "device"),
    (["--model", "/no/such/folder"], "/no/such/folder"),
    (["--json", "/no/such/dir/out.json"], "json"),
    (["--prompt", ""], "prompt"),
]


@pytest.mark.parametrize("argv,word", CLI_ERRORS, ids=[a[0] + "=" + a[1] for a, _ in CLI_ERRORS])
def test_cli_user_errors_are_one_line_and_status_2(model_dir, capsys, argv, word):
    full = ["generate", "--max_tokens", "2", *argv]
    if "--model" not in argv:
        full += ["--model", model_dir]
    assert main(full) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and word in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["generate", "--max_tokens", "0"], ["generate", "--mode", "fast"],
                                  ["generate", "--bogus"], ["generate", "--max_tokens", "x"]])
def test_cli_parse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_demo_shim_reports_errors_without_traceback():
    demo = Path(__file__).resolve().parents[1] / "demo.py"
    proc = subprocess.run([sys.executable, str(demo), "--budget", "3"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "memory_budget" in proc.stderr and "Traceback" not in proc.stderr
