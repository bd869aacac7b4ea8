"""memollm.memory: the forgetting curve (retention, EbbinghausMemory): aging, reinforcement, the
review, stability and trace rules, soft weights, layer consensus, state size and statistics."""

from __future__ import annotations

import math

import pytest
import torch

from memollm import EbbinghausMemory, MemoryConfig, retention
from memollm.config import SEED_RULE
from memollm.memory import reviewed
from memollm_testutils import one_thread

_one_thread = one_thread()


# -- forgetting curve --------------------------------------------------------------------------
def test_retention_formula():
    age = torch.tensor([0.0, 1.0, 5.0, 50.0])
    strength = torch.tensor([5.0, 5.0, 5.0, 5.0])
    torch.testing.assert_close(retention(age, strength), torch.exp(-age / 5.0))
    assert retention(torch.tensor(0.0), torch.tensor(2.0)) == 1.0


def test_prompt_in_one_pass_ages_like_one_token_at_a_time():
    cfg = MemoryConfig(time_step=0.25)
    whole, steps = EbbinghausMemory(3, cfg), EbbinghausMemory(3, cfg)
    whole.append(1, 6)
    for _ in range(6):
        steps.append(1, 1)
    torch.testing.assert_close(whole.age, steps.age)
    torch.testing.assert_close(whole.strength, steps.strength)
    assert whole.age[0, 0].tolist() == [1.25, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert torch.all(whole.strength == 5.0)


def test_aging_lowers_retention_by_the_curve():
    cfg = MemoryConfig(time_step=0.1, initial_strength=2.0, review="none")
    mem = EbbinghausMemory(2, cfg)
    mem.append(1, 4)
    before = mem.retention()
    mem.append(1, 3)  # three more tokens read: every old token ages 0.3
    after = mem.retention()[..., :4]
    torch.testing.assert_close(after, before * math.exp(-0.3 / 2.0))


def test_reinforcement_rule():
    cfg = MemoryConfig(**SEED_RULE, initial_strength=5.0, review_threshold=1.0, strength_gain=2.0, time_step=0.5)
    mem = EbbinghausMemory(1, cfg)
    mem.append(1, 4)  # ages 1.5, 1.0, 0.5, 0.0
    received = torch.tensor([[[0.5, 0.2, 0.2, 0.1]]])  # 4 visible keys: uniform share is 0.25
    mem.reinforce(received, 4)
    # shares 2.0, 0.8, 0.8, 0.4: only the first reaches the threshold 1.0
    assert mem.strength[0, 0].tolist() == pytest.approx([5.0 + 2.0 * 2.0, 5.0, 5.0, 5.0])
    assert mem.age[0, 0].tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0])


def test_no_reinforcement_when_disabled():
    mem = EbbinghausMemory(1, MemoryConfig(review="none"))
    mem.append(1, 3)
    s, a = mem.strength.clone(), mem.age.clone()
    mem.reinforce(torch.ones(1, 1, 3), 3)
    assert torch.equal(mem.strength, s) and torch.equal(mem.age, a)


def test_keep_gathers_every_layer():
    mem = EbbinghausMemory(2, MemoryConfig(time_step=1.0))
    mem.append(1, 5)  # ages 4..0
    mem.keep(torch.tensor([[0, 3, 4]]))
    assert mem.num_tokens == 3
    assert mem.age[1, 0].tolist() == [4.0, 1.0, 0.0]


def test_soft_weights_are_recomputed_never_compounded():
    cfg = MemoryConfig(soft_delete_floor=0.5, time_step=1.0, initial_strength=1.0, review="none")
    mem = EbbinghausMemory(1, cfg)
    mem.append(1, 4)
    w1 = mem.soft_weights()
    w2 = mem.soft_weights()
    assert torch.equal(w1, w2)
    torch.testing.assert_close(w1, 0.5 + 0.5 * mem.retention())
    assert float(w1.min()) >= 0.5 and float(w1.max()) <= 1.0
    mem.append(1, 1)
    # after one more token the weight is the curve at the new age, not w1 * something
    torch.testing.assert_close(mem.soft_weights()[..., :4], 0.5 + 0.5 * torch.exp(-(mem.age[..., :4])))


def test_forgotten_needs_layer_consensus():
    cfg = MemoryConfig(sparse_threshold=0.1, layer_consensus=0.5)
    mem = EbbinghausMemory(2, cfg)
    mem.append(1, 3)
    mem.age = torch.tensor([[[100.0, 100.0, 0.0]], [[100.0, 0.0, 0.0]]])  # token 1 forgotten in one layer
    assert mem.forgotten().tolist() == [[True, True, False]]
    mem.config = cfg.replace(layer_consensus=1.0)
    assert mem.forgotten().tolist() == [[True, False, False]]


def test_state_is_eight_bytes_per_token_per_layer_twelve_with_the_trace_a_policy_ranks_by():
    ranking = EbbinghausMemory(15, MemoryConfig(), traces=True)
    assert ranking.nbytes == 0
    ranking.append(1, 100)
    assert ranking.nbytes == 12 * 15 * 100  # strength, age and one trace: under the seed's promise of 20
    for cfg in (MemoryConfig(), MemoryConfig(**SEED_RULE)):  # soft delete, sparse attention, the seed's rule
        mem = EbbinghausMemory(15, cfg)
        mem.append(1, 100)
        assert mem.trace is None and mem.nbytes == 8 * 15 * 100


