"""Retrieval over independent documents: the document builder and one small run on the bundled model."""

from __future__ import annotations

import pytest
import torch

from memollm.config import ConfigError, MemoryConfig
from memollm.evaluate.retrieval import INTRO, TASKS, retrieval, retrieval_cases, retrieval_summary

torch.set_num_threads(1)

LENGTH = 400


@pytest.mark.parametrize("task", TASKS)
def test_documents(tokenizer, task):
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


def test_wording_varies(tokenizer):
    docs = retrieval_cases(tokenizer, "multikey", 8, length=LENGTH, split="tune")
    assert len({d.question.split("\n")[0].replace(d.question.split(" the ")[-1], "") for d in docs}) > 1
    assert all(len(d.needles) == 3 and len(set(d.needles)) == 3 for d in docs)
    chain = retrieval_cases(tokenizer, "vartrack", 2, length=LENGTH, split="tune", hops=2)
    assert all(len(d.needles) == 3 and "VAR" in d.needles[2] and d.expected not in d.needles[2] for d in chain)


def test_tune_and_report_share_no_filler(tokenizer):
    def sentences(docs) -> set[str]:
        return {s.strip() for d in docs for s in d.filler.split("\n") if len(s.strip()) > 60}

    tune = retrieval_cases(tokenizer, "passkey", 6, length=LENGTH, split="tune")
    report = retrieval_cases(tokenizer, "passkey", 6, length=LENGTH, split="report")
    assert not sentences(tune) & sentences(report)


def test_bad_input(tokenizer, llm):
    with pytest.raises(ConfigError, match="unknown retrieval task"):
        retrieval_cases(tokenizer, "needle", 1)
    with pytest.raises(ConfigError, match="filler tokens"):
        retrieval_cases(tokenizer, "multikey", 1, length=100)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        retrieval(llm, budget_fractions=(0.0,), progress=False)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        retrieval(llm, budget_fractions=(1.5,), progress=False)


def test_end_to_end(llm):
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
