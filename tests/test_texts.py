"""memollm.texts: two kinds of offline text, disjoint report/tune passages from each, segments of a text
and prompts of a given length."""

from __future__ import annotations

import fnmatch
import functools
import tomllib
from pathlib import Path

import pytest
import torch

from memollm import texts
from memollm.texts import TEXT_SOURCES, context_prompt, default_text, passages, split_ids, text_segments

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=4)
def _locator(tokenizer, source: str):
    """``find(ids)`` -> every offset at which ``ids`` occurs in the source's token stream."""
    stream = torch.cat([split_ids(tokenizer, source, "report"), split_ids(tokenizer, source, "tune")])
    heads: dict[tuple[int, ...], list[int]] = {}  # offsets by their first 8 tokens
    for offset, head in enumerate(stream.unfold(0, 8, 1).tolist()):
        heads.setdefault(tuple(head), []).append(offset)

    def find(ids: torch.Tensor) -> list[int]:
        n = ids.shape[0]
        return [o for o in heads.get(tuple(ids[:8].tolist()), [])
                if o + n <= stream.shape[0] and torch.equal(stream[o:o + n], ids)]

    return find


def _window_hashes(ids: torch.Tensor, width: int = 32) -> torch.Tensor:
    """A 64-bit hash of every ``width``-token window (random weights; collisions negligible)."""
    weights = torch.randint(-2**62, 2**62, (width,), generator=torch.Generator().manual_seed(0))
    return (ids.unfold(0, width, 1) * weights).sum(dim=1)


def test_both_sources_load_and_are_different_kinds_of_text():
    assert set(TEXT_SOURCES) == {"docs", "prose"}
    docs, prose = TEXT_SOURCES["docs"](), TEXT_SOURCES["prose"].load()
    for name, text in (("docs", docs), ("prose", prose)):
        assert TEXT_SOURCES[name].name == name and TEXT_SOURCES[name].description
        assert len(text) > 300_000, name
    # reference documentation: code examples and indented blocks; a novel: neither, but dialogue
    assert docs.count(">>>") > 100 and prose.count(">>>") == 0
    assert sum(line.startswith("   ") for line in docs.splitlines()) > 2000
    assert not any(line.startswith(" ") for line in prose.splitlines())
    assert prose.count('"') > 1000 and "Captain Wentworth" in prose and "Captain Wentworth" not in docs
    # the novel's hard wraps are joined: one line per paragraph
    assert prose.startswith("Persuasion\n\nby\n\nJane Austen")
    assert "\n\n" in prose and max(len(p) for p in prose.split("\n\n")) > 2000
    assert all("\n" not in p for p in prose.split("\n\n"))


def test_docs_are_the_pydoc_topics_without_repeats():
    docs, full = texts.docs_text(), texts.default_text()
    assert texts.default_text() == full and 0.7 * len(full) < len(docs) < len(full)
    paragraphs = [p.strip() for p in docs.split("\n\n")]
    long = [p for p in paragraphs if len(p) >= 40]
    assert len(set(long)) == len(long)
    known = {p.strip() for p in full.split("\n\n")}
    assert all(p in known for p in paragraphs)


def test_the_prose_file_is_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["memollm"]
    shipped = texts.PROSE_FILE
    assert any(fnmatch.fnmatch(f"data/{shipped}", pattern) for pattern in data)
    assert (ROOT / "memollm" / "data" / shipped).is_file()


def test_splits_are_halves_of_the_whole_token_stream(tokenizer):
    for name, source in TEXT_SOURCES.items():
        report, tune = split_ids(tokenizer, name, "report"), split_ids(tokenizer, name, "tune")
        assert tokenizer.decode(torch.cat([report, tune])) == source()  # the halves hold the whole text
        assert report.shape[0] in (tune.shape[0], tune.shape[0] - 1)
        assert report.shape[0] >= 40_000, f"{name}: {report.shape[0]} tokens per split"
        # the halves share no text either: hardly a 32-token window of tune occurs in report
        shared = torch.isin(_window_hashes(tune), _window_hashes(report)).sum().item()
        assert shared / (tune.shape[0] - 31) < 0.001, f"{name}: {shared} tune windows also in report"


