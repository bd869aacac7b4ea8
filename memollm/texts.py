"""Offline text for measurements: one source for the benchmark and the quality evaluation.

CPython ships its English reference documentation (``pydoc_data.topics``, ~110K tokens), so
every machine has the same long real text without a download.
"""

from __future__ import annotations

from pathlib import Path

import torch


def default_text() -> str:
    """The English reference documentation shipped inside every CPython (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_text(path: str | Path | None = None) -> str:
    if path is None:
        return default_text()
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path}: the text file is empty")
    return text


def text_segments(tokenizer, text: str, n_tokens: int, segments: int = 1, split: str = "report") -> torch.Tensor:
    """``[segments, n_tokens]`` consecutive token ids from one split of ``text``.

    The token stream is cut in half: the first half is the ``report`` split (what results
    are quoted on), the second half the ``tune`` split (what settings are tuned on), so
    tuning never sees the reported tokens.
    """
    if split not in ("report", "tune"):
        raise ValueError(f"split must be 'report' or 'tune', got {split!r}")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    half = ids.shape[0] // 2
    part = ids[:half] if split == "report" else ids[half:]
    need = n_tokens * segments
    if part.shape[0] < need:
        raise ValueError(f"the {split} split has {part.shape[0]} tokens; {segments} x {n_tokens} requested")
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

