"""memollm.reading: the one read loop (chunks, the room rule) and the one decode loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from memollm import ConfigError, MemoryConfig
from memollm.reading import check_sampling, decode, keep_before, read, room, sampling_processors

PACKAGE = Path(__file__).resolve().parent.parent / "memollm"
VOCAB = 7


class Counter:
    """A fake model step: remembers what it read; the next token's logit peaks at (last id + 1) % VOCAB."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x[0].tolist())
        return torch.nn.functional.one_hot((x + 1) % VOCAB, VOCAB).float()


def test_room_leaves_the_sinks_and_window_and_at_least_one():
    cfg = MemoryConfig(memory_budget=64, sink_tokens=4, recent_window=8)
    assert room(cfg, 0) == 64 and room(cfg, 60) == 52 and room(cfg, 10) == 54
    tight = MemoryConfig(memory_budget=13, sink_tokens=4, recent_window=8)
    assert room(tight, 13) == 1
    assert keep_before(cfg, 10) == 54 and keep_before(cfg, 60) == 12


def test_read_cuts_chunks_by_size_and_limit():
    step = Counter()
    seen = []
    last = read(step, torch.arange(10)[None], chunk=4, limit=lambda: 3, each=lambda a, lg: seen.append(a))
    assert step.calls == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert seen == [0, 3, 6, 9]
    assert int(last.argmax()) == 10 % VOCAB
    assert read(step, torch.zeros(1, 0, dtype=torch.long)) is None


def test_decode_feeds_back_all_but_the_last_token():
    step = Counter()
    first = torch.nn.functional.one_hot(torch.tensor([2]), VOCAB).float()
    out = decode(step, first, 4, keep_logits=True)
    assert out.row() == [2, 3, 4, 5] and not out.stopped
    assert step.calls == [[2], [3], [4]]
    assert len(out.logits) == 4 and torch.equal(out.logits[0], first)


def test_decode_stops_at_a_token_or_a_string():
    first = torch.nn.functional.one_hot(torch.tensor([2]), VOCAB).float()
    out = decode(Counter(), first, 6, stop_ids={4})
    assert out.row() == [2, 3, 4] and out.stopped
    out = decode(Counter(), first, 6, stop_strings=["3"], detokenize=lambda ids: "".join(map(str, ids)))
    assert out.row() == [2, 3] and not out.stopped
    with pytest.raises(ValueError, match="one row"):
        decode(Counter(), first.repeat(2, 1), 3, stop_ids={4})


def test_decode_applies_processors_to_context_and_generated_tokens():
    """The repetition penalty sees the context first, then what was generated."""
    logits = torch.tensor([[0.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0)])
    out = decode(lambda x: logits[:, None], logits, 3, processors=procs, context=torch.tensor([[1]]))
    assert out.row() == [2, 1, 1]  # 1 is in the context (3/2 < 2); once 2 is penalised too (2/2 < 3/2), 1 wins


def test_decode_samples_from_the_generator():
    logits = torch.zeros(1, VOCAB)
    draw = lambda seed: decode(lambda x: logits[:, None], logits, 8, do_sample=True,  # noqa: E731
                               generator=torch.Generator().manual_seed(seed)).row()
    assert draw(3) == draw(3)
    assert len(set(draw(3) + draw(4))) > 1


def test_sampling_keywords_are_validated_once():
    assert check_sampling() is False and check_sampling(temperature=0.7) is True
    assert check_sampling(top_k=5, do_sample=False) is False
    for bad in ({"temperature": 0}, {"top_p": 1.5}, {"top_k": 0}, {"do_sample": "yes"}, {"repetition_penalty": -1}):
        with pytest.raises(ConfigError):
            check_sampling(**bad)
    do_sample, procs = sampling_processors(temperature=0.5, top_k=3, repetition_penalty=1.2)
    assert do_sample and [type(p).__name__ for p in procs] == [
        "RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper"]


def _decode_loops(path: Path) -> list[int]:
    """Lines of loops that both call a model and pick a token (argmax / multinomial)."""
    found = []
    for loop in ast.walk(ast.parse(path.read_text())):
        if not isinstance(loop, (ast.For, ast.While)):
            continue
        names = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
                 for n in ast.walk(loop) if isinstance(n, ast.Call)}
        if "model" in names and names & {"argmax", "multinomial"}:
            found.append(loop.lineno)
    return found


def test_one_decode_loop_in_the_package():
    loops = {str(p.relative_to(PACKAGE)): _decode_loops(p) for p in PACKAGE.rglob("*.py")}
    assert not {p: l for p, l in loops.items() if l}, "decode with memollm.reading.decode instead"
    text = (PACKAGE / "reading.py").read_text()
    assert text.count("for i in range(max_new_tokens)") == 1
    others = [p for p in PACKAGE.rglob("*.py") if p.name != "reading.py" and ".argmax(-1, keepdim=True)" in p.read_text()]
    assert not others, f"greedy picks outside memollm.reading: {others}"
