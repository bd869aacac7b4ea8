"""memollm.training and `memollm train-strength` on the tiny random Llama: targets from the tune split
only, a fit that lowers the loss, byte-identical gates from the same seed, settings in the metadata."""

from __future__ import annotations

import json

import pytest
import torch

from memollm.cli import main
from memollm.strength import StrengthGate
from memollm.training import bce, collect, fit, passage_list, top_half, train_strength
from memollm_testutils import one_thread

_one_thread = one_thread()

SMALL = dict(passages=2, tokens=300, steps=15, samples=64, progress=False)


def test_top_half_is_the_fewest_keys_holding_half_the_mass():
    attn = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.1, 0.3, 0.1]])  # sinks hold 0.5; the rest 0.5
    assert top_half(attn).tolist() == [[False] * 5 + [True, False]]  # 0.3 alone is over half of 0.5


def test_gate_records_split_seed_and_settings(tiny):
    gate = train_strength(tiny, seed=3, **SMALL)
    meta = gate.metadata
    assert meta["split"] == "tune" and meta["seed"] == "3" and meta["passages"] == "2" and meta["tokens"] == "300"
    assert meta["steps"] == "15" and meta["lr"] == "0.02" and json.loads(meta["ages"]) == [[8, 16], [32, 64], [128, 256]]
    assert meta["command"].startswith("memollm train-strength --model ") and "--seed 3" in meta["command"]
    assert gate.matches(tiny.model) and meta["memollm_version"]
    assert float(meta["bce_final"]) < float(meta["bce_initial"])


def test_same_seed_writes_the_same_bytes(tiny, tmp_path):
    for name in ("a", "b"):
        train_strength(tiny, seed=0, **SMALL).save(tmp_path / f"{name}.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = StrengthGate.load(tmp_path / "a.safetensors")
    assert loaded.metadata["seed"] == "0" and loaded.num_parameters == 4 * 2 * 65


def test_the_report_split_is_refused(tiny):
    with pytest.raises(ValueError, match="never fit on the report split"):
        train_strength(tiny, split="report", **SMALL)


def test_fit_lowers_the_loss_on_its_data(tiny):
    data = collect(tiny, [p.ids for p in passage_list(tiny.tokenizer, 2, 300, "tune")], samples=64, progress=False)
    assert data.hidden.shape == (4, 600, 64) and data.token.shape == (4, 2 * 3 * 64)
    assert set(data.y.unique().tolist()) <= {0.0, 1.0} and int(data.token.max()) < 600
    start = StrengthGate(data.layers, 64, 2)
    gate = fit(data, steps=20)
    with torch.no_grad():
        assert bce(gate, data) < bce(start, data)


def test_train_strength_command(tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import train as train_cli

    with pytest.raises(SystemExit) as exc:
        main(["train-strength", "--help"])
    assert exc.value.code == 0 and "--passages" in capsys.readouterr().out
    monkeypatch.setattr(train_cli, "load_llm", lambda args: tiny)
    out = tmp_path / "gate.safetensors"
    assert main(["train-strength", "--passages", "2", "--tokens", "300", "--steps", "5", "--check-passages", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "| learned | 64 |" in printed
    assert StrengthGate.load(out).metadata["steps"] == "5"
    assert main(["train-strength", "--seed", "-1"]) == 2