@pytest.mark.parametrize("n_tokens, count", [(1024, 8), (300, 20)])
def test_passages_have_the_right_shape_and_are_disjoint(tokenizer, n_tokens, count):
    ps = passages(tokenizer, n_tokens, count)
    assert [(p.source, p.index) for p in ps] == [(s, i) for s in ("docs", "prose") for i in range(count)]
    assert len({p.key for p in ps}) == len(ps)
    for source in ("docs", "prose"):
        report = split_ids(tokenizer, source, "report")
        find = _locator(tokenizer, source)
        spans = []
        for split in ("report", "tune"):
            own = passages(tokenizer, n_tokens, count, sources=(source,), split=split)
            if split == "report":  # the same passages as in the call over both sources
                assert [p.ids.tolist() for p in own] == [p.ids.tolist() for p in ps if p.source == source]
            for s, i, ids in own:
                assert s == source and ids.shape == (n_tokens,) and ids.dtype == torch.long
                found = find(ids)
                assert len(found) == 1, f"{source}/{i}: found at {found}"
                start = found[0]
                if split == "report":
                    assert start + n_tokens <= report.shape[0]  # inside the report half
                else:
                    assert start >= report.shape[0]  # inside the tune half
                spans.append((start, start + n_tokens))
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "passages overlap"
        # spread over the text, not its first pages
        report_starts = [a for a, _ in spans if a < report.shape[0]]
        assert max(report_starts) > report.shape[0] * 0.7


def test_passages_are_deterministic_and_prefix_stable(tokenizer):
    a = passages(tokenizer, 512, 8, sources=("prose", "docs"), split="tune")
    b = passages(tokenizer, 512, 8, sources=("prose", "docs"), split="tune")
    assert [p.source for p in a[:8]] == ["prose"] * 8
    assert all(x.key == y.key and torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    few = passages(tokenizer, 512, 3, sources=("prose", "docs"), split="tune")
    assert [(p.key, p.ids.tolist()) for p in few] == [(p.key, p.ids.tolist()) for p in a[:3] + a[8:11]]
    one = passages(tokenizer, 512, 3, sources="docs", split="tune")
    assert [p.key for p in one] == ["docs/0", "docs/1", "docs/2"]


def test_passages_errors(tokenizer):
    blocks = split_ids(tokenizer, "prose", "report").shape[0] // 4096
    assert len(passages(tokenizer, 4096, blocks, sources=("prose",))) == blocks  # every block
    with pytest.raises(ValueError, match="tokens"):
        passages(tokenizer, 4096, blocks + 1, sources=("prose",))
    with pytest.raises(ValueError, match="split"):
        passages(tokenizer, 64, 2, split="test")
    with pytest.raises(ValueError, match="unknown text source"):
        passages(tokenizer, 64, 2, sources=("poetry",))
    with pytest.raises(ValueError, match=">= 1"):
        passages(tokenizer, 0, 2)
    with pytest.raises(ValueError, match="repeat"):
        passages(tokenizer, 64, 2, sources=("docs", "docs"))


def test_spread_order():
    assert texts._spread(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 5, 13, 100):
        order = texts._spread(n)
        assert sorted(order) == list(range(n))
        assert texts._spread(n, 3) == order[:3]


# -- segments and prompts ----------------------------------------------------------------------
TEXT = ("Eviction keeps a fixed number of tokens in the cache. The policy decides which ones stay. "
        "Attention sinks and a recent window are always kept. ") * 20


def test_text_splits_do_not_overlap(tokenizer):
    report = text_segments(tokenizer, TEXT, 40, 2, "report")
    tune = text_segments(tokenizer, TEXT, 40, 2, "tune")
    n = tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids.shape[1]
    assert report.shape == tune.shape == (2, 40)
    assert torch.equal(report.flatten(), tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")
                       .input_ids[0, :80])
    assert torch.equal(tune.flatten(), tokenizer(TEXT, add_special_tokens=False, return_tensors="pt")
                       .input_ids[0, n // 2: n // 2 + 80])
    with pytest.raises(ValueError):
        text_segments(tokenizer, TEXT, 10_000, 1)


def test_default_text_is_cpython_docs():
    text = default_text()
    assert len(text) > 100_000 and "assert" in text


def test_context_prompt_has_the_requested_length(tokenizer):
    for n in (1, 17, 128, 500):
        prompt = context_prompt(tokenizer, n)
        assert abs(len(tokenizer(prompt).input_ids) - n) <= 1
    long = context_prompt(tokenizer, 200, text="short text. ")  # a short text is repeated
    assert abs(len(tokenizer(long).input_ids) - 200) <= 1
