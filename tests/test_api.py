"""Behaviour found by trying to break the API: each case here once ran silently wrong or failed
deep inside the library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memollm import ConfigError, MemoryConfig, register_policy
from memollm.config import POLICIES
from memollm.policies import EBBINGHAUS_TUNED, Policy
from memollm_testutils import assert_clean, one_thread

_one_thread = one_thread()

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps."
EVICT = dict(chat=False, memory_budget=24, sink_tokens=2, recent_window=4, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny("llama")


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
