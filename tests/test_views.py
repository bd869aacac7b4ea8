"""memollm.views (ConversationViews, mixed into ChatSession): what a conversation's cache holds by
true position, per layer or as the union over layers, its retention, its text with the evicted parts
elided, where a text sits, and snapshots of it turn after turn."""

from __future__ import annotations

import pytest

from memollm.chat import ChatSession
from memollm_testutils import LONG, TURNS, one_thread

_one_thread = one_thread()


@pytest.mark.parametrize("granularity", ["shared", "layer", "head"])
def test_views_agree_with_the_units_the_session_keeps(tiny, granularity):
    chat = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8, granularity=granularity)
    for message in [LONG, "Short one."]:
        chat.send(message, 5)
    session = chat.session
    units = {name: set(p) for name, p in session.kept_positions().items()}
    by_layer = {l: set().union(*(p for name, p in units.items() if name == "shared" or
                                 name.split(".")[0] == f"layer_{l}")) for l in session.full_layers}
    assert {l: set(p) for l, p in session.layer_positions().items()} == by_layer
    assert chat.cached_positions() == sorted(set().union(*by_layer.values()))
    assert session.intersection_positions() == sorted(set.intersection(*by_layer.values()))
    for layer in session.full_layers:
        assert chat.cached_positions(layer=layer) == sorted(by_layer[layer])
        retention = chat.retention(layer=layer)
        if retention is None:  # a shared ranking keeps state in the first memory layers only
            assert granularity == "shared" and layer not in session.layer_ids
        else:
            assert len(retention) == len(by_layer[layer]) and all(0 < r <= 1 for r in retention)
        gone = [p for p in range(len(chat.token_ids)) if p not in by_layer[layer]]
        assert chat.memory_text(layer=layer).count("…") >= (1 if gone else 0)
        assert chat.snapshot(layer=layer)["positions"] == chat.cached_positions(layer=layer)
    if granularity == "shared":  # one set of tokens: every view is the same
        assert chat.cached_positions() == session.intersection_positions() == session.positions[0].tolist()
    else:
        assert len(chat.cached_positions()) > chat.num_cached > len(session.intersection_positions())
    mixed = [p for p in chat.cached_positions() if p not in session.intersection_positions()]
    for row in chat.token_memory(mixed):
        assert row["cached"] and 0 < row["layers"] < len(session.full_layers)
    with pytest.raises(ValueError, match="layer"):
        chat.cached_positions(layer=99)


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
    last = snaps[-1]
    assert last["positions"] == chat.cached_positions() and len(last["retention"]) == len(last["positions"])
    fig = plot_conversation(snaps, chat.boundaries)
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (3, snaps[-1]["tokens"])
    assert image.mask[0, snaps[0]["tokens"]:].all()  # not read yet after turn 1: blank
    streaming = ChatSession(tiny, "evict", memory_budget=40, sink_tokens=4, recent_window=8, policy="streaming")
    streaming.send(LONG, 4)
    assert streaming.snapshot()["retention"] is None  # no forgetting curve: drawn as cached (1.0)
    drawn = plot_conversation([streaming.snapshot()]).axes[0].get_images()[0].get_array()[0]
    cached = streaming.cached_positions()
    assert drawn[cached].tolist() == [1.0] * len(cached)
    assert all(drawn[p] == -1.0 for p in range(len(streaming.token_ids)) if p not in cached)  # evicted: grey
