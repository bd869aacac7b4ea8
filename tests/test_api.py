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


@pytest.fixture
def temporary_policy():
    added = []

    def register(name, cls):
        register_policy(name)(cls)
        added.append(name)
        return cls

    yield register
    for name in added:
        POLICIES.pop(name, None)


@pytest.mark.parametrize("shape", ["one", "short", "list"])
def test_a_policy_with_badly_shaped_scores_gets_a_value_error_naming_it(tiny, temporary_policy, shape):
    class Bad(Policy):
        def scores(self, positions):
            if shape == "one":
                return torch.ones(1, 1)
            if shape == "short":
                return torch.ones(positions.shape[0], positions.shape[1] - 3)
            return positions.tolist()

    temporary_policy("bad_scores", Bad)
    with pytest.raises(ValueError, match="policy 'bad_scores'.*shape"):
        tiny.generate(PROMPT, 20, "evict", policy="bad_scores", **EVICT)
    assert_clean(tiny.model)


def test_a_policy_without_scores_says_what_is_missing(tiny, temporary_policy):
    temporary_policy("no_scores", type("NoScores", (Policy,), {}))
    with pytest.raises(NotImplementedError, match="no_scores.*must define scores"):
        tiny.generate(PROMPT, 20, "evict", policy="no_scores", **EVICT)


def test_generate_inside_a_running_generation_fails_clearly(tiny):
    class Reenter:
        def put(self, value):
            tiny.generate("Hi.", 2, chat=False)

        def end(self):
            pass

    for mode in ("baseline", "evict"):
        kwargs = EVICT if mode == "evict" else dict(chat=False)
        if mode == "baseline":
            tiny.generate(PROMPT, 2, streamer=Reenter(), **kwargs)  # no session attached: harmless, allowed
            continue
        with pytest.raises(RuntimeError, match="inside a running generation"):
            tiny.generate(PROMPT, 2, mode, streamer=Reenter(), **kwargs)
        assert_clean(tiny.model)


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
