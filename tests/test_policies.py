"""Eviction policies: invariants on tiny random models and the definitions of each policy."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from memollm import MemoryConfig, register_policy
from memollm.attention import attached
from memollm.policies import POLICIES, Policy, PolicyRows, make_policy
from memollm.session import MemorySession
from memollm_testutils import assert_clean

# a learned strength needs a gate trained for the model: tests/test_strength.py runs it on the tiny models
EVICTING = [p for p in POLICIES if POLICIES[p].evicts and not POLICIES[p].needs_strength and not p.startswith("_")]
PROMPT = "Spaced repetition keeps what is used and lets the rest fade away. " * 3
FOX_CAT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
EVICT = dict(chat=False, memory_budget=24, sink_tokens=2, recent_window=4, ignore_eos=True)


def test_registry_has_the_peers_the_default_and_the_seeds_rule_and_nothing_else():
    assert sorted(POLICIES) == ["ebbinghaus", "ebbinghaus_learned", "ebbinghaus_seed", "full", "h2o", "random",
                                "snapkv", "streaming", "tova"]
    assert not POLICIES["full"].evicts


@torch.no_grad()
def _stream_manually(llm, policy: str, n_tokens: int, budget: int, *, sinks=4, window=8, seed=0, chunk=1):
    """Token-by-token (or chunked) loop inside ``attached``; checks the invariants after every step."""
    cfg = llm.config.replace(memory_budget=budget, sink_tokens=sinks, recent_window=window, policy=policy)
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (1, n_tokens))
    session = MemorySession(llm.model, "evict", cfg, seed=seed)
    cache = DynamicCache(config=llm.model.config)
    preds = []
    with attached(llm.model, session):
        for a in range(0, n_tokens, chunk):
            out = llm.model(ids[:, a:a + chunk], cache=cache, use_cache=True)
            preds.append(out.logits[0, -1].argmax().item())
            pos = session.positions[0].tolist()
            if POLICIES[policy].evicts:
                assert cache.get_seq_length() <= budget
            assert cache.get_seq_length() == len(pos)
            assert pos == sorted(pos)  # slots stay in position order
            newest = min(a + chunk, n_tokens) - 1
            assert pos[-1] == newest  # the newest token is always kept
            assert set(range(min(sinks, newest + 1))) <= set(pos)  # the sinks are always kept
            recent = range(max(0, newest + 1 - window), newest + 1)
            assert set(recent) <= set(pos)  # the recent window is always kept
    return preds, session


@pytest.mark.parametrize("policy", EVICTING)
def test_never_exceeds_budget_keeps_sinks_and_newest_deterministic(make_tiny, policy):
    llm = make_tiny("llama")
    preds, session = _stream_manually(llm, policy, n_tokens=60, budget=24, seed=3)
    assert session.evicted > 0
    assert session.peak_cached <= 24
    again, session2 = _stream_manually(llm, policy, n_tokens=60, budget=24, seed=3)
    assert again == preds  # deterministic under a seed
    assert session2.positions.tolist() == session.positions.tolist()


@pytest.mark.parametrize("policy", ["ebbinghaus", "h2o", "tova"])
def test_chunked_prefill_stays_within_budget(make_tiny, policy):
    """A prompt read in chunks, evicting between them, never puts more than the budget in the cache."""
    _, session = _stream_manually(make_tiny("qwen2"), policy, n_tokens=200, budget=32, chunk=8)
    assert session.peak_cached <= 32


def test_full_policy_equals_baseline(make_tiny):
    llm = make_tiny("llama")
    base = llm.generate(PROMPT, max_new_tokens=20, chat=False, ignore_eos=True)
    full = llm.generate(PROMPT, max_new_tokens=20, chat=False, ignore_eos=True, generation_mode="evict",
                        policy="full", memory_budget=40, sink_tokens=4, recent_window=8)
    assert full["token_ids"] == base["token_ids"]
    assert full["evicted_tokens"] == 0


@pytest.mark.parametrize("policy", EVICTING)
def test_budget_above_length_equals_baseline(make_tiny, policy):
    llm = make_tiny("llama")
    base = llm.generate(PROMPT, max_new_tokens=12, chat=False, ignore_eos=True)
    out = llm.generate(PROMPT, max_new_tokens=12, chat=False, ignore_eos=True, generation_mode="evict",
                       policy=policy, memory_budget=512)
    assert out["token_ids"] == base["token_ids"]


def test_random_policy_depends_on_the_seed():
    cfg = MemoryConfig()
    pos = torch.arange(50)[None]
    s1 = make_policy("random", cfg, 2, seed=1).scores(pos)
    s1b = make_policy("random", cfg, 2, seed=1).scores(pos)
    s2 = make_policy("random", cfg, 2, seed=2).scores(pos)
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)


def _received(values):
    return torch.tensor(values, dtype=torch.float32)[None, None, :]  # [layers=1, batch=1, tokens]


def test_h2o_accumulates_and_tova_keeps_only_the_last_step():
    cfg = MemoryConfig()
    h2o, tova = make_policy("h2o", cfg, 1), make_policy("tova", cfg, 1)
    for p in (h2o, tova):
        p.append(1, 3)
        p.observe(_received([0.6, 0.3, 0.1]), 3)
        p.observe(_received([0.1, 0.1, 0.8]), 3)
    assert torch.allclose(h2o.scores(torch.arange(3)[None]), torch.tensor([[0.7, 0.4, 0.9]]))
    assert torch.allclose(tova.scores(torch.arange(3)[None]), torch.tensor([[0.1, 0.1, 0.8]]))


def test_streaming_prefers_recent_and_ebbinghaus_without_reviews_is_age_only():
    cfg = MemoryConfig()
    pos = torch.arange(6)[None]
    assert torch.equal(make_policy("streaming", cfg, 1).scores(pos).argsort(), torch.arange(6)[None])
    fixed = make_policy("ebbinghaus", cfg.replace(review="none", trace="none"), 1)
    fixed.append(1, 6)
    fixed.observe(_received([0.0, 0.0, 0.9, 0.1, 0.0, 0.0]), 6)  # no effect: strength never grows
    s = fixed.scores(pos)
    assert torch.all(s[0, 1:] > s[0, :-1])  # pure age decay: newer always ranks higher


def test_ebbinghaus_attended_token_outlives_an_idle_newer_one():
    cfg = MemoryConfig()
    ebb = make_policy("ebbinghaus", cfg, 1)
    ebb.append(1, 4)
    ebb.observe(_received([0.7, 0.1, 0.1, 0.1]), 4)  # token 0 gets far above the uniform share
    ebb.append(1, 1)
    s = ebb.scores(torch.arange(5)[None])[0]
    assert s[0] > s[1] and s[0] > s[2]


def test_policy_rows_match_each_policy_alone(make_tiny):
    """Policies as row blocks of one batch give each policy's own result."""
    from memollm import evaluate as E

    llm = make_tiny("llama")
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 48))
    both = E.stream(llm, ids, ["h2o", "ebbinghaus"], 24, sink_tokens=2, recent_window=6, progress=False)
    alone = E.stream(llm, ids, ["ebbinghaus"], 24, sink_tokens=2, recent_window=6, progress=False)
    torch.testing.assert_close(both.logprob[1], alone.logprob[0], atol=1e-4, rtol=1e-4)
    assert both.peak_kv_tokens <= 24


