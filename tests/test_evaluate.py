"""memollm.evaluate, module by module, on small inputs: core (a text streamed through several
policies at once), perplexity, passkey, agreement, rows (policies as row blocks, one shared
prefill), retrieval, recall (facts in a conversation) and report (verdicts from synthetic records,
through ``memollm eval report``). Record formats and protocol checks, not quality."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from memollm import evaluate as E
from memollm.attention import attached
from memollm.lessons import kv_trace
from memollm.cli import main as cli_main
from memollm.config import ConfigError, MemoryConfig
from memollm.evaluate.recall import (FACT_KINDS, SMALL_TALK, SPLITS, build_conversation, recall, run_conversation,
                                     recall_table)
from memollm.evaluate.retrieval import INTRO, TASKS, retrieval, retrieval_cases, retrieval_summary
from memollm.evaluate.rows import PrefillCapture, copy_prefill, greedy, rows_from_prefill, rows_session, spec
from memollm.texts import text_segments
from memollm_testutils import assert_clean, random_gate

torch.set_num_threads(1)


TEXT = ("Eviction keeps a fixed number of tokens in the cache. The policy decides which ones stay. "
        "Attention sinks and a recent window are always kept. ") * 20
POLICIES = ["ebbinghaus", "streaming", "h2o"]


# -- core: streaming a text --------------------------------------------------------------------
def test_stream_without_eviction_equals_full_cache(make_tiny):
    llm = make_tiny("llama")
    ids = text_segments(llm.tokenizer, TEXT, 48, 2)
    full, full_arg = E.full_logprobs(llm, ids)
    res = E.stream(llm, ids, POLICIES, budget=64, sink_tokens=4, recent_window=8, progress=False)
    for i in range(len(POLICIES)):
        torch.testing.assert_close(res.logprob[i], full, atol=1e-4, rtol=1e-4)
        assert torch.equal(res.argmax[i], full_arg)


def test_stream_rejects_a_budget_without_room_for_the_chunk(make_tiny):
    llm = make_tiny("llama")
    with pytest.raises(ValueError):
        E.stream(llm, torch.zeros(1, 50, dtype=torch.long), ["h2o"], budget=20, sink_tokens=4, recent_window=8, chunk=16)
    with pytest.raises(ValueError):
        E.stream(llm, torch.zeros(1, 50, dtype=torch.long), ["full"], budget=40, sink_tokens=4, recent_window=8)


# -- perplexity --------------------------------------------------------------------------------
def test_perplexity_records(make_tiny):
    llm = make_tiny("llama")
    recs = E.perplexity(llm, budgets=[24, 32], policies=POLICIES, max_tokens=64, text=TEXT, sink_tokens=4, recent_window=8,
                        progress=False)
    assert len(recs) == 2 * (len(POLICIES) + 1)
    for r in recs:
        assert {"policy", "budget", "tokens", "perplexity", "perplexity_after_budget", "peak_kv_tokens",
                "top1_agreement_after_budget"} <= set(r)
        assert 0.0 <= r["top1_agreement_after_budget"] <= 1.0
        assert r["tokens"] == 63 and r["perplexity"] > 1
        if r["policy"] != "full":
            assert r["peak_kv_tokens"] <= r["budget"]
    assert all(r["top1_agreement_after_budget"] == 1.0 for r in recs if r["policy"] == "full")
    full = [r["perplexity"] for r in recs if r["policy"] == "full"]
    assert full[0] == full[1]
    json.dumps(recs)
    assert "| ebbinghaus |" in E.table(recs, "perplexity")


def test_stream_summary_means_and_pairs_windows():
    recs = [{"evaluation": "stream", "policy": p, "positions": "cache", "budget": 64, "granularity": "layer",
             "window_start": w, "perplexity": 10.0 + w / 100 + (p == "ebbinghaus")}
            for p in ("streaming", "ebbinghaus") for w in range(0, 400, 100)]
    recs.append({"evaluation": "stream", "policy": "full", "positions": "true", "budget": None, "window_start": 0,
                 "perplexity": 9.0})
    rows = {r["policy"]: r for r in E.stream_summary(recs, context=200)}
    assert set(rows) == {"streaming", "ebbinghaus"}  # the full cache is the reference, not a line
    assert rows["streaming"]["before"] == 11.0  # the window ending in (100, 200]
    assert rows["streaming"]["after"] == 12.5 and rows["streaming"]["worst_after"] == 13.0  # starts 200, 300
    assert rows["streaming"]["vs_baseline"] is None
    assert rows["ebbinghaus"]["vs_baseline"][0] == pytest.approx(1.0)


def test_old_share_is_min_median_max_over_layers():
    record = {"evaluation": "stream_kept", "old_share_by_layer": [0.5, 0.0, 0.25, 1.0, 0.125]}
    assert E.old_share(record) == (0.0, 0.25, 1.0)


# -- passkey -----------------------------------------------------------------------------------
def test_passkey_prompt_hides_the_key_at_the_depth(tokenizer):
    shallow = E.passkey_ids(tokenizer, 300, 0.1, 12345)
    deep = E.passkey_ids(tokenizer, 300, 0.9, 12345)
    assert abs(shallow.shape[0] - 300) <= 2 and shallow.shape == deep.shape
    text_s, text_d = tokenizer.decode(shallow), tokenizer.decode(deep)
    assert "12345" in text_s and text_s.index("12345") < text_d.index("12345")
    assert text_s.rstrip().endswith("The pass key is")
    with pytest.raises(ValueError):
        E.passkey_ids(tokenizer, 20, 0.5, 12345)


def test_passkey_records(make_tiny):
    llm = make_tiny("llama")
    recs = E.passkey(llm, budgets=[48], lengths=[120], depths=[0.2, 0.8], trials=2, policies=POLICIES, sink_tokens=4,
                     recent_window=8, prefill_chunk=16, answer_tokens=3, progress=False)
    assert len(recs) == 2 * (len(POLICIES) + 1)
    for r in recs:
        assert {"policy", "budget", "length", "depth", "trials", "correct", "accuracy", "answers"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["answers"]) == 2
        if r["policy"] != "full":
            assert r["peak_kv_tokens"] <= 48
    again = E.passkey(llm, budgets=[48], lengths=[120], depths=[0.2, 0.8], trials=2, policies=POLICIES, sink_tokens=4,
                      recent_window=8, prefill_chunk=16, answer_tokens=3, progress=False)
    assert again == recs  # deterministic under the seed


# -- agreement ---------------------------------------------------------------------------------
def test_agreement_records_and_no_eviction_agrees_fully(make_tiny):
    llm = make_tiny("llama")
    recs = E.agreement(llm, budgets=[40, 200], policies=POLICIES, prompt_tokens=24, new_tokens=40, text=TEXT,
                       sink_tokens=4, recent_window=8, prefill_chunk=8, progress=False)
    assert {r["budget"] for r in recs} == {40, 200}
    for r in recs:
        assert 0.0 <= r["agreement"] <= 1.0 and r["tokens"] == 40 and 0.0 < r["distinct_generated"] <= 1.0
        if r["budget"] == 200:
            assert r["agreement"] == 1.0  # nothing evicted: same predictions as the full cache


# -- rows: policies side by side, each variant with its own knobs and the run's ----------------
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
    run = llm.config.replace(memory_budget=48, sink_tokens=2, recent_window=8, observation_window=4)
    specs = [("plain", "ebbinghaus", None), ("gain3", "ebbinghaus", MemoryConfig(strength_gain=3.0, sink_tokens=9))]
    capture, cache = PrefillCapture(llm.model, specs, run), DynamicCache(config=llm.model.config)
    with torch.no_grad(), attached(llm.model, capture):
        llm.model(ids, cache=cache, use_cache=True)
    session, _ = rows_from_prefill(llm.model, specs, run, [(l.keys, l.values) for l in cache.layers], capture)
    plain, gain = (p.config for p in session.policy.policies)
    assert gain.strength_gain == 3.0 and plain.strength_gain == run.strength_gain
    assert gain.memory_budget == plain.memory_budget == 48 and gain.sink_tokens == 2 and gain.recent_window == 8


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_one_prefill_for_every_policy_equals_reading_the_prompt_per_policy(make_tiny, granularity, tmp_path):
    """passkey(read="whole") prefills once and hands copies to every policy (adopt_prefill): the
    same answers and the same kept positions as each policy reading the prompt itself, the
    learned strength (read from the prefill's attention inputs) included."""
    from transformers import DynamicCache

    from memollm.attention import attached

    llm = make_tiny("llama")
    ids = torch.stack([E.passkey_ids(llm.tokenizer, 120, d, 12345) for d in (0.2, 0.7)])
    random_gate(llm.model).save(tmp_path / "gate.safetensors")
    cfg = llm.config.replace(granularity=granularity, observation_window=8, observation_pool=3,
                             strength_gate=str(tmp_path / "gate.safetensors"))
    policies = ["ebbinghaus", "tova", "h2o", "ebbinghaus_learned"]
    res = E.stream(llm, ids, policies, 40, sink_tokens=4, recent_window=8, prefill=ids.shape[1],
                   prefill_chunk=ids.shape[1], config=cfg, keep_session=True)
    with attached(llm.model, res.session):
        alone = greedy(llm.model, res.cache, 4, res.last_logits)
    cache = DynamicCache(config=llm.model.config)
    run = E.eval_config(llm, 40, 4, 8, cfg)
    capture = PrefillCapture(llm.model, policies, run)
    with torch.no_grad(), attached(llm.model, capture):
        logits = llm.model(ids, cache=cache, use_cache=True).logits[:, -1]
    session, copy = rows_from_prefill(llm.model, policies, run, [(l.keys, l.values) for l in cache.layers],
                                      capture, rows_each=ids.shape[0])
    with attached(llm.model, session):
        shared = greedy(llm.model, copy, 4, logits.repeat(len(policies), 1))
    assert torch.equal(shared, alone)
    assert torch.equal(session.positions, res.session.positions)


# -- retrieval: independent documents, one small run on the bundled model ----------------------
LENGTH = 400


@pytest.mark.parametrize("task", TASKS)
def test_retrieval_documents(tokenizer, task):
    docs = retrieval_cases(tokenizer, task, 4, length=LENGTH, split="tune", seed=3)
    assert [d.document for d in docs] == ["docs/0", "prose/0", "docs/1", "prose/1"]
    assert len({d.filler for d in docs}) == 4  # each case its own filler
    for d in docs:
        assert d.prompt.endswith("\n\n" + d.question)
        last, removed = -1, d.prompt
        for needle, at in zip(d.needles, d.offsets):  # each needle where it says, in order, between sentences
            assert d.prompt[at:at + len(needle)] == needle and at > last and d.prompt[at - 1].isspace()
            last = at
        for needle, at in reversed(list(zip(d.needles, d.offsets))):
            removed = removed[:at] + removed[at + len(needle):]
        assert removed.split() == (INTRO[task] + d.filler + "\n\n" + d.question).split()
        holds = [n for n in d.needles if d.expected in n]
        assert len(holds) == 1 and (task == "multikey" or holds[0] == d.needles[0])
        if task == "multikey":  # the asked label is the key's, and the others are distractors
            label = d.question.split("\n")[1].removeprefix("Answer: The code for the ").removesuffix(" is")
            assert label in holds[0] and sum(label in n for n in d.needles) == 1
        question = d.question.split("\n")[0]
        assert all(question not in n and n.rstrip(".") not in d.question for n in d.needles)
        assert abs(len(tokenizer(d.prompt, add_special_tokens=False).input_ids) - LENGTH) < 80
    assert retrieval_cases(tokenizer, task, 4, length=LENGTH, split="tune", seed=3) == docs
    other = retrieval_cases(tokenizer, task, 4, length=LENGTH, split="tune", seed=4)
    assert [d.prompt for d in other] != [d.prompt for d in docs]


def test_retrieval_wording_varies(tokenizer):
    docs = retrieval_cases(tokenizer, "multikey", 8, length=LENGTH, split="tune")
    assert len({d.question.split("\n")[0].replace(d.question.split(" the ")[-1], "") for d in docs}) > 1
    assert all(len(d.needles) == 3 and len(set(d.needles)) == 3 for d in docs)
    chain = retrieval_cases(tokenizer, "vartrack", 2, length=LENGTH, split="tune", hops=2)
    assert all(len(d.needles) == 3 and "VAR" in d.needles[2] and d.expected not in d.needles[2] for d in chain)


def test_retrieval_tune_and_report_share_no_filler(tokenizer):
    def sentences(docs) -> set[str]:
        return {s.strip() for d in docs for s in d.filler.split("\n") if len(s.strip()) > 60}

    tune = retrieval_cases(tokenizer, "passkey", 6, length=LENGTH, split="tune")
    report = retrieval_cases(tokenizer, "passkey", 6, length=LENGTH, split="report")
    assert not sentences(tune) & sentences(report)


def test_retrieval_bad_input(tokenizer, llm):
    with pytest.raises(ConfigError, match="unknown retrieval task"):
        retrieval_cases(tokenizer, "needle", 1)
    with pytest.raises(ConfigError, match="filler tokens"):
        retrieval_cases(tokenizer, "multikey", 1, length=100)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        retrieval(llm, budget_fractions=(0.0,), progress=False)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        retrieval(llm, budget_fractions=(1.5,), progress=False)


def test_retrieval_end_to_end(llm):
    variant = ("tova_pool1", "tova", MemoryConfig(observation_pool=1, memory_budget=999, sink_tokens=0))
    records = retrieval(llm, tasks=TASKS, cases=1, budget_fractions=(0.5, 1.0), policies=["streaming", variant],
                        split="tune", length=300, progress=False)
    keys = {"evaluation", "task", "policy", "granularity", "budget", "budget_fraction", "document", "case", "split",
            "tokens", "expected", "answer", "correct", "full_correct", "read"}
    assert len(records) == 3 * (1 + 2 * 2)
    for r in records:
        assert keys <= set(r) and r["evaluation"] == "retrieval" and r["read"] == "whole"
        assert r["correct"] in (0, 1) and r["full_correct"] in (0, 1) and r["split"] == "tune"
        assert (r["budget"] is None) == (r["policy"] == "full") == (r["budget_fraction"] is None)
    for task in TASKS:
        full = [r for r in records if r["task"] == task and r["policy"] == "full"][0]
        assert full["full_correct"] == full["correct"]
        for r in records:
            if r["task"] == task:
                assert r["full_correct"] == full["correct"] and r["document"] == full["document"]
            if r["task"] == task and r["budget_fraction"] == 1.0:  # a budget holding the whole prompt
                assert r["budget"] >= r["tokens"]
    summary = retrieval_summary(records)
    assert {(s["task"], s["budget_fraction"], s["policy"]) for s in summary} == \
        {(r["task"], r["budget_fraction"], r["policy"]) for r in records}


# -- recall: facts in a conversation (a tiny random Llama: its answers are noise) --------------
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
    text = recall_table(result, "kept_share")
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


# -- recall along a stream: facts early in running text, asked for after it ---------------------
def test_stream_cases_state_facts_early_review_them_later_and_ask_after_the_passage(tokenizer):
    from memollm.evaluate.recall_stream import REVIEWED, STATED, stream_cases

    report, tune = (stream_cases(tokenizer, 4, split=s, length=512) for s in ("report", "tune"))
    assert [c.conversation for c in report] == [SPLITS["report"] + i for i in range(4)]
    assert [c.passage for c in tune] == ["docs/0", "prose/0", "docs/1", "prose/1"]
    texts = {s: ["".join(a for _, w, a in c.steps if w == "read") for c in cs]
             for s, cs in (("r", report), ("t", tune))}
    for case in report + tune:
        at = case.positions(tokenizer)
        assert 2 <= len(case.facts) <= 4 and len({f.kind for f in case.facts}) == len(case.facts)
        for f in case.facts:
            kind = FACT_KINDS[f.kind]
            assert kind.statement.format(f.value) in case.user_text(f.turn)  # the statement is a turn of its own
            assert all(f.turn < t < case.turns for t in f.review_turns)
            stated = next(i for i, (t, _, _) in enumerate(case.steps) if t == f.turn)
            asked = next(i for i, (_, w, a) in enumerate(case.steps) if w == "answer" and a == (case.facts.index(f),
                                                                                                "final"))
            assert at[asked] - at[stated] > 0.5 * case.length(tokenizer)  # asked for long after
        finals = [a[0] for t, w, a in case.steps if w == "answer" and a[1] == "final"]
        assert sorted(finals) == list(range(len(case.facts))) and case.steps[-1][1] == "answer"
    assert 0 < STATED < REVIEWED < 1
    assert {f.reviews for c in report + tune for f in c.facts} == {0, 1, 2}
    for a in texts["r"]:  # the report passages never share text with the tune ones
        assert not any(a[200:260] in b for b in texts["t"])
    assert [c.steps for c in stream_cases(tokenizer, 2, split="tune", length=512)] == [c.steps for c in tune[:2]]
    mine = stream_cases(tokenizer, 2, split="tune", length=512, text=TEXT * 12, text_name="notes.txt")
    assert [c.passage for c in mine] == ["notes.txt/0", "notes.txt/1"]
    with pytest.raises(ConfigError, match="tune split"):  # too short for two pieces of its tune half
        stream_cases(tokenizer, 2, split="tune", length=512, text=TEXT)


def test_a_tiny_recall_along_a_stream_writes_one_record_per_policy_fraction_case_and_fact(tiny):
    from memollm.evaluate.recall_stream import recall_stream

    result = recall_stream(tiny, budget_fractions=[0.25, 0.5], policies=["streaming", "h2o"], cases=2, split="tune",
                           length=512, progress=False)
    records = result["records"]
    facts = {(r["case"], r["fact"]) for r in records}
    assert {r["case"] for r in records} == {0, 1} and len(records) == len(facts) * (1 + 2 * 2)
    keys = {"evaluation", "policy", "budget_fraction", "budget", "case", "passage", "fact", "kind", "value", "reviews",
            "kept_share", "kept_share_by_layer", "correct", "full_correct", "answer", "split", "fact_position",
            "review_positions", "tokens_to_question", "budgets_to_question", "case_tokens"}
    full = {(r["case"], r["fact"]): r["correct"] for r in records if r["policy"] == "full"}
    for r in records:
        assert keys <= set(r) and r["evaluation"] == "recall_stream" and r["split"] == "tune"
        assert "conversation" not in r and r["full_correct"] == full[(r["case"], r["fact"])]
        assert r["fact_position"] < min(r["review_positions"], default=r["case_tokens"])
        if r["policy"] != "full":
            assert r["budget"] == round(r["budget_fraction"] * r["case_tokens"])
            assert r["budgets_to_question"] > 1 and r["tokens_to_question"] > r["budget"]
    assert all(r["kept_share"] == 0.0 for r in records if r["policy"] == "streaming")  # recency alone lets go
    assert "| h2o | 0.5 |" in recall_table(result, "kept_share")
    assert result["settings"]["evaluation"] == "recall_stream" and result["settings"]["length"] == 512
    json.dumps(result, allow_nan=False)  # strict JSON
    with pytest.raises(ValueError, match="cases"):
        recall_stream(tiny, cases=0, progress=False)
    with pytest.raises(ValueError, match="length"):
        recall_stream(tiny, cases=1, length=100, progress=False)
    with pytest.raises(ValueError, match="budget_fractions"):
        recall_stream(tiny, cases=1, budget_fractions=[1.5], progress=False)
    with pytest.raises(ValueError, match="split"):
        recall_stream(tiny, cases=1, split="test", progress=False)


# -- report: verdicts, README markers, identical reruns ----------------------------------------
@pytest.fixture(scope="module")
def report():
    """The command, as ``report.main(argv)``."""
    return SimpleNamespace(main=lambda argv: cli_main(["eval", "report", *argv]))


def _ppl(budget: int = 64) -> list[dict]:
    """ebbinghaus 2 points better than tova on every passage at budget 64; at 128 every policy is identical."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(15, 40, 6)
    out = []
    for b in (64, 128):
        for policy, shift in (("full", -3.0), ("ebbinghaus", -2.0), ("tova", 0.0), ("streaming", 1.0)):
            noise = rng.normal(0, 0.1, 6) if b == 64 and policy not in ("full", "tova") else np.zeros(6)
            for i, d in enumerate(difficulty):
                value = d + (shift if b == 64 else 0.0) + noise[i]
                out.append({"evaluation": "ppl", "policy": policy, "granularity": None if policy == "full" else "layer",
                            "budget": b, "passage": f"docs/{i}", "perplexity_after_budget": round(float(value), 4),
                            "split": "report", "chunk": 1})
    return out


def _retrieval() -> list[dict]:
    """12 documents, the full cache answers 10; on those ebbinghaus is right on all and streaming on none."""
    out = []
    for doc in range(12):
        full_ok = int(doc < 10)
        for policy, correct in (("full", full_ok), ("ebbinghaus", full_ok), ("streaming", 0)):
            out.append({"evaluation": "retrieval", "task": "passkey", "policy": policy,
                        "granularity": None if policy == "full" else "layer",
                        "budget": None if policy == "full" else 300 + doc,
                        "budget_fraction": None if policy == "full" else 0.25, "document": f"doc{doc}",
                        "case": 0, "split": "report", "correct": correct, "full_correct": full_ok})
    return out


def _write(folder: Path, retrieval: bool = True) -> None:
    (folder / "eval_ppl.json").write_text(json.dumps(_ppl()))
    if retrieval:
        (folder / "eval_retrieval.json").write_text(json.dumps(_retrieval()))


def _row(md: str, heading: str, policy: str) -> list[str]:
    section = md.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith(f"| {policy} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_verdicts_protocol_and_identical_reruns(report, tmp_path):
    _write(tmp_path)
    assert report.main(["--figures", str(tmp_path)]) == 0
    md = (tmp_path / "quality_report.md").read_text()
    png = (tmp_path / "quality_forest.png").read_bytes()
    assert png.startswith(b"\x89PNG") and b"Software" not in png
    win = _row(md, "perplexity · granularity layer · budget 64 tokens", "**ebbinghaus**")
    assert win[3] == "tova" and win[4].startswith("-2.") and win[-1] == "wins"
    tie = _row(md, "perplexity · granularity layer · budget 128 tokens", "**ebbinghaus**")
    assert tie[4] == "0.000 [0.000, 0.000]" and tie[-2] == "1.000" and tie[-1] == "ties"
    assert _row(md, "perplexity · granularity layer · budget 64 tokens", "streaming")[-1] == "loses"
    assert "Protocol: split report; chunk 1; granularity layer; budget 64 tokens (measured: 64, 128); " \
           "6 passages paired by passage." in md
    passkey = "passkey · granularity layer · budget 0.25 of the document"
    assert _row(md, passkey, "**ebbinghaus**")[1:3] == ["1.000", "10"]  # the 2 unanswered documents left out
    assert _row(md, passkey, "**ebbinghaus**")[-1] == "wins"
    assert _row(md, passkey, "full (all documents)")[1:3] == ["0.833", "12"]
    assert "the 10 of 12 documents the full cache answered" in md and "300–311 tokens" in md
    assert "### stream" not in md  # no stream records: no stream table
    assert report.main(["--figures", str(tmp_path)]) == 0  # a rerun gives the same bytes
    assert (tmp_path / "quality_report.md").read_text() == md
    assert (tmp_path / "quality_forest.png").read_bytes() == png


def test_peers_and_policy_are_configurable(report, tmp_path):
    _write(tmp_path, retrieval=False)
    report.main(["--figures", str(tmp_path), "--policy", "tova", "--peers", "streaming"])
    assert not (tmp_path / "quality_report.md").exists()  # the default's page is not overwritten
    md = (tmp_path / "quality_report_tova.md").read_text()
    assert (tmp_path / "quality_forest_tova.png").exists()
    row = _row(md, "perplexity · granularity layer · budget 64 tokens", "**tova**")
    assert row[3] == "streaming" and row[-1] == "wins"
    # ebbinghaus is not a peer here: compared with streaming only
    assert _row(md, "perplexity · granularity layer · budget 64 tokens", "ebbinghaus")[3] == "streaming"


def test_a_policy_run_apart_joins_its_family(report, tmp_path):
    """Records of a policy run on the same units in a file of its own (``Spec.also``) get rows in
    the family's tables; that file's own ``full`` rows are not counted twice."""
    _write(tmp_path, retrieval=False)
    main = json.loads((tmp_path / "eval_ppl.json").read_text())
    apart = [dict(r, policy="ebbinghaus_learned", perplexity_after_budget=r["perplexity_after_budget"] + 1.0)
             for r in main if r["policy"] == "ebbinghaus"] + [r for r in main if r["policy"] == "full"]
    (tmp_path / "eval_ppl_learned.json").write_text(json.dumps(apart))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- quality-report ebbinghaus_learned:begin -->\nold\n"
                      "<!-- quality-report ebbinghaus_learned:end -->\n")
    report.main(["--figures", str(tmp_path), "--policy", "ebbinghaus_learned", "--peers", "streaming,ebbinghaus",
                 "--readme", str(readme)])
    summary = readme.read_text()  # a summary per family and a link to the whole page, not every table
    assert "old" not in summary and "| perplexity | 2 |" in summary and "### " not in summary
    assert "](quality_report_ebbinghaus_learned.md)" in summary
    md = (tmp_path / "quality_report_ebbinghaus_learned.md").read_text()
    assert "`eval_ppl_learned.json`" in md
    row = _row(md, "perplexity · granularity layer · budget 64 tokens", "**ebbinghaus_learned**")
    assert row[3] == "ebbinghaus"
    full = _row(md, "perplexity · granularity layer · budget 64 tokens", "full (ceiling)")
    assert full[2] == str(len({r["passage"] for r in main if r["policy"] == "full" and r["budget"] == 64}))


def _recall(evaluation: str, unit: str) -> list[dict]:
    """16 units of 3 facts (one never reviewed); the full cache misses fact 2 of unit 0. Reviewed
    facts: ebbinghaus right on all, streaming on none; facts never reviewed: both wrong."""
    out = []
    for u in range(16):
        for fact in range(3):
            full_ok = not (u == 0 and fact == 2)
            for policy in ("full", "ebbinghaus", "streaming"):
                ok = full_ok if policy == "full" else policy == "ebbinghaus" and fact > 0 and full_ok
                out.append({"evaluation": evaluation, "policy": policy, unit: 100_000 + u, "fact": fact,
                            "reviews": fact, "budget": None if policy == "full" else 200 + u,
                            "budget_fraction": None if policy == "full" else 0.5, "split": "report",
                            "correct": ok, "full_correct": full_ok})
    return out


def test_conversations_and_recall_along_a_stream_are_families(report, tmp_path):
    (tmp_path / "eval_recall.json").write_text(json.dumps(_recall("recall", "conversation")))
    (tmp_path / "eval_recall_stream.json").write_text(json.dumps(_recall("recall_stream", "case")))
    assert report.main(["--figures", str(tmp_path), "--no-plot"]) == 0
    md = (tmp_path / "quality_report.md").read_text()
    for task, noun, unit in (("conversation recall", "conversation", "conversation"),
                             ("recall along a stream", "passage", "case")):
        reviewed = f"{task}, reviewed facts · budget 0.5 of the {noun}"
        assert _row(md, reviewed, "**ebbinghaus**")[1:4] == ["1.000", "16", "streaming"]
        assert _row(md, reviewed, "**ebbinghaus**")[-1] == "wins"
        assert _row(md, reviewed, f"full (all facts)")[1:3] == ["0.969", "16"]  # unit 0: 1 of its 2 reviewed facts
        assert (f"16 {noun}s paired by {unit} (the 31 of 32 facts the full cache answered, in 16 of 16 {noun}s; "
                "the `full` row is its accuracy on all of them)") in md
        assert _row(md, f"{task}, facts never reviewed · budget 0.5 of the {noun}", "**ebbinghaus**")[-1] == "ties"


def test_readme_markers(report, tmp_path, capsys):
    _write(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- quality-report:begin -->\nold text\n<!-- quality-report:end -->\nafter\n")
    report.main(["--figures", str(tmp_path / "."), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- quality-report:begin -->\nGenerated by")
    assert text.endswith("<!-- quality-report:end -->\nafter\n") and "old text" not in text
    assert "](quality_forest.png)" in text and "### perplexity" in text
    report.main(["--figures", str(tmp_path), "--readme", str(readme)])
    assert readme.read_text() == text  # replacing again changes nothing
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# No markers here\n")
    capsys.readouterr()
    report.main(["--figures", str(tmp_path), "--readme", str(plain)])
    assert plain.read_text() == "# No markers here\n"
    assert "markers" in capsys.readouterr().out


def test_no_records_at_all(report, tmp_path):
    assert report.main(["--figures", str(tmp_path)]) == 0
    assert "No evaluation records were found." in (tmp_path / "quality_report.md").read_text()
    assert not (tmp_path / "quality_forest.png").exists()


def test_forest_rows_give_true_position_streams_their_own_panel():
    from memollm.evaluate.report import build_tables, forest_rows

    windows = [{"evaluation": "stream", "policy": p, "granularity": "layer", "positions": s, "budget": 256,
                "window_start": w, "perplexity": 10.0 + w / 1000 + (50.0 * (s == "true") if p == "ebbinghaus" else 0.0),
                "source": "docs", "split": "report", "chunk": 64}
               for p in ("streaming", "ebbinghaus") for s in ("true", "cache") for w in range(0, 6000, 1000)]
    tables = build_tables({"long stream": windows}, policy="ebbinghaus", peers=["streaming"])
    panels = {r["label"].split(" · ")[2]: r["panel"] for r in forest_rows(tables, "ebbinghaus")}
    assert "(true positions)" in panels["pos true"] and "(true positions)" not in panels["pos cache"]