def test_stats_summarise_each_memory_layer():
    mem = EbbinghausMemory(2, MemoryConfig(time_step=1.0, initial_strength=1.0))
    assert mem.stats([0, 1]) == {}
    mem.append(1, 10)
    stats = mem.stats([0, 1], masked=torch.zeros(1, 10, dtype=torch.bool))
    assert set(stats) == {"layer_0", "layer_1"}
    s = stats["layer_1"]
    assert s["num_tokens"] == 10
    assert s["avg_age"] == pytest.approx(4.5)
    assert s["avg_strength"] == pytest.approx(1.0)
    assert s["avg_retention"] == pytest.approx(sum(math.exp(-k) for k in range(10)) / 10, rel=1e-5)
    assert s["forgotten_tokens"] == 3  # exp(-7), exp(-8), exp(-9) < 0.001
    assert s["masked_tokens"] == 0


# -- rules from memory research ----------------------------------------------------------------
def _mem(**changes) -> EbbinghausMemory:
    """A memory with the seed's rule plus ``changes``, so each test isolates one rule."""
    return EbbinghausMemory(1, MemoryConfig(sink_tokens=1, **{**SEED_RULE, **changes}), traces=True)


def _att(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[None, None, :]  # [layers=1, batch=1, tokens]


def test_top_p_review_is_the_keys_holding_the_mass_sinks_excluded():
    mem = _mem(review="top_p", review_top_p=0.5)
    received = _att([0.5, 0.3, 0.1, 0.06, 0.04])  # token 0 is a sink: the rest hold 0.5
    hit = reviewed(mem.config, received, received * 5)
    assert hit[0, 0].tolist() == [False, True, False, False, False]  # 0.3 of 0.5 is past half the mass
    mem = _mem(review="top_p", review_top_p=0.9)
    hit = reviewed(mem.config, received, received * 5)
    assert hit[0, 0].tolist() == [False, True, True, True, False]
    # the seed's rule: any share above uniform (0.2 here), the sink included
    assert reviewed(_mem().config, received, received * 5)[0, 0].tolist() == [True, True, False, False, False]


def test_fsrs_massed_reviews_add_almost_nothing_spaced_ones_a_lot():
    massed, spaced = _mem(stability="fsrs"), _mem(stability="fsrs")
    for mem, gap in ((massed, 1), (spaced, 400)):
        mem.append(1, 2)
        for _ in range(3):
            mem.append(1, gap)
            received = torch.zeros(1, 1, mem.num_tokens)
            received[..., 1] = 1.0  # token 1 takes all the attention: a review under any rule
            mem.reinforce(received, mem.num_tokens)
    s0 = MemoryConfig().initial_strength
    assert massed.strength[0, 0, 1] < s0 * 1.01  # R was ~1 at every review: no growth
    assert spaced.strength[0, 0, 1] > s0 * 1.5  # R had fallen: each review paid
    assert float(massed.age[0, 0, 1]) == 0.0 and float(spaced.age[0, 0, 1]) == 0.0  # a review resets the age


def test_fsrs_growth_saturates_with_strength():
    weak, strong = _mem(stability="fsrs"), _mem(stability="fsrs")
    for mem, s in ((weak, 5.0), (strong, 50.0)):
        mem.append(1, 2)
        mem.strength[..., 1] = s
        mem.age[..., 1] = s  # R = exp(-1) for both
        mem.reinforce(_att([0.0, 1.0]), 2)
    assert weak.strength[0, 0, 1] / 5.0 > strong.strength[0, 0, 1] / 50.0


def test_max_trace_keeps_the_strongest_retrieval_fading_with_age():
    mem = _mem(trace="max", trace_tau=0.25, memory_budget=64, review="none")  # tau = 16 tokens (S stays S0)
    mem.append(1, 3)
    mem.reinforce(_att([0.1, 0.8, 0.1]), 3)
    mem.reinforce(_att([0.1, 0.2, 0.7]), 3)  # a weaker glance at token 1 keeps its stronger trace
    assert torch.allclose(mem.trace_score()[0, 0], torch.tensor([0.1, 0.8, 0.7]))
    mem.append(1, 16)  # one time constant later
    assert torch.allclose(mem.trace_score()[0, 0, :3], torch.tensor([0.1, 0.8, 0.7]) * math.exp(-1), atol=1e-6)
    assert torch.equal(mem.trace_score()[0, 0, 3:], torch.zeros(16))
    mem.keep(torch.tensor([[0, 2]]))
    assert mem.trace.shape[-1] == 2 and torch.allclose(mem.trace_score()[0, 0], torch.tensor([0.1, 0.7]) * math.exp(-1))


def test_sum_trace_adds_uses_over_three_time_constants():
    mem = _mem(trace="sum")
    mem.append(1, 2)
    mem.reinforce(_att([0.5, 0.5]), 2)
    mem.reinforce(_att([0.5, 0.5]), 2)
    assert mem.trace.shape[0] == 3
    assert torch.allclose(mem.trace_score()[0, 0], torch.tensor([3.0, 3.0]))  # 2 uses x 0.5 x 3 scales
    assert mem.nbytes == 2 * 4 * 5  # strength, age and three traces, 4 bytes each per token
