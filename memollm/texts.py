"""Offline text for measurements: the benchmark and the quality evaluation read it from here.

Two kinds of English text, both on every machine without a download:

* ``docs`` -- CPython's reference documentation (``pydoc_data.topics``, shipped inside
  every CPython; ~92K tokens of the bundled tokenizer once its repeated paragraphs are dropped,
  :func:`docs_text`):
  technical prose with code and grammar snippets.
* ``prose`` -- Jane Austen's novel *Persuasion* (1818, public domain, ~108K tokens), shipped
  in ``memollm/data`` (no installed package or small PyPI wheel ships a long prose text with
  a clean license; source and license in ``memollm/data/README.md``): narrative and dialogue.

Results are quoted over several passages of both kinds (:func:`passages`), because one
passage of one kind says little about a policy. Each source's token stream is cut in half:
the first half is the ``report`` split (what results are quoted on), the second the
``tune`` split (what settings are tuned on), so tuning never sees the reported tokens.
"""

from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from .config import ConfigError

SPLITS = ("report", "tune")


def default_text() -> str:
    """The English reference documentation shipped inside every CPython (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


@functools.lru_cache(maxsize=1)
def docs_text(min_chars: int = 40) -> str:
    """:func:`default_text` with every repeated paragraph of ``min_chars`` or more dropped.

    The pydoc topics repeat themselves (``if`` and ``else`` are one text; grammar rules and
    notes recur across topics): in :func:`default_text` 17% of the tune half's 32-token
    windows also occur in the report half. Keeping only each paragraph's first occurrence
    brings that to ~0.01%, so tuning on the ``tune`` passages does not see reported text.
    """
    from pydoc_data.topics import topics

    seen: set[str] = set()
    out = []
    for name in sorted(topics):
        kept = []
        for paragraph in topics[name].split("\n\n"):
            key = paragraph.strip()
            if len(key) >= min_chars and key in seen:
                continue
            seen.add(key)
            kept.append(paragraph)
        if "".join(kept).strip():
            out.append("\n\n".join(kept))
    return "\n\n".join(out)


PROSE_FILE = "persuasion.txt.gz"


@functools.lru_cache(maxsize=1)
def prose_text() -> str:
    """Jane Austen, *Persuasion* (1818, public domain), shipped in ``memollm/data``.

    The file keeps the source's hard line wraps (~70 characters); they are joined here so a
    paragraph reads as one line, as prose does in a model's training data. Paragraphs (and
    chapter headings) stay separated by a blank line.
    """
    raw = gzip.decompress((resources.files("memollm") / "data" / PROSE_FILE).read_bytes()).decode("ascii")
    paragraphs = (" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", raw))
    return "\n\n".join(p for p in paragraphs if p)


@dataclass(frozen=True)
class TextSource:
    """One kind of offline text: ``load()`` returns it; ``description`` says what it is."""

    name: str
    description: str
    load: Callable[[], str]

    def __call__(self) -> str:
        return self.load()


TEXT_SOURCES: dict[str, TextSource] = {
    "docs": TextSource("docs", "CPython's English reference documentation (pydoc_data.topics, repeated "
                       "paragraphs dropped): technical prose with code", docs_text),
    "prose": TextSource("prose", "Jane Austen, Persuasion (1818), a novel: narrative and dialogue "
                        "(public domain, shipped in memollm/data)", prose_text),
}
"""The kinds of text that perplexity is reported on: name -> :class:`TextSource`."""


def load_text(path: str | Path | None = None) -> str:
    if path is None:
        return default_text()
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: the text file is empty")
    return text


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'report' or 'tune', got {split!r}")


def text_half(tokenizer, text: str, split: str = "report") -> torch.Tensor:
    """All token ids of one split of a user's ``text``: its first (``report``) or second (``tune``) half.

    The token stream is cut in half like a source's (:func:`split_ids`), so tuning never sees
    the reported tokens.
    """
    _check_split(split)
    # ``verbose=False``: a long text is longer than the model's context, which is expected here
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False).input_ids[0]
    half = ids.shape[0] // 2
    return ids[:half] if split == "report" else ids[half:]


def text_segments(tokenizer, text: str, n_tokens: int, segments: int = 1, split: str = "report") -> torch.Tensor:
    """``[segments, n_tokens]`` consecutive token ids from one split of ``text`` (:func:`text_half`)."""
    part = text_half(tokenizer, text, split)
    need = n_tokens * segments
    if part.shape[0] < need:
        raise ConfigError(f"the text's {split} split (one half of it) has {part.shape[0]} tokens; "
                          f"{segments} x {n_tokens} requested")
    return part[:need].reshape(segments, n_tokens).clone()


def context_prompt(tokenizer, n_tokens: int, text: str | None = None) -> str:
    """A raw prompt of (about) ``n_tokens`` tokens cut from ``text``; repeats the text if short.

    Decoding a prefix of the tokens and encoding it again may merge tokens at the cut, so the
    cut is nudged until the re-encoded prompt has exactly ``n_tokens`` where possible.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    text = text if text is not None else default_text()
    if not text.strip():
        raise ValueError("the benchmark text is empty")
    while len(text) < 8 * (n_tokens + 16):  # a short text is repeated (~4 characters per token)
        text = text + "\n\n" + text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    count = lambda prompt: len(tokenizer(prompt).input_ids)  # noqa: E731 (special tokens included)
    k = n_tokens
    best, best_gap = None, None
    for _ in range(8):  # re-encoding the decoded cut may merge tokens: steer the cut until it fits
        k = max(1, min(k, len(ids)))
        prompt = tokenizer.decode(ids[:k])
        got = count(prompt)
        if best_gap is None or abs(got - n_tokens) < best_gap:
            best, best_gap = prompt, abs(got - n_tokens)
        if got == n_tokens:
            break
        k += n_tokens - got
    return best


