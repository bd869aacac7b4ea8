"""The conversation recall benchmark (``memollm.evaluate.recall``): what its conversations hold,
and the records a run writes. The runs use a tiny random Llama (fast; its answers are noise)."""

from __future__ import annotations

import json

import pytest

from memollm.cache import kv_trace
from memollm.cli import main as cli_main
from memollm.evaluate.recall import (FACT_KINDS, SMALL_TALK, SPLITS, build_conversation, recall, run_conversation,
                                     table)
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("llama")


def test_facts_and_reviews_land_in_their_turns(tokenizer):
    seen_reviews, seen_sizes = set(), set()
    for c in range(12):
        conv = build_conversation(tokenizer, c)
        assert 2 <= len(conv.facts) <= 4 and len({f.kind for f in conv.facts}) == len(conv.facts)
        turns = sorted(f.turn for f in conv.facts)
        assert len(set(turns)) == len(turns) and max(turns) < conv.turns // 2
        for f in conv.facts:
            kind = FACT_KINDS[f.kind]
            assert kind.statement.format(f.value) in conv.user_text(f.turn)
            for t in f.review_turns:  # a later user turn asks for it, the answer left to the model
                assert f.turn < t < conv.turns
                assert conv.user_text(t).rstrip("\n").endswith(f"{kind.question[1:]}\nAssistant: {kind.answer_prefix}")
            others = [t for t in range(conv.turns) if t != f.turn]
            assert not any(f.value in conv.user_text(t) for t in others)  # stated once, never repeated
            seen_reviews.add(f.reviews)
        review_turns = [t for f in conv.facts for t in f.review_turns]
        assert len(set(review_turns + turns)) == len(review_turns) + len(turns)  # one event a turn
        finals = [arg[0] for t, what, arg in conv.steps if what == "answer" and arg[1] == "final"]
        assert sorted(finals) == list(range(len(conv.facts)))  # every fact asked for at the end, once
        assert all(t >= conv.turns for t, what, arg in conv.steps if what == "answer" and arg[1] == "final")
        assert [f.reviews for f in conv.facts] == [sum(arg == (i, "review") for _, w, arg in conv.steps)
                                                   for i in range(len(conv.facts))]
        seen_sizes.add(len(conv.facts))
    assert seen_reviews == {0, 1, 2} and seen_sizes == {2, 3, 4}
    a = build_conversation(tokenizer, 5)
    assert a.steps == build_conversation(tokenizer, 5).steps  # seeded
    assert a.steps != build_conversation(tokenizer, SPLITS["report"] + 5).steps  # the splits differ
    assert len(set(SMALL_TALK)) >= 40
    with pytest.raises(ValueError, match="turns"):
        build_conversation(tokenizer, 0, turns=4)


def test_run_conversation_holds_the_budget_and_measures_each_fact(tiny):
    conv = build_conversation(tiny.tokenizer, 1)
    budget = round(0.25 * conv.length(tiny.tokenizer))
    with kv_trace(tiny.model) as trace:
        rows = run_conversation(tiny, conv, ["streaming", "h2o", "ebbinghaus"], budget)
    assert max(trace["kv_cache_tokens"]) == budget
    assert [r["policy"] for r in rows] == [p for p in ("streaming", "h2o", "ebbinghaus") for _ in conv.facts]
    layers = len(tiny.model.config.layer_types) if hasattr(tiny.model.config, "layer_types") else 4
    for r in rows:
        by_layer = r["kept_share_by_layer"]
        assert len(by_layer) == layers and max(by_layer) <= r["kept_share"] <= 1  # the union over layers
        assert r["conversation_tokens"] == conv.length(tiny.tokenizer)
    assert all(r["kept_share"] == 0.0 for r in rows if r["policy"] == "streaming")  # the oldest went first
    full = run_conversation(tiny, conv, ["full"], None)
    assert all(r["kept_share"] == 1.0 and r["budget"] is None for r in full)
    assert_clean(tiny.model)
    with pytest.raises(ValueError, match="full"):
        run_conversation(tiny, conv, ["full", "h2o"], budget)


def test_a_tiny_recall_run_writes_one_record_per_policy_fraction_conversation_and_fact(tiny):
    result = recall(tiny, budget_fractions=[0.25, 0.5], policies=["streaming", "tova"], cases=2, split="tune",
                    progress=False)
    records = result["records"]
    facts = {(r["conversation"], r["fact"]) for r in records}
    assert {r["conversation"] for r in records} == {0, 1}
    assert len(records) == len(facts) * (1 + 2 * 2)
    keys = {"policy", "budget_fraction", "budget", "conversation", "fact", "kind", "value", "reviews", "kept_share",
            "kept_share_by_layer", "correct", "full_correct", "answer", "split"}
    assert all(keys <= set(r) for r in records)
    full = {(r["conversation"], r["fact"]): r["correct"] for r in records if r["policy"] == "full"}
    for r in records:
        assert r["reviews"] in (0, 1, 2) and isinstance(r["correct"], bool) and r["full_correct"] == full[
            (r["conversation"], r["fact"])]
        if r["policy"] != "full":
            assert r["budget"] == round(r["budget_fraction"] * r["conversation_tokens"])
    assert set(result["summary"]) >= {"correct", "kept_share"}
    text = table(result, "kept_share")
    assert "| streaming | 0.25 |" in text and "| full | full |" in text
    json.dumps(result, allow_nan=False)  # strict JSON
    from memollm.viz import plot_recall

    assert len(plot_recall(result).axes) == 4  # a row per budget fraction
    with pytest.raises(ValueError, match="cases"):
        recall(tiny, cases=0, progress=False)
    with pytest.raises(ValueError, match="split"):
        recall(tiny, cases=1, split="test", progress=False)
    with pytest.raises(ValueError, match="budget_fractions"):
        recall(tiny, cases=1, budget_fractions=[1.5], progress=False)