def test_policy_rows_reject_full_and_wrong_batch():
    cfg = MemoryConfig()
    with pytest.raises(ValueError):
        PolicyRows([make_policy("full", cfg, 1)])
    rows = PolicyRows([make_policy("h2o", cfg, 1), make_policy("tova", cfg, 1)], rows_each=2)
    with pytest.raises(ValueError):
        rows.append(3, 5)


def test_h2o_keeps_the_newest_half_of_the_budget_as_recent_tokens():
    cfg = MemoryConfig(memory_budget=40, recent_window=8)
    h2o = make_policy("h2o", cfg, 1)
    pos = torch.arange(60)[None]
    heavy = torch.zeros(60)
    heavy[5] = 0.9  # an old heavy hitter
    h2o.append(1, 60)
    h2o.observe(heavy[None, None], 60)
    h2o.observe(heavy[None, None], 60)  # accumulated over steps
    s = h2o.scores(pos)[0]
    assert bool((s[40:] > s[5]).all())  # the newest 20 (half of 40) outrank any heavy hitter
    assert s[5] > s[39] and s[5] > s[6]  # the heavy hitter outranks the other old tokens
    assert s[5] == pytest.approx(1.8)


def test_snapkv_scores_are_the_mean_of_the_last_window():
    cfg = MemoryConfig(observation_window=2)
    snap = make_policy("snapkv", cfg, 1)
    snap.append(1, 3)
    for row in ([0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.0, 0.4, 0.6]):
        snap.observe(_received(row), 3)
    assert torch.allclose(snap.scores(torch.arange(3)[None]), torch.tensor([[0.1, 0.3, 0.6]]))
    snap.keep(torch.tensor([[1, 2]]))
    snap.append(1, 1)
    snap.observe(_received([0.5, 0.5, 0.0]), 3)
    assert torch.allclose(snap.scores(torch.arange(3)[None]), torch.tensor([[0.45, 0.55, 0.0]]))


def test_presets_apply_their_rule_and_the_seed_preset_pins_the_seeds():
    cfg = MemoryConfig(review="top_p", trace="max")
    assert make_policy("ebbinghaus_seed", cfg, 1).config.review == "share"
    assert make_policy("ebbinghaus_seed", cfg, 1).config.trace == "none"
    assert make_policy("ebbinghaus_seed", cfg, 1).config.stability == "additive"
    trace = make_policy("ebbinghaus", MemoryConfig(), 1)
    trace.append(1, 3)
    trace.observe(_received([0.2, 0.7, 0.1]), 3)
    assert torch.allclose(trace.scores(torch.arange(3)[None]), torch.tensor([[0.2, 0.7, 0.1]]))


# -- the policy contract, through generate -----------------------------------------------------
@pytest.fixture
def temporary_policy():
    added = []

    def register(name, cls):
        register_policy(name)(cls)
        added.append(name)
        return cls

    yield register
    for name in added:
        POLICIES.pop(name, None)


@pytest.mark.parametrize("shape", ["one", "short", "list"])
def test_a_policy_with_badly_shaped_scores_gets_a_value_error_naming_it(tiny, temporary_policy, shape):
    class Bad(Policy):
        def scores(self, positions):
            if shape == "one":
                return torch.ones(1, 1)
            if shape == "short":
                return torch.ones(positions.shape[0], positions.shape[1] - 3)
            return positions.tolist()

    temporary_policy("bad_scores", Bad)
    with pytest.raises(ValueError, match="policy 'bad_scores'.*shape"):
        tiny.generate(FOX_CAT, 20, "evict", policy="bad_scores", **EVICT)
    assert_clean(tiny.model)


def test_a_policy_without_scores_says_what_is_missing(tiny, temporary_policy):
    temporary_policy("no_scores", type("NoScores", (Policy,), {}))
    with pytest.raises(NotImplementedError, match="no_scores.*must define scores"):
        tiny.generate(FOX_CAT, 20, "evict", policy="no_scores", **EVICT)
