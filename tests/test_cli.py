"""memollm.cli, every subcommand (generate, chat, bench, eval) and the seed's demo.py shim: options
reach the library, results are printed and written, a user's error is one line on stderr with
status 2 and no traceback, and a bug keeps its traceback."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memollm import MODES
from memollm.cli import build_parser, main
from memollm.config import KNOBS, MemoryConfig
from memollm_testutils import LONG, assert_clean, one_thread

_one_thread = one_thread()

BUDGET = 40  # >= sink_tokens + recent_window + 1 with the default config


@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    """The tiny model saved as a local folder (safetensors), as a user would pass with --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return str(path)


# -- memollm generate --------------------------------------------------------------------------
def test_cli_compare_prints_one_table_and_writes_json(model_dir, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code = main(["generate", "--model", model_dir, "--compare", "--max_tokens", "3", "--budget", "40",
                 "--no-chat", "--json", str(out_json)])
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.split(" ")[0] in MODES]
    assert [line.split()[0] for line in lines] == list(MODES)
    assert all(line.split()[1] == "3" for line in lines)
    results = json.loads(out_json.read_text())
    assert [r["mode"] for r in results] == list(MODES)
    assert all(r["num_tokens"] == 3 for r in results)


def test_cli_single_mode(model_dir, capsys):
    assert main(["generate", "--model", model_dir, "--mode", "evict", "--budget", "40", "--max_tokens", "2",
                 "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert "[evict] 2 tokens" in err
    assert '"mode": "evict"' in out


CLI_ERRORS = [
    (["--budget", "3"], "memory_budget"),
    (["--policy", "nope"], "policy"),
    (["--seed", "-1"], "--seed"),
    (["--temperature", "0"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--dtype", "float8"], "dtype"),
    (["--device", "nonsense"], "device"),
    (["--model", "/no/such/folder"], "/no/such/folder"),
    (["--json", "/no/such/dir/out.json"], "json"),
    (["--prompt", ""], "prompt"),
]


@pytest.mark.parametrize("argv,word", CLI_ERRORS, ids=[a[0] + "=" + a[1] for a, _ in CLI_ERRORS])
def test_cli_user_errors_are_one_line_and_status_2(model_dir, capsys, argv, word):
    full = ["generate", "--max_tokens", "2", *argv]
    if "--model" not in argv:
        full += ["--model", model_dir]
    assert main(full) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and word in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["generate", "--max_tokens", "0"], ["generate", "--mode", "fast"],
                                  ["generate", "--bogus"], ["generate", "--max_tokens", "x"]])
def test_cli_parse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_cli_reports_user_errors_in_one_line_and_bugs_with_a_traceback(monkeypatch, capsys):
    import memollm.cli
    from memollm.cli import generate as gen_cli

    assert memollm.cli.main(["generate", "--budget", "5", "--mode", "evict"]) == 2
    assert "memory_budget" in capsys.readouterr().err

    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(gen_cli, "load_llm", broken)
    with pytest.raises(ValueError, match="internal bug"):
        memollm.cli.main(["generate", "--prompt", "hi"])


def test_demo_shim_reports_errors_without_traceback():
    demo = Path(__file__).resolve().parents[1] / "demo.py"
    proc = subprocess.run([sys.executable, str(demo), "--budget", "3"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "memory_budget" in proc.stderr and "Traceback" not in proc.stderr


# -- memollm chat ------------------------------------------------------------------------------
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
    assert main(["chat", "--file", str(turns), "--budget", "40", "--window", "8", "--max-tokens", "3",
                          "--json", str(out)]) == 0
    assert [r["turn"] for r in json.loads(out.read_text())] == [1, 2]
    for bad in (["--budget", "3"], ["--policy", "lru"], ["--temperature", "0"], ["--file", str(tmp_path / "no")],
                ["--file", str(turns), "--mode", "baseline", "--budget", "40"]):
        assert main(["chat", *bad]) == 2
        assert "error" in capsys.readouterr().err


# -- memollm bench -----------------------------------------------------------------------------
def test_cli_bench_writes_json_and_csv(tiny, tmp_path, monkeypatch, capsys):
    import memollm.cli

    monkeypatch.setattr(memollm.cli.bench, "load_llm", lambda args: tiny)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code = memollm.cli.main(["bench", "--contexts", "20,40", "--new-tokens", "3", "--repeats", "1", "--warmup", "0",
                             "--modes", "baseline,evict", "--budget", str(BUDGET), "--naive", "--naive-context", "16",
                             "--json", str(out_json), "--csv", str(out_csv), "--no-plots", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Naive (seed-style)" in printed and "Fair:" in printed and "bandwidth" in printed
    data = json.loads(out_json.read_text())
    assert sorted({r["method"] for r in data["records"]}) == ["fair", "naive"]
    assert len([r for r in data["records"] if r["method"] == "fair"]) == 2 * 2
    assert len(list(csv.DictReader(open(out_csv)))) == 2 * 2 + 2
    assert memollm.cli.main(["bench", "--replot", str(out_json), "--no-plots"]) == 0  # tables again, no runs
    again = capsys.readouterr().out
    assert "seed-style" in again and f"evict/ebbinghaus/{BUDGET}" in again
    assert memollm.cli.main(["bench", "--replot", str(out_json), "--no-plots", "--markdown"]) == 0
    assert "|---|" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--contexts", "0"], ["--modes", "turbo"], ["--new-tokens", "1"],
                                  ["--budget", "3"], ["--policies", "nope"], ["--warmup", "-1"]])
def test_cli_bench_rejects_bad_options_in_one_line(argv, capsys, monkeypatch):
    import memollm.cli

    monkeypatch.setattr(memollm.cli.bench, "load_llm", lambda args: pytest.fail("loaded a model for a bad option"))
    with pytest.raises(SystemExit) as exc:
        code = memollm.cli.main(["bench", *argv])
        raise SystemExit(code)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- memollm eval ------------------------------------------------------------------------------
def test_cli_eval_help_and_usage_errors(capsys):
    for cmd in ("ppl", "passkey", "agreement"):
        with pytest.raises(SystemExit) as exc:
            main(["eval", cmd, "--help"])
        assert exc.value.code == 0
    assert main(["eval", "ppl", "--budgets", "16"]) == 2  # below sinks + window + 1
    assert "memory_budget must be >= sink_tokens + recent_window + 1 = 37, got 16" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", "ppl", "--policies", "nope"])
    assert exc.value.code == 2


def test_stream_command_reads_the_chosen_half_and_prints_the_summary(make_tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import evaluate as eval_cli

    tiny = make_tiny("llama")  # 1,024 positions: a 1,200-token stream runs past them
    monkeypatch.setattr(eval_cli, "load_llm", lambda args: tiny)
    out = tmp_path / "stream.json"
    assert main(["eval", "stream", "--tokens", "1200", "--every", "400", "--budget", "64", "--chunk", "16",
                 "--sinks", "4", "--window", "8", "--policies", "streaming,ebbinghaus", "--positions", "cache",
                 "--source", "prose", "--split", "tune", "--no-plot", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {(r["source"], r["split"]) for r in records} == {("prose", "tune")}
    assert {r["policy"] for r in records} == {"full", "streaming", "ebbinghaus"}
    text = capsys.readouterr().out
    assert "prose (tune split, chunk 16)" in text and "| ebbinghaus | cache | 64 | layer |" in text


def test_stream_command_reads_a_text_file_and_names_it(make_tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import evaluate as eval_cli

    tiny = make_tiny("llama")
    monkeypatch.setattr(eval_cli, "load_llm", lambda args: tiny)
    text = tmp_path / "notes.txt"
    text.write_text(LONG * 8, encoding="utf-8")
    n = len(tiny.tokenizer(LONG * 8, add_special_tokens=False).input_ids)
    out = tmp_path / "stream.json"
    base = ["eval", "stream", "--every", "100", "--budget", "64", "--chunk", "16", "--sinks", "4", "--window", "8",
            "--policies", "streaming", "--positions", "cache", "--no-plot"]
    assert main([*base, "--tokens", "200", "--text-file", str(text), "--split", "tune", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {(r["source"], r["split"]) for r in records} == {("notes.txt", "tune")}
    assert "200-token stream of notes.txt (tune split" in capsys.readouterr().out
    assert main([*base, "--tokens", str(n), "--text-file", str(text)]) == 2  # only half of it is the report split
    assert f"the text 'notes.txt' has {n // 2} tokens in its report split" in capsys.readouterr().err
    assert main([*base, "--text-file", str(tmp_path / "missing.txt")]) == 2
    assert "--text-file: cannot read" in capsys.readouterr().err
    assert main([*base, "--text-file", str(text), "--source", "prose"]) == 2
    (tmp_path / "empty.txt").write_text("  \n")
    assert main([*base, "--text-file", str(tmp_path / "empty.txt")]) == 2
    assert "empty" in capsys.readouterr().err


def test_recall_command_writes_records(tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import chat as chat_cli

    monkeypatch.setattr(chat_cli, "load_llm", lambda args: tiny)
    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))  # the figure goes here, not into the checkout
    out = tmp_path / "recall.json"
    assert main(["eval", "recall", "--cases", "1", "--budget-fractions", "0.5", "--policies", "streaming",
                     "--split", "tune", "--threads", "1", "--window", "8", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {r["policy"] for r in records} == {"full", "streaming"} and {r["split"] for r in records} == {"tune"}
    printed = capsys.readouterr().out
    assert "answer correct" in printed and "window 8)" in printed  # --window reaches the run, not recall's 16
    assert (tmp_path / "eval_recall.png").stat().st_size > 0
    for bad in (["--turns", "3"], ["--seed", "-1"]):
        assert main(["eval", "recall", *bad]) == 2
    with pytest.raises(SystemExit, match="2"):  # argparse refuses it while parsing
        main(["eval", "recall", "--budget-fractions", "1.5"])


def test_recall_along_a_text_file_writes_its_own_records_and_figure(tiny, tmp_path, monkeypatch, capsys):
    from memollm.cli import chat as chat_cli

    monkeypatch.setattr(chat_cli, "load_llm", lambda args: tiny)
    monkeypatch.setenv("MEMOLLM_FIGURES", str(tmp_path))
    sentences = ("The river runs past the mill. Boats wait by the bank; the keeper counts them. "
                 "At noon the bell rings twice. Nobody knows why the bridge was painted green. ")
    text = tmp_path / "notes.txt"
    text.write_text(sentences * 60, encoding="utf-8")
    out = tmp_path / "stream.json"
    assert main(["eval", "recall", "--text-file", str(text), "--cases", "1", "--budget-fractions", "0.5",
                 "--policies", "streaming", "--split", "tune", "--threads", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert {(r["evaluation"], r["passage"], r["split"]) for r in records} == {("recall_stream", "notes.txt/0", "tune")}
    assert "recall along a stream over 1 tune passages of notes.txt" in capsys.readouterr().out
    assert (tmp_path / "eval_recall_stream.png").stat().st_size > 0 and not (tmp_path / "eval_recall.png").exists()
    for bad, said in ((["--stream", "--turns", "12"], "--turns"), (["--length", "512"], "--stream"),
                      (["--stream", "--length", "100"], "--length"),
                      (["--text-file", str(tmp_path / "missing.txt")], "cannot read"),
                      (["--text-file", str(text), "--cases", "40"], "tune split")):
        assert main(["eval", "recall", "--split", "tune", "--no-plot", *bad]) == 2
        assert said in capsys.readouterr().err


# -- knobs: every MemoryConfig field, said once, reaches generate, chats and the command line -------------
def _subparser(*path: str):
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", [("generate",), ("chat",)])
def test_generate_and_chat_have_a_flag_per_knob_with_the_fields_default(path):
    actions = {a.dest: a for a in _subparser(*path)._actions}
    base = MemoryConfig()
    for name, f in KNOBS.items():
        assert name in actions, f"no flag for MemoryConfig.{name}"
        shown = getattr(base, name)
        assert f"(default: {'none' if shown is None else shown})" in actions[name].help, name
        assert actions[name].default is None  # a flag left out keeps the config's value
    assert "--budget" in actions["memory_budget"].option_strings
    assert "--memory-budget" in actions["memory_budget"].option_strings


def test_eval_subcommands_leave_the_swept_knobs_to_their_own_flags():
    actions = {a.dest: a for a in _subparser("eval", "ppl")._actions}
    assert actions["budgets"].option_strings[0] == "--budget"  # a list of budgets, not the knob
    assert "review_top_p" in actions and "memory_budget" not in actions
    recall_actions = {a.dest: a for a in _subparser("eval", "recall")._actions}
    assert recall_actions["recent_window"].default == 16 and "(default: 16)" in recall_actions["recent_window"].help


def test_a_knob_flag_reaches_the_config_and_a_bad_value_is_one_line(capsys):
    from memollm.cli.common import check_knobs, knobs_of

    args = _subparser("generate").parse_args(["--review", "none", "--trace-tau", "0.5", "--review-threshold", "2"])
    assert knobs_of(args) == {"review": "none", "trace_tau": 0.5, "review_threshold": 2.0}
    assert check_knobs(args).review == "none"
    assert main(["generate", "--review-top-p", "2", "--prompt", "x"]) == 2
    assert "review_top_p must be in (0.0, 1.0]" in capsys.readouterr().err
    # a flag the mode never reads: one line, before any model is loaded; --compare gives each mode its own
    assert main(["generate", "--mode", "soft_delete", "--budget", "64", "--prompt", "x"]) == 2
    assert "memory_budget does nothing in generation_mode='soft_delete'" in capsys.readouterr().err
    assert main(["eval", "ppl", "--soft-delete-floor", "0.5"]) == 2
    assert "soft_delete_floor does nothing in generation_mode='evict'" in capsys.readouterr().err
    assert main(["chat", "--mode", "sparse_attention", "--window", "8"]) == 2
    assert "recent_window does nothing in generation_mode='sparse_attention'" in capsys.readouterr().err


def test_generate_takes_any_knob_by_name_and_names_them_when_one_is_wrong():
    from memollm.llm import GenerateArgs

    args = GenerateArgs.parse({"observation_pool": 3, "trace": "sum", "max_new_tokens": 2})
    assert args.memory_overrides() == {"observation_pool": 3, "trace": "sum"}
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['budget'\].*memory_budget"):
        GenerateArgs.parse({"budget": 3})
