"""memollm.chat: a conversation over one bounded KV cache (ChatSession) and its chat template.
What its cache holds, seen as text and positions, is tested in test_views.py; its command
(``memollm chat``) in test_cli.py; the recall benchmark in test_evaluate.py.

Most tests run on a tiny random Llama (fast); one runs the bundled model, where greedy
replies are the tokenizer's own tokenization, so the cache must hold exactly the chat
template's tokens.
"""

from __future__ import annotations

import pytest
import torch

from memollm.attention import is_attached
from memollm.lessons import kv_trace
from memollm.chat import ChatSession, ChatTemplateError
from memollm.config import ConfigError
from memollm_testutils import LONG, TURNS, assert_clean, one_thread

_one_thread = one_thread()


def _prompt_ids(chat: ChatSession, message: str) -> list[int]:
    """The chat template applied to the whole history plus ``message``, as token ids."""
    text = chat.render(chat.messages + [{"role": "user", "content": message}], add_generation_prompt=True)
    return chat.tokenizer(text, add_special_tokens=False).input_ids


def _generate(llm, ids: list[int], n: int) -> list[int]:
    out = llm.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                             pad_token_id=llm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


# -- equivalence with regenerating from the full history ---------------------------------------
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


@pytest.mark.parametrize("mode, granularity", [("baseline", None), ("evict", "shared"), ("evict", "layer"),
                                               ("evict", "head"), ("soft_delete", None)])
def test_tiny_model_replies_equal_regenerating_from_the_tokens_held(tiny, mode, granularity):
    """On a random model the replies are arbitrary tokens (not the tokenizer's own), so the
    reference re-reads the exact tokens the session holds, from scratch, with model.generate;
    with room for everything, every granularity gives the same replies."""
    options = dict(memory_budget=2048, granularity=granularity) if mode == "evict" else {}
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


# -- the budget --------------------------------------------------------------------------------
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


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_evict_events_are_exactly_the_positions_missing_from_the_cache(tiny, granularity):
    """Per unit (the shared set, a layer or a KV head): dropped + kept = every token read."""
    chat = ChatSession(tiny, "evict", memory_budget=32, sink_tokens=2, recent_window=8, granularity=granularity)
    dropped: dict[str, list[int]] = {}
    for message in [LONG, "And then?"]:
        for event in chat.send(message, 6)["evict_events"].values():
            for unit, ps in (event.items() if isinstance(event, dict) else [("shared", event)]):
                dropped.setdefault(unit, []).extend(ps)
    kept = chat.session.kept_positions()
    assert set(dropped) == set(kept) == set(chat.session.unit_names())
    for unit in kept:
        assert sorted(dropped[unit] + kept[unit]) == list(range(len(chat.token_ids)))


@pytest.mark.parametrize("granularity", ["layer", "head"])
def test_per_layer_chats_hold_the_budget_in_every_layer_at_every_step(tiny, granularity):
    budget = 40
    chat = ChatSession(tiny, "evict", memory_budget=budget, sink_tokens=4, recent_window=8, granularity=granularity)
    assert chat.config.granularity == granularity and chat.session.units > 1
    sizes: list[list[int]] = []

    def after(module, args, kwargs, output):  # the cache after each forward, every layer (and head)
        sizes.append([layer.keys.shape[-2] for layer in chat.cache.layers])
        sizes.append([len(p) for p in chat.session.kept_positions().values()])
        return output

    handle = tiny.model.register_forward_hook(after, with_kwargs=True)
    try:
        for message in [LONG, "Short one.", LONG]:
            chat.send(message, max_new_tokens=6)
    finally:
        handle.remove()
    assert len(sizes) > 2 * 3 * 6 and max(max(s) for s in sizes) == budget
    held = chat.session.layer_positions()
    assert len({tuple(p) for p in held.values()}) > 1  # the layers really keep different tokens
    assert all(p[:4] == [0, 1, 2, 3] for p in held.values())  # every layer keeps the sinks
    assert_clean(tiny.model)


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
    assert len(chat.retention()) == len(chat.cached_positions()) >= chat.num_cached  # the union over layers
    first = chat.token_memory([0, chat.cached_positions()[-1], len(chat.token_ids) + 5])
    assert first[0]["cached"] and first[0]["strength"] >= tiny.config.initial_strength and 0 < first[0]["retention"] <= 1
    assert first[1]["age"] >= 0 and not first[2]["cached"] and "strength" not in first[2]
    assert first[0]["layers"] == len(chat.session.full_layers) and first[2]["layers"] == 0


@pytest.mark.parametrize("mode, kwargs, knob", [
    ("baseline", dict(memory_budget=64), "memory_budget"),
    ("soft_delete", dict(policy="h2o"), "policy"),
    ("sparse_attention", dict(recent_window=8), "recent_window"),
    ("soft_delete", dict(granularity="layer"), "granularity"),
    ("sparse_attention", dict(granularity="head"), "granularity"),
])
def test_a_knob_the_chat_cannot_honour_is_refused_by_name(tiny, mode, kwargs, knob):
    with pytest.raises(ConfigError, match=knob):
        ChatSession(tiny, mode, **kwargs)


def test_chats_resolve_the_config_like_generate(tiny):
    """No chat-only settings: granularity auto is per layer in evict, the observation window
    and pool are the config's, and every knob passed is the one that runs."""
    chat = ChatSession(tiny, "evict", memory_budget=64)
    assert chat.config == tiny.config.replace(memory_budget=64) and chat.session.granularity == "layer"
    chat = ChatSession(tiny, "evict", memory_budget=64, granularity="shared", observation_window=4,
                       observation_pool=3)
    assert (chat.session.granularity, chat.config.observation_window, chat.config.observation_pool) == ("shared", 4, 3)
    assert chat.send("hi", 3)["config"]["observation_window"] == 4
    with pytest.raises(TypeError, match="unknown"):
        ChatSession(tiny, "evict", budget=64)


# -- isolation and clean-up --------------------------------------------------------------------
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
    with pytest.raises(ValueError, match="differently") as refused:  # a ValueError, like every bad input
        chat.send(TURNS[1], 4)
    assert refused.type is ChatTemplateError
    chat.history[0]["content"] = original
    assert chat.send(TURNS[1], 4)["turn"] == 2
    assert_clean(tiny.model)


# -- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(generation_mode="fast"), "generation_mode"),
    (dict(fmt="xml"), "fmt"),
    (dict(memory_budget=5), "memory_budget"),
    (dict(policy="lru"), "policy"),
    (dict(system=""), "system"),
    (dict(seed=-1), "seed"),
    (dict(prefill_chunk=0), "prefill_chunk"),
    (dict(granularity="row"), "granularity"),
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


# -- sampling, formats, turns ------------------------------------------------------------------
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


def test_boundaries_mark_each_message(tiny):
    chat = ChatSession(tiny, "evict", memory_budget=128)
    chat.send(TURNS[0], 4)
    chat.add_turn(TURNS[1], "Paris.")
    roles = [r for r, _ in chat.boundaries]
    starts = [p for _, p in chat.boundaries]
    assert roles == ["user", "assistant"] * 2
    assert starts == sorted(starts) and starts[0] == 0
