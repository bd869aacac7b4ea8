"""Conversation memory: one bounded KV cache across turns (``memollm.chat.ChatSession``),
its command (``memollm.chat_cli``) and the recall benchmark (``memollm.recall``).

Most tests run on a tiny random Llama (fast); one runs the bundled model, where greedy
replies are the tokenizer's own tokenization, so the cache must hold exactly the chat
template's tokens.
"""

from __future__ import annotations

import json

import pytest
import torch

from memollm.attention import is_attached
from memollm.cache import kv_trace
from memollm.chat import ChatSession, ChatTemplateError
from memollm.cli import main as cli_main
from memollm.viz import plot_recall as plot
from memollm.recall import (FACT_KINDS, build_conversation, merge, recall, run_conversation, summarize,
                            table)
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()

TURNS = ["Hello! My name is Ada and I live in Lisbon.", "What is the capital of France?",
         "Tell me a short fact about cats.", "What is my name?"]
LONG = ("Here is a long message so that one turn alone does not fit in the budget: " +
        "the quick brown fox jumps over the lazy dog, " * 6).strip()


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("llama")


def _prompt_ids(chat: ChatSession, message: str) -> list[int]:
    """The chat template applied to the whole history plus ``message``, as token ids."""
    text = chat.render(chat.messages + [{"role": "user", "content": message}], add_generation_prompt=True)
    return chat.tokenizer(text, add_special_tokens=False).input_ids


def _generate(llm, ids: list[int], n: int) -> list[int]:
    out = llm.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=llm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


# -- equivalence with regenerating from the full history ------------------------------------------
def test_bundled_model_replies_equal_regenerating_from_the_full_history(llm):
    """Budget above the conversation: each reply equals ``model.generate`` on the chat template
    of the whole history, and the tokens the session holds are exactly those template tokens."""
    chat = llm.chat("evict", memory_budget=1024)
    ends = []
    for message in ["What is 2 + 3? Answer with the number only.", TURNS[0], TURNS[1]]:
        ids = _prompt_ids(chat, message)
        r = chat.send(message, max_new_tokens=12)
        assert r["token_ids"] == _generate(llm, ids, 12)
        assert chat.token_ids[:len(ids)] == ids  # the cache holds the template's tokens, turn boundaries included
        assert r["evicted_tokens"] == 0 and r["turn"] == len(chat.history) // 2
        ends.append("eos" if r["token_ids"][-1] == llm.tokenizer.eos_token_id else "limit")
    assert ends[0] == "eos" and "limit" in ends[1:]  # both turn boundaries occur: <|im_end|> sampled, and cut off
    # the whole conversation, re-tokenized from text, is what the session read
    ids = _prompt_ids(chat, TURNS[3])
    assert chat.token_ids == ids[:len(chat.token_ids)]
    assert_clean(llm.model)


@pytest.mark.parametrize("mode", ["baseline", "evict", "soft_delete"])
def test_tiny_model_replies_equal_regenerating_from_the_tokens_held(tiny, mode):
    """On a random model the replies are arbitrary tokens (not the tokenizer's own), so the
    reference re-reads the exact tokens the session holds, from scratch, with model.generate."""
    options = dict(memory_budget=2048) if mode == "evict" else {}
    cfg = tiny.config.replace(soft_delete_floor=1.0) if mode == "soft_delete" else None
    chat = ChatSession(tiny, mode, config=cfg, **options)
    for i, message in enumerate(TURNS[:3]):
        before = len(chat.token_ids)
        r = chat.send(message, max_new_tokens=6 + i)
        prompt = chat.token_ids[:before + r["prompt_tokens"]]
        assert r["token_ids"] == _generate(tiny, prompt, 6 + i)
        # as text, the cache holds the template of the history (plus the reply's last token, pending)
        assert chat.tokenizer.decode(prompt) == chat.render(chat.messages[:-1], add_generation_prompt=True)
        assert r["kv_cache_tokens"] == len(chat.token_ids) == before + r["prompt_tokens"] + r["num_tokens"] - 1
    assert_clean(tiny.model)


def test_evict_with_a_large_budget_equals_baseline(tiny):
    a, b = ChatSession(tiny, "baseline"), ChatSession(tiny, "evict", memory_budget=4096, policy="h2o")
    for message in TURNS:
        assert a.send(message, 5)["token_ids"] == b.send(message, 5)["token_ids"]
    assert a.token_ids == b.token_ids


