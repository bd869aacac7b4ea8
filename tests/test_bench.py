"""memollm.bench on a tiny random model: cases, clocks and memory probes (timing), rounds and records
(runner), tables, targets and files (report). Record format, not speed."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from conftest import BENCH_BUDGET as BUDGET  # the budget bench_result ran with
from memollm.bench.report import RECORD_FIELDS, format_table, records_csv, results_json
from memollm.bench.runner import run_naive
from memollm.bench.timing import Case, PeakMemory, TokenClock, make_cases, measure_bandwidth, time_generation, weight_bytes
from memollm.texts import context_prompt


REQUIRED = ("mode", "policy", "budget", "context_tokens", "new_tokens", "tokens_per_second", "ms_per_token",
            "prefill_seconds", "peak_memory_bytes", "kv_cache_bytes", "device")


# -- timing ------------------------------------------------------------------------------------
def test_cases_put_baseline_first_and_expand_evict_per_policy_and_budget():
    cases = make_cases(["evict", "soft_delete", "baseline"], ["ebbinghaus", "h2o"], [64, 128])
    assert [c.label for c in cases] == ["baseline", "soft_delete", "evict/ebbinghaus/64", "evict/h2o/64",
                                        "evict/ebbinghaus/128", "evict/h2o/128"]
    with pytest.raises(ValueError):
        Case("soft_delete", policy="streaming")
    with pytest.raises(ValueError):
        Case("evict", "ebbinghaus", budget=3)  # below sinks + window
    with pytest.raises(ValueError):
        Case("fast_mode")


def test_clock_memory_and_bandwidth_helpers(tiny):
    clock = TokenClock(torch.device("cpu"))
    clock.put(torch.tensor([[1, 2, 3]]))  # the prompt: not a new token
    clock.put(torch.tensor([4]))
    clock.put(torch.tensor([5]))
    assert len(clock.times) == 2 and clock.times[0] <= clock.times[1]
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(4_000_000)  # 16 MB
        del block
    assert peak.kind in ("rss_vmhwm", "rss_sampled", "none")
    if peak.kind != "none":
        assert peak.peak > 16e6
    assert measure_bandwidth("cpu", megabytes=8, repeats=2) > 1e8
    assert weight_bytes(tiny.model) == sum(p.numel() * 4 for p in tiny.model.parameters()) + sum(
        b.numel() * b.element_size() for b in tiny.model.buffers())
    run = time_generation(tiny, context_prompt(tiny.tokenizer, 16), Case("baseline"), 3)
    assert run.new_tokens == 3 and run.decode_seconds > 0 and run.total_seconds >= run.prefill_seconds
    with pytest.raises(ValueError):
        time_generation(tiny, "x", Case("baseline"), 1)


# -- runner ------------------------------------------------------------------------------------
def test_one_record_per_case_and_context_with_every_required_field(bench_result):
    records = bench_result.records
    assert len(records) == 5 * 2
    assert {(r["label"], r["context_tokens"]) for r in records} == {
        (c, n) for c in ("baseline", "soft_delete", "sparse_attention", f"evict/ebbinghaus/{BUDGET}",
                         f"evict/streaming/{BUDGET}") for n in (24, 64)}
    for r in records:
        assert set(REQUIRED) <= set(r) and set(RECORD_FIELDS) <= set(r)
        assert r["method"] == "fair" and r["new_tokens"] == 5 and r["repeats"] == 2
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["tokens_per_second"] > 0 and r["ms_per_token"] > 0 and r["prefill_seconds"] > 0
        assert math.isclose(r["tokens_per_second"] * r["ms_per_token"], 1000)
        assert math.isclose(r["tokens_per_second_max"] * r["ms_per_token_min"], 1000)
        assert r["tokens_per_second_min"] <= r["tokens_per_second"] <= r["tokens_per_second_max"]
        assert r["ms_per_token_min"] <= r["ms_per_token"] <= r["ms_per_token_max"]
        assert r["speedup_vs_baseline"] > 0
        assert r["bound_ms_per_token"] > 0 and r["bound_ratio"] > 0
        assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
        if r["mode"] == "evict":
            assert r["budget"] == BUDGET and r["policy"] in ("ebbinghaus", "streaming")
        else:
            assert r["budget"] is None and r["policy"] is None
    json.dumps(bench_result.to_json())  # serialisable as is


def test_every_case_did_the_same_work_and_kv_bytes_follow_the_budget(bench_result):
    runs = bench_result.runs
    assert len(runs) == 2 * 2 * 5  # contexts x repeats x cases; warm-up runs are not kept
    assert all(r.new_tokens == 5 and len(r.token_ids) == 5 for r in runs)
    rec = {(r["label"], r["context_tokens"]): r for r in bench_result.records}
    for n in (24, 64):
        base = rec["baseline", n]
        assert base["speedup_vs_baseline"] == 1.0
        assert base["kv_cache_tokens"] == n + 5 - 1  # the last new token is never fed back
        assert rec["soft_delete", n]["kv_cache_bytes"] == base["kv_cache_bytes"]
        ev = rec[f"evict/ebbinghaus/{BUDGET}", n]
        assert ev["kv_cache_tokens"] == min(BUDGET, n + 4)
        assert ev["kv_cache_bytes"] <= base["kv_cache_bytes"]
    # greedy with the same cache: soft delete and sparse attention change nothing here only if nothing faded,
    # but baseline must give the same tokens in every round
    base_runs = [r.token_ids for r in runs if r.case.mode == "baseline" and r.context_tokens == 64]
    assert base_runs[0] == base_runs[1]


def test_naive_runs_each_case_once_cold_in_fixed_order(tiny):
    cases = make_cases(["baseline", "soft_delete", "sparse_attention"])
    naive = run_naive(tiny, 24, cases, new_tokens=4)
    assert [r["mode"] for r in naive.records] == ["baseline", "soft_delete", "sparse_attention"]
    assert all(r["method"] == "naive" and r["repeats"] == 1 for r in naive.records)
    assert all(r["end_to_end_tokens_per_second"] > 0 for r in naive.records)
    assert "seed-style" in format_table(naive.records, naive=True)


# -- report ------------------------------------------------------------------------------------
def test_targets_are_reported_as_ratios_where_the_records_allow(bench_result):
    from memollm.bench import format_targets, targets

    rows = targets(bench_result.records, BUDGET)
    names = [r["target"] for r in rows]
    assert "evict tok/s / baseline at 64 tokens" in names  # the longest context is over the budget
    assert "ebbinghaus ms/token / streaming at 64 tokens" in names
    assert not any("soft_delete" in n for n in names)  # no context near 1024 tokens here
    for r in rows:
        assert set(r) == {"target", "value", "goal", "met"} and r["value"] > 0 and isinstance(r["met"], bool)
    assert format_targets(rows).count("\n") == len(rows) - 1


def test_table_csv_and_json_outputs(bench_result, tmp_path):
    table = format_table(bench_result.records)
    assert "baseline" in table and f"evict/streaming/{BUDGET}" in table and "x base" in table
    (tmp_path / "b.csv").write_text(records_csv(bench_result.records))
    rows = list(csv.DictReader(open(tmp_path / "b.csv")))
    assert len(rows) == len(bench_result.records) and set(REQUIRED) <= set(rows[0])
    assert rows[0]["budget"] == "" and float(rows[0]["tokens_per_second"]) > 0
    (tmp_path / "b.json").write_text(results_json([bench_result]))
    data = json.loads((tmp_path / "b.json").read_text())
    assert set(data) == {"machine", "records", "runs"}
    assert data["machine"]["bandwidth_bytes_per_second"] == 1e10
    assert data["machine"]["weight_bytes"] > 0 and len(data["runs"]) == 20
