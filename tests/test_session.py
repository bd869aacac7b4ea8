"""memollm.session (MemorySession), through generate: the budget in every unit (shared, per layer,
per KV head) at every step, the positions it gives the model (true, or ranks in the cache), which
layers keep memory, and what a result reports: the config that ran, statistics, token weights and
the size of the memory state."""

from __future__ import annotations

import pytest

from memollm import MemoryConfig
from memollm.config import SEED_RULE
from memollm_testutils import assert_clean, forced_forgetting, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."
FOX_CAT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
STORY = "Write a long story about a cat named Tom who lives in Paris and loves cheese."
N = 12
GRANULARITIES = ("shared", "layer", "head")
ROTARY = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt_neox"]  # gpt_neox: partial rotary (25% of channels)
EVICT = dict(chat=False, memory_budget=24, sink_tokens=2, recent_window=4, ignore_eos=True)


@pytest.fixture(scope="module")
def prompt_len(tiny):
    return tiny.encode(PROMPT, chat=False).shape[1]


# -- the budget, in every unit -----------------------------------------------------------------
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("policy", ["ebbinghaus", "h2o", "tova", "streaming"])
def test_the_budget_holds_in_every_layer_and_head_at_every_step(llm, granularity, policy):
    lengths: list[set[int]] = []  # per forward step: the distinct lengths of every layer's keys and values

    def record(module, args, kwargs, output):
        cache = kwargs["cache"]
        lengths.append({t.shape[-2] for layer in cache.layers for t in (layer.keys, layer.values)})

    handle = llm.model.register_forward_hook(record, with_kwargs=True)  # ahead of the session's hooks
    try:
        r = llm.generate(STORY, N, "evict", memory_budget=30, recent_window=8, granularity=granularity,
                         policy=policy, ignore_eos=True)
    finally:
        handle.remove()
    prompt = r["prompt_tokens"]
    # the prompt is prefilled whole (then compressed); every later step holds at most the budget,
    # the same count in every layer and head
    assert lengths[0] == {prompt} and all(len(s) == 1 and max(s) <= 30 for s in lengths[1:])
    assert r["kv_cache_tokens"] == 30 and r["peak_kv_cache_tokens"] == max(30, prompt)
    kept = r.get("kept_positions", {"shared": None})
    units = {"shared": 1, "layer": 30, "head": 90}[granularity]
    assert len(kept) == units
    if granularity != "shared":
        for name, pos in kept.items():
            assert len(pos) == 30 and pos[:4] == [0, 1, 2, 3], name  # sinks everywhere
            assert pos == sorted(pos) and pos[-8:] == list(range(prompt + N - 2 - 7, prompt + N - 1)), name
        drops = {}
        for event in r["evict_events"].values():
            for name, gone in event.items():
                drops.setdefault(name, set()).update(gone)
        for name, pos in kept.items():  # what a unit holds plus what it dropped is everything it read
            assert drops[name].isdisjoint(pos) and drops[name] | set(pos) == set(range(prompt + N - 1))


@pytest.mark.parametrize("budget,sinks,window", [(12, 4, 4), (16, 2, 8), (24, 4, 16), (6, 0, 5)])
def test_evict_respects_the_budget(tiny, prompt_len, budget, sinks, window):
    r = tiny.generate(PROMPT, 12, "evict", chat=False, memory_budget=budget, sink_tokens=sinks,
                      recent_window=window, return_attention_weights=True, ignore_eos=True,
                      granularity="shared")  # one set of positions; per layer: the test above
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


def test_granularity_is_validated_and_reported(llm):
    with pytest.raises(ValueError, match="granularity"):
        llm.generate(STORY, 2, "evict", granularity="token")
    with pytest.raises(ValueError, match="observation_pool"):
        llm.config.replace(observation_pool=4)
    r = llm.generate(STORY, 2, "evict", memory_budget=40, granularity="head")
    assert r["config"]["granularity"] == "head"


# -- positions ---------------------------------------------------------------------------------
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
        r = llm.generate(FOX_CAT, 40, "evict", chat=False, memory_budget=16, sink_tokens=2, recent_window=4,
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
        make_tiny("llama").generate(FOX_CAT, 2, "evict", positions="relative", chat=False)
    with pytest.raises(ValueError, match="rotary"):
        make_tiny("gpt2").generate(FOX_CAT, 2, "evict", positions="cache", chat=False, memory_budget=40)


# -- what a result reports ---------------------------------------------------------------------
def test_result_config_is_what_ran(tiny):
    seed = tiny.generate(FOX_CAT, 3, "evict", policy="ebbinghaus_seed", **EVICT)["config"]
    assert {k: seed[k] for k in SEED_RULE} == SEED_RULE and seed["memory_budget"] == 24


def test_memory_config_layers_follow_the_fraction(make_tiny):
    llm = make_tiny("qwen2")
    r = llm.generate(PROMPT, 3, "soft_delete", chat=False, config=MemoryConfig(memory_layer_fraction=0.75))
    assert set(r["memory_stats"]) == {"layer_0", "layer_1", "layer_2"}
    r = llm.generate(PROMPT, 3, "soft_delete", chat=False, config=MemoryConfig(memory_layer_fraction=1.0))
    assert set(r["memory_stats"]) == {f"layer_{i}" for i in range(4)}


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