def test_positions_counted_in_the_cache_work_across_turns(tiny):
    """positions='cache' (StreamingLLM's scheme): equal to baseline while nothing is evicted,
    and bounded after; the session, not the chat, numbers the new tokens."""
    cfg = tiny.config.replace(positions="cache")
    a, b = ChatSession(tiny, "baseline"), ChatSession(tiny, "evict", memory_budget=4096, config=cfg)
    for message in TURNS[:2]:
        assert a.send(message, 5)["token_ids"] == b.send(message, 5)["token_ids"]
    small = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8, config=cfg)
    for message in [LONG, LONG]:
        assert small.send(message, 5)["peak_kv_cache_tokens"] <= 40
    assert small.cached_positions()[-1] == len(small.token_ids) - 1  # true positions are still tracked
    assert_clean(tiny.model)


# -- the budget ----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["ebbinghaus", "streaming", "h2o", "tova", "random"])
def test_the_cache_never_exceeds_the_budget(tiny, policy):
    budget = 40
    chat = ChatSession(tiny, "evict", memory_budget=budget, policy=policy, sink_tokens=4, recent_window=8)
    with kv_trace(tiny.model) as trace:  # runs before the session's hooks: sees every forward's full cache
        for message in [LONG, "Short one.", LONG]:
            r = chat.send(message, max_new_tokens=8)
            assert r["kv_cache_tokens"] <= budget and r["peak_kv_cache_tokens"] <= budget
    assert max(trace["kv_cache_tokens"]) == budget
    assert len(trace["kv_cache_tokens"]) > 3 * 8  # the long turns were read in several chunks
    assert chat.num_cached == budget and len(chat.token_ids) > 3 * budget
    assert chat.cached_positions()[:4] == [0, 1, 2, 3]  # sinks kept
    assert_clean(tiny.model)


def test_chunked_turns_equal_the_session_evicting_the_same_positions(tiny):
    """The evict events of a chat are exactly the positions missing from the cache."""
    chat = ChatSession(tiny, "evict", memory_budget=32, sink_tokens=2, recent_window=8)
    events: dict[int, list[int]] = {}
    for message in [LONG, "And then?"]:
        events.update(chat.send(message, 6)["evict_events"])
    dropped = sorted(p for ps in events.values() for p in ps)
    kept = chat.cached_positions()
    assert sorted(dropped + kept) == list(range(len(chat.token_ids)))


def test_memory_state_carries_over_between_turns(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=48, sink_tokens=2, recent_window=8)
    session = chat.session
    chat.send(TURNS[0], 6)
    strength_after_one = session.memory.strength.clone()
    chat.send(TURNS[1], 6)
    assert chat.session is session  # one memory for the whole conversation
    assert session.memory.num_tokens == chat.num_cached
    assert float(strength_after_one.max()) > tiny.config.initial_strength  # reinforced in turn 1 ...
    assert float(session.memory.strength.max()) >= float(strength_after_one.max())  # ... and not reset
    assert len(chat.retention()) == chat.num_cached
    first = chat.token_memory([0, chat.cached_positions()[-1], len(chat.token_ids) + 5])
    assert first[0]["cached"] and first[0]["strength"] >= tiny.config.initial_strength and 0 < first[0]["retention"] <= 1
    assert first[1]["age"] >= 0 and not first[2]["cached"] and "strength" not in first[2]


# -- isolation and clean-up ---------------------------------------------------------------------------
def test_two_sessions_on_one_model_do_not_share_state(tiny):
    alone = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=2, recent_window=8)
    expected = [alone.send(m, 6)["token_ids"] for m in TURNS[:3]]
    a = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=2, recent_window=8)
    b = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=2, recent_window=8, policy="tova")
    got = []
    for m in TURNS[:3]:
        got.append(a.send(m, 6)["token_ids"])
        b.send(LONG, 6)  # interleaved: another conversation, another policy, on the same model
    assert got == expected
    assert a.cache is not b.cache and a.session is not b.session
    assert a.token_ids == alone.token_ids and a.cached_positions() == alone.cached_positions()
    assert_clean(tiny.model)


class Boom(Exception):
    pass