class Passage(NamedTuple):
    """One passage: unpacks as ``(source, index, ids)``; ``key`` ("prose/3") names it in records."""

    source: str
    index: int
    ids: torch.Tensor  # [n_tokens] token ids (no special tokens)

    @property
    def key(self) -> str:
        return f"{self.source}/{self.index}"


@functools.lru_cache(maxsize=8)
def _source_ids(tokenizer, name: str) -> torch.Tensor:
    # ``verbose=False``: the whole text is longer than the model's context, which is expected here
    return tokenizer(TEXT_SOURCES[name].load(), add_special_tokens=False, return_tensors="pt",
                     verbose=False).input_ids[0]


def split_ids(tokenizer, source: str, split: str = "report") -> torch.Tensor:
    """All token ids of one split of one source: the first (``report``) or second (``tune``) half."""
    _check_split(split)
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}; known: {sorted(TEXT_SOURCES)}")
    ids = _source_ids(tokenizer, source)
    half = ids.shape[0] // 2
    return (ids[:half] if split == "report" else ids[half:]).clone()  # a copy: the cache stays intact


def _spread(n: int, count: int | None = None) -> list[int]:
    """The first ``count`` (default all) of ``0 .. n-1`` in an order whose every prefix is spread evenly.

    Block ``floor(v * n)`` for the base-2 van der Corput sequence v = 0, 1/2, 1/4, 3/4, 1/8, ...
    (skipping blocks already taken): the first ``2**k`` points are all multiples of ``2**-k``,
    so every block is reached within ``2 * n`` points.
    """
    order: list[int] = []
    seen: set[int] = set()
    k = 0
    count = n if count is None else min(count, n)
    while len(order) < count:
        v, scale, x = 0.0, 0.5, k
        while x:
            v += scale * (x & 1)
            scale /= 2
            x >>= 1
        block = int(v * n)
        if block not in seen:
            seen.add(block)
            order.append(block)
        k += 1
    return order


def passages(tokenizer, n_tokens: int, count: int, *, sources: Sequence[str] = ("docs", "prose"),
             split: str = "report") -> list[Passage]:
    """``count`` disjoint passages of ``n_tokens`` token ids from each source's ``split``.

    A split is cut into consecutive blocks of ``n_tokens``; passage ``i`` is the ``i``-th block
    in an order that spreads every prefix evenly over the split (:func:`_spread`), so passages
    sample the whole text (the docs run alphabetically through unrelated topics; the novel
    through its chapters) rather than its first pages, and asking for more passages keeps the
    earlier ones: ``passages(t, n, 16)[:8]`` per source equals ``passages(t, n, 8)``.
    Deterministic; ``report`` and ``tune`` passages never share a token. Returned source by
    source, in the order of ``sources``.
    """
    if n_tokens < 1 or count < 1:
        raise ValueError(f"n_tokens and count must be >= 1, got n_tokens={n_tokens}, count={count}")
    if isinstance(sources, str):
        sources = (sources,)
    if len(set(sources)) != len(sources):
        raise ValueError(f"sources repeat: {list(sources)}")
    out: list[Passage] = []
    for source in sources:
        part = split_ids(tokenizer, source, split)
        blocks = part.shape[0] // n_tokens
        if blocks < count:
            raise ValueError(f"the {split} split of {source!r} has {part.shape[0]} tokens: {blocks} passages of "
                             f"{n_tokens}, {count} requested")
        for i, b in enumerate(_spread(blocks, count)):
            out.append(Passage(source, i, part[b * n_tokens:(b + 1) * n_tokens].clone()))
    return out
