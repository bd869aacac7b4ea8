"""memollm.evaluate.capture: the simulated caches, their bounds and `memollm eval capture`."""

from __future__ import annotations

import json

import pytest
import torch

from memollm.cache import full_attention_layers
from memollm.cli import main
from memollm.evaluate.capture import CAPTURE_POLICIES, capture, simulate
from memollm.strength import StrengthGate, model_signature
from memollm_testutils import one_thread

_one_thread = one_thread()


def _attention(rows: int, t_len: int, seed: int = 0) -> torch.Tensor:
    """Causal attention rows that sum to one, peaked like a model's."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, t_len, t_len, generator=g)
    return logits.masked_fill(torch.ones(t_len, t_len, dtype=torch.bool).triu(1), -torch.inf).softmax(-1)


@pytest.fixture(scope="module")
def gate(tiny):
    torch.manual_seed(0)
    g = StrengthGate(full_attention_layers(tiny.model), 64, 2)
    with torch.no_grad():
        g.weight.normal_(0, 0.3)
    return g


def test_streaming_keeps_the_sinks_and_the_newest_tokens():
    attn, budget = _attention(3, 80), 32
    got = simulate(attn, [budget], ["streaming"])["capture"][0, 0]
    want = torch.stack([attn[:, q, :4].sum(-1) + attn[:, q, q - budget + 5:q + 1].sum(-1)
                        for q in range(budget - 1, 80)], 1).mean(1)
    torch.testing.assert_close(got, want)


def test_a_budget_past_the_passage_keeps_everything(tiny, gate):
    records = capture(tiny, passages=2, tokens=48, budgets=(48, 64), gate=gate, progress=False)
    assert len(records) == 2 * 2 * len(CAPTURE_POLICIES)
    assert all(r["capture"] == pytest.approx(1.0) and r["split"] == "report" for r in records)


def test_the_oracle_bounds_every_policy(tiny, gate):
    records = capture(tiny, passages=2, tokens=160, budgets=(24, 40), gate=gate, progress=False)
    for budget in (24, 40):
        mean = {p: sum(r["capture"] for r in records if r["policy"] == p and r["budget"] == budget) / 2
                for p in CAPTURE_POLICIES}
        assert all(mean["oracle"] >= v - 1e-6 for v in mean.values()), mean
        assert mean["streaming"] < mean["oracle"]
    old = [r["capture_old"] for r in records if r["budget"] == 24]
    assert all(v is not None and 0 <= v <= 1 for v in old)  # tokens > 96 back exist in 160


def test_eval_capture_command(tiny, gate, tmp_path, monkeypatch, capsys):
    from memollm.cli import evaluate as eval_cli

    monkeypatch.setattr(eval_cli, "load_llm", lambda args: tiny)
    path = tmp_path / "gate.safetensors"
    gate.metadata["signature"] = json.dumps(model_signature(tiny.model))
    gate.save(path)
    out = tmp_path / "capture.json"
    assert main(["eval", "capture", "--passages", "2", "--tokens", "96", "--budgets", "40", "--gate", str(path),
                 "--threads", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["policy"] for r in records} == set(CAPTURE_POLICIES) and {r["budget"] for r in records} == {40}
    assert "| learned | 40 | 2 |" in capsys.readouterr().out


# -- the model's own forgetting curves ---------------------------------------------------------
def test_token_kinds_from_the_text(tokenizer):
    from memollm.evaluate.curves import token_kind

    ids = tokenizer("The pass key is 48213, said Anna.", add_special_tokens=False).input_ids
    kinds = {tokenizer.decode([t]).strip(): token_kind(tokenizer, t) for t in ids}
    assert kinds["The"] == kinds["is"] == kinds[","] == kinds["."] == 0  # function words and punctuation
    assert kinds["Anna"] == 1 and any(kinds[w] == 1 for w in kinds if w.isdigit())  # names and numbers
    assert kinds["said"] == 2


def test_forgetting_curves_per_kind_age_and_layer(tiny, tmp_path, monkeypatch, capsys):
    """Every (kind, age bucket) has a record over all layers and one per layer; the overall share
    is the draw-weighted mean of the layers'; the command prints both tables and writes the records."""
    from memollm.cli import evaluate as eval_cli
    from memollm.evaluate.curves import AGES, KINDS, forgetting_curves

    records = forgetting_curves(tiny, passages=2, tokens=180, samples=64, progress=False)
    layers = full_attention_layers(tiny.model)
    assert len(records) == len(KINDS) * len(AGES) * (1 + len(layers))
    for kind in KINDS:
        for lo, hi in AGES:
            mine = [r for r in records if r["kind"] == kind and r["age_low"] == lo]
            overall = next(r for r in mine if r["layer"] is None)
            per = [r for r in mine if r["layer"] is not None and r["draws"]]
            assert overall["draws"] == sum(r["draws"] for r in per)
            if overall["draws"]:
                weighted = sum(r["retrieved"] * r["draws"] for r in per) / overall["draws"]
                assert overall["retrieved"] == pytest.approx(weighted) and 0 <= weighted <= 1
    monkeypatch.setattr(eval_cli, "load_llm", lambda args: tiny)
    out = tmp_path / "curves.json"
    assert main(["eval", "curves", "--tokens", "180", "--samples", "32", "--threads", "1", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())) == len(records)
    printed = capsys.readouterr().out
    assert "| names and numbers |" in printed and "(age 16-32)" in printed
    assert main(["eval", "curves", "--tokens", "100"]) == 2  # too short for the oldest age bucket
    assert "--tokens must be > 164" in capsys.readouterr().err