@pytest.mark.parametrize("mode", ["baseline", "evict"])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_an_error_mid_turn_leaves_nothing_attached(tiny, mode, error):
    chat = ChatSession(tiny, mode, memory_budget=64 if mode == "evict" else None)
    chat.send(TURNS[0], 4)
    calls = {"n": 0}

    def fail(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third decode step
            raise error()

    handle = tiny.model.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(error):
            chat.send(TURNS[1], 10)
    finally:
        handle.remove()
    assert not is_attached(tiny.model)
    assert_clean(tiny.model)
    assert len(chat.history) == 2  # the failed turn is not in the history
    with pytest.raises(RuntimeError, match="reset"):  # the cache is half-written: no silent continuation
        chat.send(TURNS[2], 4)
    chat.reset()
    assert chat.history == [] and chat.num_cached == 0
    assert chat.send(TURNS[0], 4)["turn"] == 1
    assert_clean(tiny.model)


def test_a_changed_history_is_refused_and_the_session_stays_usable(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=64)
    chat.send(TURNS[0], 4)
    original = chat.history[0]["content"]
    chat.history[0]["content"] = "Something else entirely."
    with pytest.raises(ChatTemplateError, match="differently"):
        chat.send(TURNS[1], 4)
    assert isinstance(ChatTemplateError("x"), ValueError)
    chat.history[0]["content"] = original
    assert chat.send(TURNS[1], 4)["turn"] == 2
    assert_clean(tiny.model)


# -- input checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(generation_mode="fast"), "generation_mode"),
    (dict(fmt="xml"), "fmt"),
    (dict(memory_budget=5), "memory_budget"),
    (dict(policy="lru"), "policy"),
    (dict(system=""), "system"),
    (dict(seed=-1), "seed"),
    (dict(prefill_chunk=0), "prefill_chunk"),
])
def test_bad_session_options_raise_value_errors(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChatSession(tiny, **kwargs)


@pytest.mark.parametrize("args, kwargs, match", [
    (("",), {}, "message"),
    ((42,), {}, "message"),
    (("hi", 0), {}, "max_new_tokens"),
    (("hi", 3), dict(temperature=-1.0), "temperature"),
    (("hi", 3), dict(top_p=1.5), "top_p"),
    (("hi", 3), dict(top_k=0), "top_k"),
    (("hi", 3), dict(stop=[""]), "stop"),
    (("hi", 3), dict(reply_prefix=""), "reply_prefix"),
])
def test_bad_turns_raise_value_errors_before_any_forward(tiny, args, kwargs, match):
    chat = ChatSession(tiny, "evict", memory_budget=64)
    with pytest.raises(ValueError, match=match):
        chat.send(*args, **kwargs)
    with pytest.raises(TypeError, match="unknown"):
        chat.send("hi", 3, temprature=0.5)
    assert chat.steps == 0 and chat.history == []
    assert chat.send("hi", 3)["turn"] == 1  # still usable


def test_baseline_refuses_a_conversation_past_the_context(tiny):
    chat = ChatSession(tiny, "baseline")
    chat.max_positions = 64
    with pytest.raises(ValueError, match="positions"):
        chat.send(LONG, 8)
    assert chat.steps == 0


# -- sampling, formats, inspection -------------------------------------------------------------------------
def test_sampling_is_seeded_per_session(tiny):
    def run(seed):
        chat = ChatSession(tiny, "evict", memory_budget=128, seed=seed)
        return [chat.send(m, 8, temperature=1.0, top_k=50)["token_ids"] for m in TURNS[:2]]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_transcript_format_stops_at_a_newline_and_keeps_the_reply_prefix(llm):
    chat = llm.chat("baseline", fmt="transcript", system="A conversation with a helpful assistant.")
    chat.add_turn("Remember this: the code word is tangerine.", "Got it, I will remember it.")
    r = chat.send("What is the code word?", 8, reply_prefix="The code word is")
    assert "\n" not in r["generated_text"]
    assert chat.history[-1]["content"].startswith(" The code word is")
    text = chat.tokenizer.decode(chat.token_ids)
    assert text == chat.render(chat.messages)[:len(text)]
    assert text.startswith("A conversation with a helpful assistant.\n\nUser: Remember this")
    assert "Assistant: Got it, I will remember it.\nUser: What is the code word?\nAssistant: The code word is" in text


def test_add_turn_reads_the_reply_without_generating(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=256)
    r = chat.add_turn(TURNS[0], "Nice to meet you, Ada.")
    assert r["turn"] == 1 and chat.num_cached == len(chat.token_ids) == r["prompt_tokens"]
    assert chat.tokenizer.decode(chat.token_ids) == chat.render()
    chat.send(TURNS[3], 4)
    assert chat.history[1] == {"role": "assistant", "content": "Nice to meet you, Ada."}


def test_locate_and_memory_text_show_what_is_still_cached(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8, policy="streaming")
    chat.add_turn("My name is Ada.", "Hello Ada.")
    where = chat.locate(" Ada")
    assert where and "Ada" in chat.tokenizer.decode([chat.token_ids[p] for p in where])
    assert chat.locate("Ada", occurrence=1) != where and chat.locate("nowhere") == []
    assert "…" not in chat.memory_text()
    chat.send(LONG, 4)
    shown = chat.memory_text()
    assert "…" in shown and "My name is Ada" not in shown  # streaming dropped the first turn
    assert not set(where) & set(chat.cached_positions())
    assert shown.startswith(chat.tokenizer.decode(chat.token_ids[:4]))  # the sinks are kept


def test_snapshots_draw_a_retention_map(tiny):
    from memollm.viz import plot_conversation

    chat = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8)
    snaps = []
    for m in TURNS[:3]:
        chat.send(m, 4)
        snaps.append(chat.snapshot())
    assert [s["turn"] for s in snaps] == [1, 2, 3]
    assert snaps[-1]["positions"] == chat.cached_positions() and len(snaps[-1]["retention"]) == chat.num_cached
    fig = plot_conversation(snaps, chat.boundaries)
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (3, snaps[-1]["tokens"])
    assert image.mask[0, snaps[0]["tokens"]:].all()  # not read yet after turn 1: blank
    streaming = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8, policy="streaming")
    streaming.send(LONG, 4)
    assert streaming.snapshot()["retention"] is None  # no forgetting curve: drawn as cached (1.0)
    plot_conversation([streaming.snapshot()])


