"""The result dict, statistics, budgets, batches, bad input and the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from memollm import MODES, EbbinghausLLM, MemoryConfig
from memollm.cli import main
from memollm_testutils import assert_clean, forced_forgetting, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog. The dog sleeps while the fox runs."


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("llama")


# -- the command line ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tiny, tmp_path_factory):
    """The tiny model saved as a local folder (safetensors), as a user would pass with --model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return str(path)


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


def test_demo_shim_reports_errors_without_traceback():
    demo = Path(__file__).resolve().parents[1] / "demo.py"
    proc = subprocess.run([sys.executable, str(demo), "--budget", "3"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "memory_budget" in proc.stderr and "Traceback" not in proc.stderr