def test_boundaries_mark_each_message(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=128)
    chat.send(TURNS[0], 4)
    chat.add_turn(TURNS[1], "Paris.")
    roles = [r for r, _ in chat.boundaries]
    starts = [p for _, p in chat.boundaries]
    assert roles == ["user", "assistant"] * 2
    assert starts == sorted(starts) and starts[0] == 0


# -- the command line ---------------------------------------------------------------------------------------
def test_chat_lines_prints_each_reply_and_what_is_cached(tiny):
    import io

    from memollm.cli.chat import chat_lines

    out, err = io.StringIO(), io.StringIO()
    results = chat_lines(tiny, ["Hello there.\n", "\n", LONG + "\n"], out=out, err=err, show_memory=True,
                         max_new_tokens=4, generation_mode="evict", memory_budget=40, sink_tokens=4,
                         recent_window=8)
    assert [r["turn"] for r in results] == [1, 2]  # the blank line is skipped
    assert out.getvalue().count("[cached] ") == 2 and "…" in out.getvalue().split("[cached] ")[-1]
    assert "[turn 2]" in err.getvalue() and "evicted this turn" in err.getvalue()
    assert_clean(tiny.model)


def test_chat_command_runs_from_a_file_and_rejects_bad_flags(tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import chat as chat_cli

    monkeypatch.setattr(chat_cli, "load_llm", lambda args: tiny)
    turns = tmp_path / "turns.txt"
    turns.write_text("Hello there.\nWhat did I say?\n")
    out = tmp_path / "chat.json"
    assert cli_main(["chat", "--file", str(turns), "--budget", "40", "--window", "8", "--max-tokens", "3",
                          "--json", str(out)]) == 0
    assert [r["turn"] for r in json.loads(out.read_text())] == [1, 2]
    for bad in (["--budget", "3"], ["--policy", "lru"], ["--temperature", "0"], ["--file", str(tmp_path / "no")]):
        assert cli_main(["chat", *bad]) == 2
        assert "error" in capsys.readouterr().err


# -- the recall benchmark ------------------------------------------------------------------------------------
def _text(conv):
    return "".join(arg if what == "read" else "[answer]" for what, arg in conv.steps)


def test_conversations_are_seeded_and_the_variants_share_the_fact(tokenizer):
    a, b = build_conversation(tokenizer, 3, True), build_conversation(tokenizer, 3, False)
    assert (a.value, a.kind) == (b.value, b.kind) and a.value in _text(a).split("\n")[2]
    assert _text(a) == _text(build_conversation(tokenizer, 3, True))
    assert _text(a) != _text(build_conversation(tokenizer, 3, True, seed=1))
    assert [s[0] for s in a.steps].count("answer") == 2 and [s[0] for s in b.steps].count("answer") == 1
    question = FACT_KINDS[a.kind].question
    assert _text(a).endswith(f"User: {question}\nAssistant: {FACT_KINDS[a.kind].answer_prefix}[answer]")
    assert "Quick check" in _text(a) and "Quick check" not in _text(b)
    lengths = [len(tokenizer(_text(c)).input_ids) for c in (a, b)]
    assert abs(lengths[0] - lengths[1]) < 20  # the review replaces one small-talk exchange
    assert {build_conversation(tokenizer, c, True).kind for c in range(3)} == set(FACT_KINDS)
    with pytest.raises(ValueError, match="turns"):
        build_conversation(tokenizer, 0, True, turns=1)


def test_run_conversation_keeps_the_budget_and_reports_what_is_cached(tiny):
    conv = build_conversation(tiny.tokenizer, 0, True, turns=4)
    full = run_conversation(tiny, conv, ["full"], None)
    assert full[0]["fact_cached"] and full[0]["copy_cached"] and full[0]["budget"] is None
    rows = run_conversation(tiny, conv, ["streaming", "h2o", "ebbinghaus"], 40, sink_tokens=4, recent_window=8)
    assert [r["policy"] for r in rows] == ["streaming", "h2o", "ebbinghaus"]
    assert all(r["peak_kv_tokens"] == 40 for r in rows)
    assert all(r["conversation_tokens"] == full[0]["conversation_tokens"] for r in rows)
    streaming = rows[0]
    assert not streaming["fact_cached"] and streaming["fact_share"] == 0.0  # the oldest tokens went first
    assert all(r["review_answer"] is not None and isinstance(r["correct"], bool) for r in rows)
    assert_clean(tiny.model)
    with pytest.raises(ValueError, match="full"):
        run_conversation(tiny, conv, ["full", "h2o"], 40)


def test_recall_summary_table_and_figure(tiny):
    result = recall(tiny, budgets=[40], policies=["streaming", "tova"], cases=2, turns=3, sink_tokens=4,
                    recent_window=8, progress=False)
    s = result["summary"]
    variants = {(r["policy"], r["variant"]) for r in s}
    for policy in ("full", "streaming", "tova"):
        assert {(policy, "not reviewed"), (policy, "reviewed"), (policy, "review effect")} <= variants
    for r in s:
        assert r["cases"] == 2 and -1 <= r["accuracy"] <= 1
        lo, hi = r["accuracy_ci"]
        assert lo <= r["accuracy"] <= hi
    assert len(result["records"]) == 2 * 2 * 3 and result["settings"]["policies"] == ["full", "streaming", "tova"]
    text = table(result)
    assert len(text.splitlines()) == 2 + 3 and "| full | no limit |" in text
    assert "fact cached" in table(result, "fact_cached")
    fig = plot(result)
    assert len(fig.axes) == 2
    json.dumps(result, allow_nan=False)  # strict JSON
    assert summarize(result["records"]) == s
    second = recall(tiny, budgets=[48], policies=["streaming"], cases=2, turns=3, sink_tokens=4, recent_window=8,
                    reference=False, progress=False)
    assert {r["policy"] for r in second["records"]} == {"streaming"}
    both = merge(result, second)
    assert len(both["records"]) == len(result["records"]) + len(second["records"])
    assert {r["budget"] for r in both["summary"]} == {None, 40, 48}
    assert len(plot(both).axes) == 4  # a row per budget


def test_recall_rejects_bad_settings(tiny):
    with pytest.raises(ValueError, match="cases"):
        recall(tiny, cases=0, progress=False)
    with pytest.raises(ValueError, match="kind"):
        recall(tiny, cases=1, kinds=["colour"], progress=False)
    with pytest.raises(ValueError, match="memory_budget"):
        recall(tiny, budgets=[10], cases=1, progress=False)


def test_recall_command_writes_records_and_merges_a_second_budget(tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import chat as chat_cli

    monkeypatch.setattr(chat_cli, "load_llm", lambda args: tiny)
    out = tmp_path / "recall.json"
    common = ["--cases", "1", "--turns", "2", "--window", "8", "--policies", "streaming", "--variants", "reviewed",
              "--no-plot"]
    assert cli_main(["eval", "recall", "--budget", "40", "--json", str(out), *common]) == 0
    records = json.loads(out.read_text())
    assert isinstance(records, list) and {r["policy"] for r in records} == {"full", "streaming"}
    assert "answer correct" in capsys.readouterr().out
    assert cli_main(["eval", "recall", "--budget", "48", "--no-full", "--merge", str(out), "--json", str(out),
                          *common]) == 0
    merged = json.loads(out.read_text())
    assert sorted({r["budget"] for r in merged}, key=str) == [40, 48, None] and len(merged) == len(records) + 1
    assert "| streaming | 48 |" in capsys.readouterr().out  # the tables show both runs
    assert summarize(merged) == merge(merged)["summary"]
    with pytest.raises(ValueError, match="overlap"):
        merge(merged, merged)
    assert cli_main(["eval", "recall", "--budget", "10"]) == 2
    assert cli_main(["eval", "recall", "--review-after", "5", "--turns", "3"]) == 2
    (tmp_path / "bad.json").write_text("{}")
    assert cli_main(["eval", "recall", "--merge", str(tmp_path / "bad.json")]) == 2
